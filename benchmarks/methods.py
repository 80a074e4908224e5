"""InDistill in front of every KD method: the pre-registered methods study (protocol.md beside its results).

    python benchmarks/methods.py --preset mini             # the embedded 10k-image set, ~3 h on 2 loaded cores
    python benchmarks/methods.py --preset fmnist           # full Fashion-MNIST, a reduced set of methods
    python benchmarks/methods.py --preset smoke            # seconds, synthetic data (the test suite runs it)
    python benchmarks/methods.py --preset mini --protocol  # write protocol.md only (commit it before running)
    python benchmarks/methods.py --preset mini --report    # rebuild results.* from the finished runs

For every method M (each row of `indistill methods`, plus `ctkd` = kd with the learnable temperature) and
seed s, every arm starting from the seed's one initial student:
  M      distill with M for E epochs;
  M+W    distill with M for E + W epochs (the warmup's epochs given to M: the equal-total control);
  InD+M  the seed's InDistill warmup (W epochs, the first part of one lr plan over W + E), then distill with
         M for E epochs continuing that plan and optimiser (`warmup --plan-epochs`, `distill --continue-plan`).
The warmup of a seed is shared by every method. Views: equal total epochs (InD+M - M+W) and warmup added
(InD+M - M, next to the control M+W - M). Runs are resumable (one JSON per finished run in OUT/runs/).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402 - sets HF_HUB_OFFLINE too
from study import Job, opts_for, scores, student_optim, t_interval  # noqa: E402
from study import work_path as _w  # noqa: E402


@dataclass(frozen=True)
class Preset:
    data: str
    student: str
    teacher: str  # trained with CE here; the KD teacher of every arm, pruned as the warmup's target
    teacher_epochs: int
    kd_epochs: int  # E
    curriculum: str  # warmup epochs per tap; W = their sum
    seeds: tuple[int, ...]
    methods: tuple[str, ...]  # rows; () = every registered method plus ctkd
    threads: int
    jobs: int
    val_fraction: float = 0.1
    batch_size: int = 128
    teacher_lr: float = 0.05
    device: str = "cpu"
    out: str = "methods"

    @property
    def warm_epochs(self) -> int:
        return sum(int(v) for v in self.curriculum.split(","))

    def rows(self) -> list[str]:
        from indistill_cli import losses

        return list(self.methods) or sorted([*losses.names(), "ctkd"])


PRESETS: dict[str, Preset] = {
    "mini": Preset(data="fashion-mnist-mini", teacher="cnn3", teacher_epochs=15, student="cnn3-w0.5", kd_epochs=10,
                   curriculum="1,2,3", seeds=(0, 1, 2), methods=(), threads=1, jobs=2),
    "fmnist": Preset(data="fashion-mnist", teacher="cnn3", teacher_epochs=15, student="cnn3-w0.5", kd_epochs=6,
                     curriculum="1,2,3", seeds=(0, 1, 2), methods=("kd", "dist", "ofd", "ft"), threads=1, jobs=2,
                     out="methods/fmnist"),
    "smoke": Preset(data="synthetic:1x28x28:10:400", teacher="cnn3", teacher_epochs=1, student="cnn3-w0.5",
                    kd_epochs=2, curriculum="1,1,1", seeds=(0, 1), methods=("kd", "ft"), threads=1, jobs=1,
                    out="methods-smoke"),
}
ARMS = {"M": "M alone, E epochs", "M+W": "M given the warmup's epochs too, E + W", "InD+M": "InDistill warmup (W) + M (E)"}
COMPARISONS = [("InD+M", "M+W", "equal total epochs"), ("InD+M", "M", "warmup added"),
               ("M+W", "M", "control: W more epochs of M")]
ENDPOINTS = [("top1", "top-1"), ("map_cosine", "mAP cos")]
EXTRA_ENDPOINTS = [("map_euclidean", "mAP euc"), ("p100_cosine", "P@100 cos")]
SLUG = {"M": "alone", "M+W": "longer", "InD+M": "ind"}


def scaled(epochs: float, e: int) -> int:
    """A length the paper gives for its 240-epoch CIFAR schedule, as the same share of E (at least 1)."""
    return max(1, round(epochs * e / 240))


def method_args(row: str, e: int) -> tuple[str, list[str]]:
    """(method, --param values) of a row: the registered defaults, with the recipes' ramps and initialisation
    phases scaled from 240 epochs to E (DKD's and ReviewKD's 20-epoch ramps, CTKD's 10-epoch curriculum,
    RepDistiller's 30 initialisation epochs for FT, AB and FSP), and CRD's negatives capped at 1024 (its
    16384, a third of CIFAR, would be the whole training set here and cost 2-3 minutes an epoch)."""
    if row == "ctkd":
        return "kd", ["kd.learnable_temperature=1", f"kd.grl_epochs={scaled(10, e)}"]
    params = {"crd": ["crd.nce_k=1024"], "dkd": [f"dkd.warmup={scaled(20, e)}"],
              "dkd-ls": [f"dkd-ls.warmup={scaled(20, e)}"], "reviewkd": [f"reviewkd.warmup={scaled(20, e)}"],
              "ft": [f"ft.init_epochs={scaled(30, e)}"], "ab": [f"ab.init_epochs={scaled(30, e)}"],
              "fsp": [f"fsp.init_epochs={scaled(30, e)}"]}
    return row, params.get(row, [])


# ------------------------------------------------------------------------------------------ runs


def run_job(preset: str, out_s: str, job: Job, threads: int) -> dict[str, Any]:
    """One run of the study in a worker process; writes and returns its result."""
    return study.run_one(_dispatch, PRESETS[preset], out_s, job, threads, revision)


def _dispatch(p: Preset, out: Path, job: Job) -> dict[str, Any]:
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.stages.commands import DistillSettings, PruneSettings, TrainSettings, WarmupSettings
    from indistill_cli.stages.distill import run_distill
    from indistill_cli.stages.prune import run_prune
    from indistill_cli.stages.train import run_train
    from indistill_cli.stages.warmup import run_warmup

    o, e, total = opts_for(p, job.seed), p.kd_epochs, p.kd_epochs + p.warm_epochs
    if job.kind == "teacher":
        r = run_train(TrainSettings(model=p.teacher, output=_w(out, "teacher.safetensors"), epochs=p.teacher_epochs,
                                    optim=OptimConfig("sgd", p.teacher_lr, schedule="cosine"), opts=o, force=True,
                                    last=False))
        return {"val_top1": r["val_top1"], "scores": scores(p, _w(out, "teacher.safetensors"))}
    if job.kind == "prune":
        r = run_prune(PruneSettings(teacher=_w(out, "teacher.safetensors"), like=p.student,
                                    output=_w(out, "pruned.safetensors"), data=o.data, opts=o, force=True))
        return {"pairs": r["pairs"]}
    if job.kind == "warmup":
        r = run_warmup(WarmupSettings(teacher=_w(out, "pruned.safetensors"), student=p.student,
                                      output=_w(out, f"warm_s{job.seed}.safetensors"),
                                      optim=OptimConfig(**{**student_optim(total).as_dict(), "plan_epochs": total}),
                                      opts=o, epochs_per_tap=p.curriculum, force=True))
        return {"final_mse": r["final_mse"], "initial_mse": r["initial_mse"]}
    method, params = method_args(job.method, e)
    warm = job.arm == "InD+M"
    n = total if job.arm == "M+W" else e
    dest = _w(out, f"{job.name}.safetensors")
    student = _w(out, f"warm_s{job.seed}.safetensors") if warm else p.student
    r = run_distill(DistillSettings(teacher=_w(out, "teacher.safetensors"), student=student, output=dest,
                                    method=[method], param=params, epochs=None if warm else n, optim=student_optim(n),
                                    opts=o, force=True, select="last", continue_plan=warm))
    return {"scores": scores(p, dest), "params": params, "ce": r["ce"], "epochs": r["epochs"],
            "phases": r.get("phases", []), "train_wall_s": r["wall_s"]}


def jobs_for(p: Preset) -> list[Job]:
    jobs = [Job("teacher", "teacher"), Job("prune", "prune", deps=["teacher"])]
    jobs += [Job(f"warmup-s{s}", "warmup", seed=s, deps=["prune"]) for s in p.seeds]
    for s in p.seeds:  # seed-major: a finished seed is a complete set of paired differences
        for row in p.rows():
            for arm in ARMS:
                deps = ["teacher"] + ([f"warmup-s{s}"] if arm == "InD+M" else [])
                jobs.append(Job(f"{row}.{SLUG[arm]}.s{s}", "arm", seed=s, arm=arm, method=row, deps=deps))
    return jobs


def revision() -> str:
    return study.revision(("indistill_cli", "benchmarks/methods.py", "benchmarks/study.py"))


# ------------------------------------------------------------------------------------------ statistics


def verdict(ci: tuple[float, float]) -> str:
    """The pre-registered reading of one paired difference: its 95% t-interval above 0, below 0, or across."""
    lo, hi = ci
    if math.isnan(lo):
        return "n/a"
    return "helped" if lo > 0 else "hurt" if hi < 0 else "inconclusive"


def summarise(p: Preset, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, dict[int, dict[str, float]]]] = {r: {a: {} for a in ARMS} for r in p.rows()}
    for r in done.values():
        if r.get("kind") == "arm" and r["method"] in per:
            per[r["method"]][r["arm"]][r["seed"]] = r["scores"]
    out: dict[str, Any] = {"rows": {}, "counts": {}}
    for row, arms in per.items():
        seeds = [s for s in p.seeds if all(s in arms[a] for a in ARMS)]
        rec: dict[str, Any] = {"seeds": seeds, "arms": {}, "comparisons": []}
        for a in ARMS:
            rec["arms"][a] = {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else math.nan}
                              for k, _ in ENDPOINTS + EXTRA_ENDPOINTS
                              if (v := [arms[a][s][k] for s in seeds])}
        for a, b, view in COMPARISONS:
            c: dict[str, Any] = {"a": a, "b": b, "view": view}
            for k, _ in ENDPOINTS + EXTRA_ENDPOINTS:
                d = [arms[a][s][k] - arms[b][s][k] for s in seeds]
                if d:
                    m, lo, hi = t_interval(d)
                    c[k] = {"mean": m, "ci95": [lo, hi], "per_seed": d, "verdict": verdict((lo, hi))}
            rec["comparisons"].append(c)
        out["rows"][row] = rec
    out["per_seed"] = {row: {a: {str(s): v for s, v in sorted(arms[a].items())} for a in ARMS}
                       for row, arms in per.items()}
    for _, _, view in COMPARISONS:
        for k, _ in ENDPOINTS:
            cs = [c[k] for rec in out["rows"].values() for c in rec["comparisons"] if c["view"] == view and k in c]
            out["counts"][f"{view}|{k}"] = {v: sum(c["verdict"] == v for c in cs)
                                           for v in ("helped", "hurt", "inconclusive")} | {
                "positive_mean": sum(c["mean"] > 0 for c in cs), "methods": len(cs)}
    return out


# ------------------------------------------------------------------------------------------ report


def _cell(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    if math.isnan(lo):
        return f"{c['mean']:+.2f}"
    mark = {"helped": " **+**", "hurt": " **-**"}.get(c["verdict"], "")
    return f"{c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def closing_note(s: dict[str, Any]) -> str:
    """Where the warmup helped and where it did not, by the pre-registered reading, per view and endpoint."""
    lines = ["\n## Closing note\n\n"]
    for _, _, view in COMPARISONS[:2]:
        for k, label in ENDPOINTS:
            n = s["counts"][f"{view}|{k}"]
            by = {v: [row for row, rec in s["rows"].items() for c in rec["comparisons"]
                      if c["view"] == view and k in c and c[k]["verdict"] == v] for v in ("helped", "hurt")}
            lines.append(f"- **{view}, {label}:** helped {n['helped']}, hurt {n['hurt']}, inconclusive "
                         f"{n['inconclusive']} of {n['methods']} methods; positive mean difference in "
                         f"{n['positive_mean']}. Helped: {', '.join(by['helped']) or 'none'}. "
                         f"Hurt: {', '.join(by['hurt']) or 'none'}.\n")
    return "".join(lines)


def markdown(p: Preset, result: dict[str, Any]) -> str:
    s, e, w = result["summary"], p.kd_epochs, p.warm_epochs
    lines = [f"# InDistill in front of every KD method on `{p.data}`: results\n\n",
             f"Protocol: [protocol.md](protocol.md). Code revision: `{result['revision']}`. Seeds: "
             f"{list(p.seeds)}. {p.threads} torch thread(s) per run, {p.jobs} runs at a time; {result['wall_h']:.1f} h "
             f"of runs. E = {e} KD epochs, W = {w} warmup epochs (curriculum {p.curriculum}). Test split; top-1 and "
             f"retrieval mAP (cosine; train split as the database, test split as queries), in %.\n\n",
             f"Teacher `{p.teacher}` (CE): test top-1 {result['teacher'].get('top1', math.nan):.2f}, mAP cos "
             f"{result['teacher'].get('map_cosine', math.nan):.2f}. Student `{p.student}`.\n",
             "\n## Arms (mean +- std over seeds)\n\n| method | params | "
             + " | ".join(f"{a} {lbl}" for a in ARMS for _, lbl in ENDPOINTS) + " |\n|---|---|"
             + "---|" * (len(ARMS) * len(ENDPOINTS)) + "\n"]
    for row, rec in s["rows"].items():
        params = " ".join(method_args(row, e)[1]) or "defaults"
        cells = [f"{rec['arms'][a][k]['mean']:.2f} +- {rec['arms'][a][k]['std']:.2f}" if k in rec["arms"][a] else "-"
                 for a in ARMS for k, _ in ENDPOINTS]
        lines.append(f"| {row} | {params} | " + " | ".join(cells) + " |\n")
    for a, b, view in COMPARISONS:
        lines.append(f"\n## {a} - {b}: {view} (paired by seed; mean [95% t-interval]; **+**/**-**: the interval "
                     "excludes 0)\n\n| method | n | " + " | ".join(lbl for _, lbl in ENDPOINTS + EXTRA_ENDPOINTS)
                     + " |\n|---|---|" + "---|" * len(ENDPOINTS + EXTRA_ENDPOINTS) + "\n")
        for row, rec in s["rows"].items():
            c = next(c for c in rec["comparisons"] if c["view"] == view)
            lines.append(f"| {row} | {len(rec['seeds'])} | " + " | ".join(
                _cell(c[k]) if k in c else "-" for k, _ in ENDPOINTS + EXTRA_ENDPOINTS) + " |\n")
    lines.append(closing_note(s))
    lines.append(f"\nCommand: `{result['command']}`\n")
    return "".join(lines)


def figure(p: Preset, result: dict[str, Any], path: Path) -> None:
    """Per method, the paired differences with their 95% t-intervals: both views, both endpoints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["summary"]["rows"])
    fig, axes = plt.subplots(1, len(ENDPOINTS), figsize=(6 * len(ENDPOINTS), 0.32 * len(rows) + 1.6), dpi=110,
                             sharey=True)
    for ax, (k, label) in zip(axes, ENDPOINTS):
        for j, (a, b, view) in enumerate(COMPARISONS):
            ys, ms, los, his = [], [], [], []
            for i, row in enumerate(rows):
                c = next(c for c in result["summary"]["rows"][row]["comparisons"] if c["view"] == view)
                if k in c:
                    ys.append(i + (j - 1) * 0.22)
                    ms.append(c[k]["mean"])
                    los.append(c[k]["mean"] - c[k]["ci95"][0] if not math.isnan(c[k]["ci95"][0]) else 0)
                    his.append(c[k]["ci95"][1] - c[k]["mean"] if not math.isnan(c[k]["ci95"][1]) else 0)
            ax.errorbar(ms, ys, xerr=[los, his], fmt="o", ms=3, capsize=2, label=f"{a} - {b} ({view})")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference, test {label} (points)")
        ax.set_title(f"{label}: mean and 95% t-interval over {len(p.seeds)} seeds", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def report(preset: str, out: Path, done: dict[str, dict[str, Any]], wall_h: float) -> dict[str, Any]:
    p = PRESETS[preset]
    result = {"preset": preset, "config": {**p.__dict__, "rows": p.rows()}, "revision": revision(), "wall_h": wall_h,
              "command": " ".join(["python", "benchmarks/methods.py", *sys.argv[1:]]),
              "teacher": done.get("teacher", {}).get("scores", {}), "summary": summarise(p, done),
              "runs": dict(sorted(done.items()))}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "results.md").write_text(markdown(p, result))
    figure(p, result, out / "figure.png")
    return result


def write_protocol(preset: str, out: Path) -> None:
    from methods_protocol import protocol  # the prose, rendered from the preset

    p = PRESETS[preset]
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.md").write_text(protocol(preset, p, [(row, *method_args(row, p.kd_epochs)) for row in p.rows()],
                                              ARMS, COMPARISONS, ENDPOINTS, EXTRA_ENDPOINTS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mini")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<the preset's folder>")
    ap.add_argument("--protocol", action="store_true", help="write protocol.md and stop")
    ap.add_argument("--report", action="store_true", help="only rebuild results.* from the finished runs")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the preset's)")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    out = a.out or HERE / "results" / p.out
    write_protocol(a.preset, out)
    if a.protocol:
        return
    if not a.report:
        study.execute(run_job, (a.preset,), out, jobs_for(p), a.jobs or p.jobs, p.threads, "methods")
    done = {f.stem: json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))}
    wall_h = sum(r.get("wall_s", 0) for r in done.values()) / 3600
    print(markdown(p, report(a.preset, out, done, wall_h)))


if __name__ == "__main__":
    main()
