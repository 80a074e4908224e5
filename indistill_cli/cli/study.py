"""`indistill study`: parse, then `stages.study_main`."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import SPLIT, command, optim_config, override, run_options

DESIGN = ("teacher", "student", "data", "methods", "seeds", "budget", "warmup", "epochs", "teacher_epochs", "aux",
          "aux_epochs", "cumulative", "ce_arm", "param", "ce", "keep_flow", "gap_check", "pilot_seed",
          "primary_seeds", "flow", "criterion", "optimizer", "lr", "weight_decay", "schedule", "milestones",
          "teacher_optimizer", "teacher_lr", "teacher_schedule", "batch_size", "val_fraction", "train_fraction",
          "image_size", "augment", "precision", "channels_last", "deterministic")


def _changed(names: tuple[str, ...], values: dict[str, Any]) -> list[str]:
    """The options among `names` whose values differ from their defaults (given on the command line)."""
    params = inspect.signature(study).parameters
    return [n for n in names if n in params and values.get(n) != params[n].default]


OWN = {  # the study's own options (the shared ones come from cli.options)
    "out": override(str, inspect.Parameter.empty, "--out", "-o", help="The study's folder: protocol, runs, report."),
    "teacher": override(Optional[str], None, "--teacher", "-t", help="Teacher checkpoint, or an architecture to train "
        "here first (--teacher-epochs, seed 0)."),
    "student": override(Optional[str], None, "--student", "-s", help="Student architecture (fresh weights per seed), "
        "e.g. cnn3-w0.5."),
    "methods": override(str, "kd", help="KD methods, comma separated (`indistill methods`): each is a row of arms."),
    "seeds": override(int, 5, help="Seeds 0..N-1: each seed's arms start from one initial student and see the same "
        "batches."),
    "budget": override(str, "both", help="equal: InD+M (W+E) vs M+W (E+W epochs); added: InD+M vs M (E), beside the "
        "control M+W - M; both: every arm and view."),
    "warmup": override(Optional[str], None, help="The warmup's epochs per tap, e.g. 3,4,5 (default: 2 + l for tap l)."),
    "epochs": override(int, 20, "--epochs", "-e", help="E: the KD method's epochs; the warmup's W come on top in InD+M "
        "and M+W."),
    "preset": override(Optional[str], None, help="A registered study (effect-fmnist, effect-paper, methods-mini, "
        "methods-fmnist, smoke, ...): its whole design; only how it runs may be given beside it."),
    "aux": override(Optional[str], None, help="Auxiliary teacher architecture for large gaps (e.g. cnn3): CE-trained, "
        "then PKT from the teacher; the student's teacher."),
    "aux_epochs": override(int, 20, help="Epochs of each auxiliary stage."),
    "cumulative": override(bool, False, help="Also the arms InDcum+M: the warmup with earlier taps kept in the loss "
        "(`warmup --cumulative`)."),
    "ce_arm": override(bool, False, help="Also a CE-alone student (E+W epochs), for context."),
    "param": override(Optional[list[str]], None, help="Method hyper-parameter, e.g. kd.temperature=2 (repeatable)."),
    "ce": override(Optional[float], None, help="CE weight of every method (default: each method's recipe)."),
    "keep_flow": override(Optional[str], None, help="Ours, not the paper's: also the arms InD+M+keep, the warmup's MSE "
        "kept in the KD loss, WEIGHT:DECAY; several (1:0.7,10:0.9) are chosen between on --pilot-seed."),
    "flow": override(bool, True, "--flow/--no-flow", help="Record the per-tap MSE to the pruned teacher through KD "
        "(flow.png)."),
    "criterion": override(str, "l1", help="Pruning criterion: l1, l2, bn-scale, activation."),
    "gap_check": override(float, 0.0, help="First check that the teacher (and auxiliary) beat a CE student by this "
        "many validation mAP points; 0: no check."),
    "accept_gap": override(bool, False, help="Run the arms even when the gap check fails."),
    "pilot_seed": override(int, 100, help="Seed of the gap check and the keep-flow pilot."),
    "primary_seeds": override(int, 0, help="The first K seeds are the primary analysis (0: all)."),
    "teacher_epochs": override(int, 30, help="Epochs when the teacher is trained here."),
    "jobs": override(Optional[int], None, "--jobs", "-j", help="Runs at a time (worker processes; the CPU threads are "
        "split between them). Default: the preset's, else 1."),
    "threads": override(Optional[int], None, help="Torch threads per run (default: the cores / --jobs). CPU numbers "
        "are bitwise repeatable for one thread count."),
    "devices": override(Optional[str], None, help="GPUs, e.g. 0,1: one run per GPU at a time."),
    "executor": override(str, "pool", help="pool: local processes; local or slurm: submitit (pip install "
        "'indistill[cluster]'), one job per run, this command staying as the driver that submits each run once its "
        "dependencies have finished (a rerun continues)."),
    "executor_param": override(Optional[list[str]], None, help="submitit parameter KEY=VALUE, e.g. "
        "slurm_partition=gpu, timeout_min=240."),
    "protocol_only": override(bool, False, help="Write protocol.md and protocol.json and stop (commit them before the "
        "first run)."),
    "report": override(bool, False, help="Only gather the finished runs and write the report."),
}


@command(app, ("teacher", "student", "data", "methods", "seeds", "budget", "warmup", "epochs", "out", "preset",
               "aux", "aux_epochs", "cumulative", "ce_arm", "param", "ce", "keep_flow", "flow", "criterion",
               "gap_check", "accept_gap", "pilot_seed", "primary_seeds", "teacher_epochs", "teacher_optimizer",
               "teacher_lr", "teacher_schedule", "optimizer", "lr", "weight_decay", "schedule", "milestones",
               "batch_size", "train_fraction", *SPLIT, "device", "precision", "channels_last", "augment",
               "deterministic", "jobs", "threads", "devices", "executor", "executor_param", "protocol_only",
               "report", "json_out", "quiet"),
         weight_decay=0.0,
         data=override(str, "fashion-mnist-mini", "--data", "-d", help="The dataset every run trains and is scored "
                       "on (names as in `indistill datasets`)."),
         device=override(str, "auto", help="auto, cpu, cuda or cuda:N for every run (--devices: one run per GPU)."),
         optimizer=override(str, "adam", help="The student's optimiser (every arm): sgd, adam, adamw."),
         lr=override(float, 1e-3, help="The student's learning rate (reference: Adam 1e-3)."),
         schedule=override(str, "multistep", help="The student's lr schedule: multistep (default: x0.1 for the last "
                           "seventh of each run's epochs, the reference), cosine or none."),
         milestones=override(str, "", help="multistep epochs of the student's plan (default: the last seventh)."),
         teacher_optimizer=override(str, "sgd", help="Optimiser when the teacher is trained here."),
         teacher_lr=override(float, 0.05, help="Teacher learning rate."),
         teacher_schedule=override(str, "cosine", help="Teacher lr schedule."), **OWN)
def study(**o: Any) -> None:
    """Does the InDistill warmup help your teacher/student pair? A pre-registered, paired, resumable comparison.

    Per method M and seed, from one initial student: M+W (M given the warmup's W epochs: E+W), InD+M (the warmup,
    then M for E epochs on one continued lr plan) and, with --budget added|both, M alone (E epochs). The protocol
    (protocol.md, protocol.json) is written before the first run; a folder never takes runs under another one.
    Every finished run is a JSON in DIR/runs/ (a rerun continues); the report (results.md, results.json,
    figure.png) gives each arm's mean and std, the paired differences with 95% t-intervals, Wilcoxon where n >= 6,
    Holm over the primary comparisons and one verdict per comparison.

    Examples:

        indistill study -t teacher.safetensors -s cnn3-w0.5 --data fashion-mnist --methods kd,pkt --seeds 5 --budget both -o studies/mine --protocol-only

        indistill study -t teacher.safetensors -s cnn3-w0.5 --data fashion-mnist --methods kd,pkt --seeds 5 --budget both -o studies/mine --jobs 2

        indistill study --preset effect-fmnist -o benchmarks/results/effect-fmnist --jobs 2

        indistill study --preset methods-mini -o runs/methods --executor slurm --executor-param slurm_partition=gpu --devices 0

        indistill study -o studies/mine --report
    """
    run(lambda: _run(o), o["json_out"], o["quiet"])


def _run(o: dict[str, Any]) -> Any:
    import shlex
    import sys
    from pathlib import Path

    from indistill_cli.stages.study_main import run_study
    from indistill_cli.stages.study_runs import execution

    spec = _spec(o)
    ex = execution(spec, o["jobs"], o["threads"], o["devices"], o["executor"], o["executor_param"] or [])
    mode = "protocol" if o["protocol_only"] else "report" if o["report"] else "run"
    return run_study(spec, Path(o["out"]), ex, mode, o["accept_gap"], shlex.join(["indistill", *sys.argv[1:]]))


def _spec(o: dict[str, Any]) -> Any:
    """The study asked for: a preset, the one recorded in the folder's protocol.json, or the command line's."""
    from pathlib import Path

    from indistill_cli.errors import BadInput
    from indistill_cli.stages.study_presets import command_spec, preset
    from indistill_cli.stages.study_protocol import recorded

    execution_opts = {k: o[k] for k in _changed(("device", "data_root", "cache"), o)}
    if o["preset"] is not None:
        clash = _changed(DESIGN, o)
        if clash:
            raise BadInput(f"--preset {o['preset']} fixes the study's design: --{clash[0].replace('_', '-')} cannot "
                           f"change it (a changed design is a new study: give its options without --preset)")
        return preset(o["preset"], execution_opts)
    if o["teacher"] is None and o["student"] is None and Path(o["out"], "protocol.json").exists():
        return recorded(Path(o["out"]), execution_opts)
    teacher_optim = optim_config({k: o[f"teacher_{k}"] for k in ("optimizer", "lr", "schedule")})
    return command_spec(o["teacher"], o["student"], o["methods"], o["seeds"], o["budget"], o["warmup"], o["epochs"],
                        run_options(o), optim_config(o), teacher_optim, teacher_epochs=o["teacher_epochs"],
                        aux=o["aux"], aux_epochs=o["aux_epochs"], cumulative=o["cumulative"], ce_arm=o["ce_arm"],
                        params=tuple(o["param"] or ()), ce=o["ce"], keep_flow=o["keep_flow"], flow=o["flow"],
                        criterion=o["criterion"], gap_check=o["gap_check"], pilot_seed=o["pilot_seed"],
                        primary_seeds=o["primary_seeds"])
