"""InDistill's effect, measured fairly: the pre-registered study (protocol.md beside its results).

    python benchmarks/effect.py --preset fmnist            # full Fashion-MNIST, hours on 2 CPU cores
    python benchmarks/effect.py --preset smoke             # seconds, synthetic data (the test suite runs it)
    python benchmarks/effect.py --preset fmnist --protocol # write protocol.md only (commit it before running)
    python benchmarks/effect.py --preset fmnist --report   # rebuild results.* from the finished runs

Stages, each resumable (a finished unit leaves a JSON in OUT/runs/ and is skipped on a rerun):
  1. reference models: CE teacher; auxiliary = the student's topology at 2x width, CE then PKT from the
     teacher (the reference recipe); the auxiliary pruned (L1, probe) to the student's widths; the gap
     check (validation mAP of teacher and auxiliary against a CE student on the pilot seed).
  2. pilot (validation split only, pilot seed): the keep-flow weight and decay.
  3. arms x seeds, each seed's arms from one initial student (weights are a function of the seed).
  4. report: results.md, results.json (every run), figure.png.
Runs go to `--jobs` worker processes of `--threads` torch threads each; the thread count is part of
the protocol (CPU results are bitwise repeatable for a given count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402
from study import Job, opts_for, scores, student_optim, t_interval, wilcoxon_p  # noqa: E402
from study import work_path as _w  # noqa: E402


@dataclass(frozen=True)
class Preset:
    data: str
    teacher: str
    teacher_epochs: int
    aux: str
    aux_epochs: int
    student: str
    kd_epochs: int  # E: the KD schedule every KD/PKT arm runs
    curriculum: str  # warmup epochs per tap; W = their sum
    seeds: tuple[int, ...]
    primary_seeds: int  # the first n seeds are the primary analysis
    pilot_seed: int
    keep_flow_grid: tuple[tuple[float, float], ...]  # (weight, per-epoch decay) candidates
    threads: int
    jobs: int
    val_fraction: float = 0.1
    batch_size: int = 128
    teacher_lr: float = 0.05
    gap_required: bool = True  # smoke data (random labels) has no gap to check
    device: str = "cpu"

    @property
    def warm_epochs(self) -> int:
        return sum(int(v) for v in self.curriculum.split(","))


PRESETS: dict[str, Preset] = {
    "fmnist": Preset(data="fashion-mnist", teacher="resnet20", teacher_epochs=15, aux="cnn3", aux_epochs=15,
                     student="cnn3-w0.5", kd_epochs=20, curriculum="3,4,5", seeds=tuple(range(8)), primary_seeds=5,
                     pilot_seed=100, keep_flow_grid=((0.1, 0.7), (1.0, 0.7), (1.0, 0.9), (10.0, 0.9)),
                     threads=1, jobs=2),
    # the reference's CIFAR-10 scale (a GPU): 70 student epochs of which 12 warmup, teacher PreAct ResNet-18
    "paper": Preset(data="cifar10", teacher="preact_resnet18", teacher_epochs=100, aux="cnn3", aux_epochs=80,
                    student="cnn3-w0.5", kd_epochs=58, curriculum="3,4,5", seeds=tuple(range(5)), primary_seeds=5,
                    pilot_seed=100, keep_flow_grid=((0.1, 0.7), (1.0, 0.7), (1.0, 0.9), (10.0, 0.9)), threads=8,
                    jobs=1, teacher_lr=0.1, device="auto"),
    "smoke": Preset(data="synthetic:1x28x28:10:400", teacher="cnn3", teacher_epochs=1, aux="cnn3", aux_epochs=1,
                    student="cnn3-w0.5", kd_epochs=2, curriculum="1,1,1", seeds=(0, 1), primary_seeds=2,
                    pilot_seed=100, keep_flow_grid=((1.0, 0.5), (10.0, 0.5)), threads=1, jobs=1, gap_required=False),
}

# arm -> (method or None for CE, warmup?, keep-flow?, epochs as a function of (E, W))
ARMS: dict[str, dict[str, Any]] = {
    "CE": {"method": None, "warm": False, "keep": False, "label": "CE alone (E+W)"},
    "PKT": {"method": "pkt", "warm": False, "keep": False, "label": "PKT (E)"},
    "PKT+W": {"method": "pkt", "warm": False, "keep": False, "label": "PKT given the warmup's epochs (E+W)"},
    "InD+PKT": {"method": "pkt", "warm": True, "keep": False, "label": "InDistill warmup + PKT (W+E)"},
    "InD+PKT+keep": {"method": "pkt", "warm": True, "keep": True, "label": "InDistill + PKT, flow kept (W+E; ours)"},
    "KD": {"method": "kd", "warm": False, "keep": False, "label": "KD (E)"},
    "KD+W": {"method": "kd", "warm": False, "keep": False, "label": "KD given the warmup's epochs (E+W)"},
    "InD+KD": {"method": "kd", "warm": True, "keep": False, "label": "InDistill warmup + KD (W+E)"},
}
# (a, b, view): a - b, paired by seed
COMPARISONS: list[tuple[str, str, str]] = [
    ("InD+PKT", "PKT+W", "equal total epochs"),
    ("InD+KD", "KD+W", "equal total epochs"),
    ("InD+PKT+keep", "PKT+W", "equal total epochs"),
    ("InD+PKT", "PKT", "warmup added"),
    ("PKT+W", "PKT", "control: the warmup's epochs given to PKT"),
    ("InD+KD", "KD", "warmup added"),
    ("KD+W", "KD", "control: the warmup's epochs given to KD"),
    ("InD+PKT+keep", "InD+PKT", "keep-flow (ours) vs plain InDistill"),
    ("PKT+W", "CE", "context: PKT vs CE, equal epochs"),
    ("KD+W", "CE", "context: KD vs CE, equal epochs"),
]
PRIMARY = [("InD+PKT", "PKT+W"), ("InD+KD", "KD+W")]
ENDPOINTS = [("map_cosine", "mAP cos"), ("map_euclidean", "mAP euc"), ("p100_cosine", "P@100 cos"), ("top1", "top-1")]


def arm_epochs(p: Preset, arm: str) -> int:
    """Epochs of the arm's own training run (the KD part for InDistill arms)."""
    return p.kd_epochs + p.warm_epochs if arm in ("CE", "PKT+W", "KD+W") else p.kd_epochs


# ------------------------------------------------------------------------------------------ runs


def val_map(p: Preset, ckpt: str) -> float:
    """Validation retrieval mAP (cosine, the validation split searched in itself, leave-one-out): what the
    gap check and the pilot use, so no decision looks at the test split."""
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.metrics import classify
    from indistill_cli.pruning.rebuild import model_from_checkpoint
    from indistill_cli.stages.session import open_session

    s = open_session(opts_for(p, 0, augment=False))
    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck)
    r = classify(model, s.eval_loader("val", ck.spec), s.rt, s.ds.info.num_classes, ck.spec["embedding"]["name"])
    return 100 * r["map"]


def run_job(preset: str, out_s: str, job: Job, threads: int) -> dict[str, Any]:
    """One unit of the study in a worker process; writes and returns its result."""
    return study.run_one(_dispatch, PRESETS[preset], out_s, job, threads, revision)


def _dispatch(p: Preset, out: Path, job: Job) -> dict[str, Any]:
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.stages.commands import DistillSettings, PruneSettings, TrainSettings, WarmupSettings
    from indistill_cli.stages.distill import run_distill
    from indistill_cli.stages.prune import run_prune
    from indistill_cli.stages.train import run_train
    from indistill_cli.stages.warmup import run_warmup

    w = lambda name: _w(out, name)  # noqa: E731
    o = opts_for(p, job.seed)
    total = p.kd_epochs + p.warm_epochs
    if job.kind == "teacher":
        r = run_train(TrainSettings(model=p.teacher, output=w("teacher.safetensors"), epochs=p.teacher_epochs,
                                    optim=OptimConfig("sgd", p.teacher_lr, schedule="cosine"), opts=o, force=True,
                                    last=False))
        return {"val_top1": r["val_top1"], "scores": scores(p, w("teacher.safetensors"))}
    if job.kind == "aux-ce":
        r = run_train(TrainSettings(model=p.aux, output=w("aux_ce.safetensors"), epochs=p.aux_epochs,
                                    optim=student_optim(p.aux_epochs), opts=o, force=True, last=False, select="last"))
        return {"val_top1": r["val_top1"]}
    if job.kind == "aux-pkt":
        run_distill(DistillSettings(teacher=w("teacher.safetensors"), student=w("aux_ce.safetensors"),
                                    output=w("aux.safetensors"), method=["pkt"], ce=0.0, epochs=p.aux_epochs,
                                    optim=student_optim(p.aux_epochs), opts=o, force=True, select="last"))
        return {"scores": scores(p, w("aux.safetensors"))}
    if job.kind == "prune":
        r = run_prune(PruneSettings(teacher=w("aux.safetensors"), like=p.student, output=w("aux_pruned.safetensors"),
                                    data=o.data, opts=o, force=True))
        return {"pairs": r["pairs"]}
    if job.kind == "gap":
        ce = w(f"pilot_ce_s{job.seed}.safetensors")
        run_train(TrainSettings(model=p.student, output=ce, epochs=total, optim=student_optim(total), opts=o,
                                force=True, last=False, select="last"))
        return {"val_map": {"teacher": val_map(p, w("teacher.safetensors")), "auxiliary": val_map(p, w("aux.safetensors")),
                            "student_ce": val_map(p, ce)}}
    if job.kind == "warmup":
        r = run_warmup(WarmupSettings(teacher=w("aux_pruned.safetensors"), student=p.student,
                                      output=w(f"warm_s{job.seed}.safetensors"),
                                      optim=OptimConfig(**{**student_optim(total).as_dict(), "plan_epochs": total}),
                                      opts=o, epochs_per_tap=p.curriculum, force=True))
        return {"curves": r["curves"], "final_mse": r["final_mse"]}
    return _arm(p, out, job)


def _arm(p: Preset, out: Path, job: Job) -> dict[str, Any]:
    """An arm of the study (or a pilot run): CE alone, or a KD method from a fresh or a warmed student."""
    from indistill_cli.stages.commands import DistillSettings, TrainSettings
    from indistill_cli.stages.distill import run_distill
    from indistill_cli.stages.train import run_train

    w = lambda name: _w(out, name)  # noqa: E731
    o = opts_for(p, job.seed)
    spec = ARMS[job.arm]
    dest = w(f"{job.name}.safetensors")
    if spec["method"] is None:
        run_train(TrainSettings(model=p.student, output=dest, epochs=arm_epochs(p, job.arm),
                                optim=student_optim(arm_epochs(p, job.arm)), opts=o, force=True, last=False,
                                select="last"))
        curves: dict[str, list[float]] = {}
    else:
        ce = 0.0 if spec["method"] == "pkt" else None  # the reference trains PKT without CE; KD: Hinton's 0.1
        student = w(f"warm_s{job.seed}.safetensors") if spec["warm"] else p.student
        n = arm_epochs(p, job.arm)
        r = run_distill(DistillSettings(
            teacher=w("aux.safetensors"), student=student, output=dest, method=[spec["method"]], ce=ce,
            epochs=None if spec["warm"] else n, optim=student_optim(n), opts=o, force=True,
            flow_teacher=w("aux_pruned.safetensors"), select="last", continue_plan=spec["warm"],
            keep_flow=job.keep[0] if spec["keep"] else 0.0, keep_flow_decay=job.keep[1]))
        curves = r.get("curves", {})
    if job.kind == "pilot":
        return {"keep_flow": list(job.keep), "val_map": val_map(p, dest)}
    return {"scores": scores(p, dest), "curves": curves}


# ------------------------------------------------------------------------------------------ plan


def reference_jobs(p: Preset) -> list[Job]:
    return [Job("teacher", "teacher"), Job("aux-ce", "aux-ce"), Job("aux-pkt", "aux-pkt", deps=["teacher", "aux-ce"]),
            Job("prune", "prune", deps=["aux-pkt"]),
            Job("gap", "gap", seed=p.pilot_seed, deps=["teacher", "aux-pkt"])]


def pilot_jobs(p: Preset) -> list[Job]:
    jobs = [Job(f"warmup-s{p.pilot_seed}", "warmup", seed=p.pilot_seed, deps=["prune"])]
    for wgt, dec in p.keep_flow_grid:
        jobs.append(Job(f"pilot-keep{wgt:g}-d{dec:g}", "pilot", seed=p.pilot_seed, arm="InD+PKT+keep", keep=(wgt, dec),
                        deps=[f"warmup-s{p.pilot_seed}"]))
    jobs.append(Job("pilot-keep0", "pilot", seed=p.pilot_seed, arm="InD+PKT", deps=[f"warmup-s{p.pilot_seed}"]))
    return jobs


def arm_jobs(p: Preset, keep: tuple[float, float]) -> list[Job]:
    jobs = []
    for seed in p.seeds:
        jobs.append(Job(f"warmup-s{seed}", "warmup", seed=seed, deps=["prune"]))
        for arm, spec in ARMS.items():
            deps = ["prune", "aux-pkt"] + ([f"warmup-s{seed}"] if spec["warm"] else [])
            jobs.append(Job(f"{arm}-s{seed}", "arm", seed=seed, arm=arm, keep=keep, deps=deps))
    return jobs


GAP_POINTS = 3.0


def gap_ok(done: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """The precondition: teacher and auxiliary beat the CE student by >= 3 validation mAP points."""
    g = done["gap"]["val_map"]
    text = (f"validation mAP: teacher {g['teacher']:.2f}, auxiliary {g['auxiliary']:.2f}, CE student "
            f"{g['student_ce']:.2f} (gaps {g['teacher'] - g['student_ce']:+.2f} / {g['auxiliary'] - g['student_ce']:+.2f})")
    return min(g["teacher"], g["auxiliary"]) - g["student_ce"] >= GAP_POINTS, text


# ------------------------------------------------------------------------------------------ statistics


def summarise(p: Preset, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per_arm: dict[str, dict[int, dict[str, float]]] = {a: {} for a in ARMS}
    for r in done.values():
        if r.get("kind") == "arm":
            per_arm[r["arm"]][r["seed"]] = r["scores"]
    complete = [s for s in p.seeds if all(s in per_arm[a] for a in ARMS)]
    primary = [s for s in p.seeds[: p.primary_seeds] if s in complete]
    out: dict[str, Any] = {"complete_seeds": complete, "primary_seeds": primary, "arms": {}, "comparisons": {}}
    for arm in ARMS:
        vals = {k: [per_arm[arm][s][k] for s in complete] for k, _ in ENDPOINTS}
        out["arms"][arm] = {k: {"mean": statistics.fmean(v) if v else float("nan"),
                                "std": statistics.stdev(v) if len(v) > 1 else float("nan")} for k, v in vals.items()}
    for set_name, seeds in (("primary", primary), ("all", complete)):
        rows = []
        for a, b, view in COMPARISONS:
            row: dict[str, Any] = {"a": a, "b": b, "view": view, "n": len(seeds)}
            for k, _ in ENDPOINTS:
                d = [per_arm[a][s][k] - per_arm[b][s][k] for s in seeds]
                if not d:
                    continue
                m, lo, hi = t_interval(d)
                row[k] = {"mean": m, "ci95": [lo, hi], "wilcoxon_p": wilcoxon_p(d), "per_seed": d}
            rows.append(row)
        out["comparisons"][set_name] = rows
    out["per_seed"] = {arm: {str(s): v for s, v in sorted(per_arm[arm].items())} for arm in ARMS}
    return out


# ------------------------------------------------------------------------------------------ report


def _fmt_ci(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    p = c["wilcoxon_p"]
    return f"{c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] p={p:.3f}" if not math.isnan(lo) else f"{c['mean']:+.2f}"


def markdown(p: Preset, result: dict[str, Any]) -> str:
    s, ref = result["summary"], result["reference"]
    E, W = p.kd_epochs, p.warm_epochs
    lines = [f"# InDistill's effect on `{p.data}`: results\n",
             f"Protocol: [protocol.md](protocol.md). Code revision: `{result['revision']}`. "
             f"Seeds complete: {s['complete_seeds']} (primary: {s['primary_seeds']}). "
             f"{p.threads} torch thread(s) per run, {p.jobs} runs at a time. Wall: {result['wall_h']:.1f} h of runs.\n",
             f"Budgets: E = {E} KD epochs, W = {W} warmup epochs (curriculum {p.curriculum}). "
             "**Equal total epochs** compares InDistill (W+E) with the baseline given E+W epochs; "
             "**warmup added** compares InDistill (W+E) with the baseline's E, next to the control "
             "(the baseline given the W extra epochs).\n",
             "\n## Reference models (test split; validation mAP for the gap check)\n",
             "| model | test mAP cos | test mAP euc | test P@100 | test top-1 | val mAP (gap check) |\n|---|---|---|---|---|---|\n"]
    gap = ref.get("gap", {})
    for name, key in (("teacher", "teacher"), ("auxiliary", "auxiliary")):
        sc = ref.get(name, {})
        lines.append(f"| {name} ({getattr(p, 'teacher' if name == 'teacher' else 'aux')}) | "
                     + " | ".join(f"{sc.get(k, float('nan')):.2f}" for k in ("map_cosine", "map_euclidean",
                                                                            "p100_cosine", "top1"))
                     + f" | {gap.get(key, float('nan')):.2f} |\n")
    lines.append(f"| CE student (pilot seed {p.pilot_seed}) | | | | | {gap.get('student_ce', float('nan')):.2f} |\n")
    if result.get("pilot"):
        pl = result["pilot"]
        lines.append("\n## Pilot (validation split, seed %d): keep-flow weight and decay\n\n| weight | decay | val mAP |\n"
                     "|---|---|---|\n" % p.pilot_seed)
        for r in pl["runs"]:
            lines.append(f"| {r['keep_flow'][0]:g} | {r['keep_flow'][1]:g} | {r['val_map']:.2f} |\n")
        lines.append(f"\nChosen (highest validation mAP): weight {pl['chosen'][0]:g}, decay {pl['chosen'][1]:g}.\n")
    lines.append(f"\n## Arms (test split, mean +- std over {len(s['complete_seeds'])} seeds)\n\n| arm | epochs | "
                 + " | ".join(lbl for _, lbl in ENDPOINTS) + " |\n|---|---|" + "---|" * len(ENDPOINTS) + "\n")
    for arm, spec in ARMS.items():
        ep = f"{W}+{E}" if spec["warm"] else str(arm_epochs(p, arm))
        cells = []
        for k, _ in ENDPOINTS:
            v = s["arms"][arm][k]
            cells.append("n/a (no head trained)" if k == "top1" and spec["method"] == "pkt"
                         else f"{v['mean']:.2f} +- {v['std']:.2f}")
        lines.append(f"| {spec['label']} | {ep} | " + " | ".join(cells) + " |\n")
    for set_name in ("primary", "all"):
        rows = s["comparisons"][set_name]
        if not rows or (set_name == "all" and s["complete_seeds"] == s["primary_seeds"]):
            continue
        n = rows[0]["n"]
        lines.append(f"\n## Paired differences, {set_name} seeds (n = {n}): mean [95% t-interval] Wilcoxon p "
                     f"(two-sided)\n\n| a - b | view | " + " | ".join(lbl for _, lbl in ENDPOINTS) + " |\n|---|---|"
                     + "---|" * len(ENDPOINTS) + "\n")
        for r in rows:
            cells = ["n/a" if k == "top1" and "PKT" in r["a"] + r["b"] or k not in r else _fmt_ci(r[k])
                     for k, _ in ENDPOINTS]
            lines.append(f"| {r['a']} - {r['b']} | {r['view']} | " + " | ".join(cells) + " |\n")
    if len(s["primary_seeds"]) < 6:
        k = len(s["primary_seeds"])
        lines.append(f"\nWith {k} seeds the two-sided Wilcoxon test cannot give p < {2 / 2 ** k:.4g} (all {k} "
                     "differences of one sign); the t-interval is the primary test.\n")
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "".join(lines)


def figure(p: Preset, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, curves = result["summary"], result["mean_curves"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), dpi=110)
    ax = axes[0]
    arms = list(ARMS)
    for i, arm in enumerate(arms):
        vals = [v["map_cosine"] for v in s["per_seed"][arm].values()]
        ax.scatter([i] * len(vals), vals, s=14, alpha=0.7)
        if vals:
            ax.hlines(statistics.fmean(vals), i - 0.3, i + 0.3, color="k")
    ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
    ax.set_ylabel("test mAP cosine (%)")
    ax.set_title("per-seed test mAP (bar: mean)")
    W = p.warm_epochs
    for ax, group in zip(axes[1:], (("PKT+W", "InD+PKT", "InD+PKT+keep"), ("KD+W", "InD+KD"))):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        styles = ["--", "-", ":"]
        for arm, ls in zip(group, styles):
            for i, (tap, c) in enumerate(curves.get(arm, {}).items()):
                x = list(range(len(c))) if ARMS[arm]["warm"] else list(range(len(c)))
                ax.plot(x, c, color=colors[i], ls=ls, label=f"{tap} {arm}")
        ax.axvspan(0, W, color="0.9", zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel(f"student epoch (shaded: the InDistill arms' {W} warmup epochs)")
        ax.set_ylabel("val MSE to the pruned auxiliary's tap")
        ax.set_title(f"information flow, mean over seeds: {group[0].split('+')[0]}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def mean_curves(p: Preset, done: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per arm, per tap: the validation MSE curve to the pruned auxiliary, averaged over seeds; InDistill arms
    start with their warmup's curve (one x axis of student epochs)."""
    out: dict[str, dict[str, list[float]]] = {}
    for arm, spec in ARMS.items():
        runs = []
        for r in done.values():
            if r.get("kind") != "arm" or r["arm"] != arm or not r.get("curves"):
                continue
            c = r["curves"]
            if spec["warm"]:
                warm = done.get(f"warmup-s{r['seed']}", {}).get("curves", {})
                c = {k: warm.get(k, [])[:] + v[1:] for k, v in c.items()}
            runs.append(c)
        if runs:
            out[arm] = {k: [statistics.fmean(vals) for vals in zip(*[r[k] for r in runs])] for k in runs[0]}
    return out


def revision() -> str:
    return study.revision(("indistill_cli", "benchmarks/effect.py", "benchmarks/study.py"))


def execute(preset: str, out: Path, jobs: list[Job], n_workers: int, threads: int) -> dict[str, dict[str, Any]]:
    return study.execute(run_job, (preset,), out, jobs, n_workers, threads, "effect")


def report(preset: str, out: Path, done: dict[str, dict[str, Any]], wall_h: float) -> dict[str, Any]:
    p = PRESETS[preset]
    pilot_runs = [r for r in done.values() if r.get("kind") == "pilot"]
    chosen = choose_keep(p, done)
    result = {"preset": preset, "config": p.__dict__, "revision": revision(), "wall_h": wall_h,
              "command": " ".join(["python", "benchmarks/effect.py", *sys.argv[1:]]),
              "reference": {"teacher": done.get("teacher", {}).get("scores", {}),
                            "auxiliary": done.get("aux-pkt", {}).get("scores", {}),
                            "gap": done.get("gap", {}).get("val_map", {})},
              "pilot": {"runs": sorted(pilot_runs, key=lambda r: r["job"]), "chosen": list(chosen)} if pilot_runs else None,
              "summary": summarise(p, done), "mean_curves": mean_curves(p, done),
              "runs": {k: {kk: vv for kk, vv in v.items()} for k, v in sorted(done.items())}}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "results.md").write_text(markdown(p, result))
    figure(p, result, out / "figure.png")
    return result


def choose_keep(p: Preset, done: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """The pre-registered rule: the keep-flow (weight, decay) with the highest pilot validation mAP."""
    cands = [r for r in done.values() if r.get("kind") == "pilot" and r["arm"] == "InD+PKT+keep"]
    if not cands:
        return p.keep_flow_grid[0]
    best = max(cands, key=lambda r: (r["val_map"], -r["keep_flow"][0]))
    return best["keep_flow"][0], best["keep_flow"][1]


def write_protocol(preset: str, out: Path) -> None:
    from effect_protocol import protocol  # the prose, rendered from the preset

    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.md").write_text(protocol(preset, PRESETS[preset], ARMS, COMPARISONS, PRIMARY, ENDPOINTS,
                                              arm_epochs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="fmnist")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/effect-PRESET")
    ap.add_argument("--protocol", action="store_true", help="write protocol.md and stop")
    ap.add_argument("--report", action="store_true", help="only rebuild results.* from the finished runs")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the preset's)")
    ap.add_argument("--stage", choices=["reference", "pilot", "arms", "all"], default="all")
    ap.add_argument("--accept-gap", action="store_true", help="go on when the gap check fails (the report says so)")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    out = a.out or HERE / "results" / ("effect-fmnist" if a.preset == "fmnist" else f"effect-{a.preset}")
    sys.path.insert(0, str(HERE))
    write_protocol(a.preset, out)
    if a.protocol:
        return
    t0 = time.perf_counter()
    jobs_n = a.jobs or p.jobs
    done: dict[str, dict[str, Any]] = {}
    if not a.report:
        done = execute(a.preset, out, reference_jobs(p), jobs_n, p.threads)
        ok, text = gap_ok(done)
        print(f"gap check: {text}: {'passed' if ok else 'FAILED'}", file=sys.stderr)
        if not ok and p.gap_required and not a.accept_gap:
            sys.exit(f"the gap check failed ({text}); protocol.md says what to do next (then --accept-gap)")
        if a.stage in ("pilot", "arms", "all"):
            done = execute(a.preset, out, pilot_jobs(p), jobs_n, p.threads)
        if a.stage in ("arms", "all"):
            done.update(execute(a.preset, out, arm_jobs(p, choose_keep(p, done)), jobs_n, p.threads))
    runs = out / "runs"
    done = {f.stem: json.loads(f.read_text()) for f in sorted(runs.glob("*.json"))}
    wall_h = sum(r.get("wall_s", 0) for r in done.values()) / 3600
    res = report(a.preset, out, done, wall_h)
    print(markdown(p, res))
    _ = t0


if __name__ == "__main__":
    main()
