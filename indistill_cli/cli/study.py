"""`indistill study`: its options are `stages.commands.StudySettings`; the work is `stages.study_main`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import StudySettings


@command(app, StudySettings)
def study(s: StudySettings) -> Any:
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
    import shlex
    import sys
    from pathlib import Path

    from indistill_cli.stages.study_main import run_study
    from indistill_cli.stages.study_runs import execution

    spec = _spec(s)
    ex = execution(spec, s.jobs, s.threads, s.devices, s.executor, list(s.executor_param))
    mode = "protocol" if s.protocol_only else "report" if s.report else "run"
    return run_study(spec, Path(s.out), ex, mode, s.accept_gap, shlex.join(["indistill", *sys.argv[1:]]))


def _spec(s: StudySettings) -> Any:
    """The study asked for: a preset, the one recorded in the folder's protocol.json, or the command line's."""
    from pathlib import Path

    from indistill_cli.errors import BadInput
    from indistill_cli.stages.study_presets import command_spec, preset
    from indistill_cli.stages.study_protocol import recorded

    execution_opts = {k: getattr(s.opts, k) for k in s.changed(("device", "data_root", "cache"))}
    if s.preset is not None:
        clash = s.changed(s.design)
        if clash:
            raise BadInput(f"--preset {s.preset} fixes the study's design: --{clash[0].replace('_', '-')} cannot "
                           f"change it (a changed design is a new study: give its options without --preset)")
        return preset(s.preset, execution_opts)
    if s.teacher is None and s.student is None and Path(s.out, "protocol.json").exists():
        return recorded(Path(s.out), execution_opts)
    return command_spec(s.teacher, s.student, s.methods, s.seeds, s.budget, s.warmup, s.epochs, s.opts, s.optim,
                        s.teacher_optim, teacher_epochs=s.teacher_epochs, aux=s.aux, aux_epochs=s.aux_epochs,
                        cumulative=s.cumulative, ce_arm=s.ce_arm, params=tuple(s.param), ce=s.ce,
                        keep_flow=s.keep_flow, flow=s.flow, criterion=s.criterion, gap_check=s.gap_check,
                        pilot_seed=s.pilot_seed, primary_seeds=s.primary_seeds)
