"""Reproduce the InDistill protocol over several seeds and report mean +- std with paired differences.

Protocol (METHOD.md): teacher T (CE) -> auxiliary A = the student's topology at 2x width, CE-trained
then PKT from T -> prune A to the student's widths -> InDistill warmup -> PKT from A; the same
without the warmup; plus KD from A with and without the warmup; plus the student alone (CE).
Every student gets the same total epoch budget (the warmup counts against it, as in the reference:
70 student epochs with 12 of warmup). Teachers are trained once and reused across seeds and methods.

Outputs (in --out): results.json, results.md (table + paired differences + the command), figure.png
(bars with error bars; per-tap MSE curves with vs without warmup, as the paper's Figure 4).

    python benchmarks/reproduce.py --preset smoke      # seconds, synthetic data (the test suite runs it)
    python benchmarks/reproduce.py --preset cpu        # Fashion-MNIST, about an hour on 2 CPU cores
    python benchmarks/reproduce.py --preset paper      # CIFAR-10, reference architectures and epochs (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from indistill_cli import progress  # noqa: E402
from indistill_cli.distill import run_distill  # noqa: E402
from indistill_cli.engine import OptimConfig  # noqa: E402
from indistill_cli.evaluate import run_evaluate  # noqa: E402
from indistill_cli.prune import run_prune  # noqa: E402
from indistill_cli.retrieve import run_retrieve  # noqa: E402
from indistill_cli.session import RunOptions  # noqa: E402
from indistill_cli.train import run_train  # noqa: E402
from indistill_cli.warmup import run_warmup  # noqa: E402


def adam(lr: float = 1e-3, drop_at: int | None = None) -> OptimConfig:
    """The reference recipe: Adam 1e-3, then 1e-4 from epoch `drop_at`."""
    return OptimConfig("adam", lr, weight_decay=0.0, schedule="multistep" if drop_at else "none",
                       milestones=[drop_at] if drop_at else [])


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(data="synthetic:1x28x28:10:600", teacher="cnn3-w2", teacher_epochs=1, aux="cnn3",
                  aux_epochs=1, student="cnn3-w0.5", student_epochs=4, epochs_per_tap="1,1,1", drop_at=3,
                  seeds=2, val_fraction=0.1, batch_size=128,
                  teacher_optim=OptimConfig("sgd", 0.05, schedule="cosine")),
    # the embedded 10k/2k Fashion-MNIST subset and a 4x-wide cnn3 teacher: on 2 CPU cores the full set's
    # 10k x 60k exact ranking alone takes ~35 s per metric and run, and a resnet teacher minutes per epoch
    "cpu": dict(data="fashion-mnist-mini", teacher="cnn3-w4", teacher_epochs=10, aux="cnn3", aux_epochs=10,
                student="cnn3-w0.5", student_epochs=20, epochs_per_tap="1,2,3", drop_at=16, seeds=5,
                val_fraction=0.1, batch_size=128, teacher_optim=OptimConfig("sgd", 0.05, schedule="cosine")),
    "paper": dict(data="cifar10", teacher="preact_resnet18", teacher_epochs=100, aux="cnn3", aux_epochs=80,
                  student="cnn3-w0.5", student_epochs=70, epochs_per_tap="3,4,5", drop_at=60, seeds=5,
                  val_fraction=0.1, batch_size=128, teacher_optim=OptimConfig("sgd", 0.1, schedule="cosine")),
}
METHODS = ["student alone", "PKT", "InDistill+PKT", "KD", "InDistill+KD"]
METRICS = [("top1", "top-1"), ("map_cosine", "mAP cos"), ("map_euclidean", "mAP euc"), ("p100_cosine", "P@100 cos")]


def scores(ckpt: str, opts: RunOptions) -> dict[str, float]:
    """Test top-1 and the paper's retrieval metrics (train split as database) of a checkpoint."""
    ev = run_evaluate(ckpt, "test", RunOptions(**{**opts.as_dict(), "augment": False}), per_class=False)
    rt = run_retrieve(ckpt, RunOptions(**{**opts.as_dict(), "val_fraction": 0.0}), None, "train", "test", "both",
                      "exact", [100], None, None, None, 10, None)
    m = rt["metrics"]
    return {"top1": 100 * ev["top1"], "map_cosine": 100 * m["cosine"]["map"],
            "map_euclidean": 100 * m["euclidean"]["map"], "p100_cosine": 100 * m["cosine"]["precision@100"]}


def run(preset: str, out: Path, seeds: int | None, device: str) -> dict[str, Any]:
    cfg = dict(PRESETS[preset])
    n_seeds = seeds or cfg["seeds"]
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    base = RunOptions(data=cfg["data"], val_fraction=cfg["val_fraction"], batch_size=cfg["batch_size"], seed=0,
                      device=device)
    E, W = cfg["student_epochs"], sum(int(v) for v in cfg["epochs_per_tap"].split(","))
    t0 = time.perf_counter()
    w = lambda name: str(work / name)  # noqa: E731

    # teachers, once: T (CE), A (CE then PKT from T), A pruned to the student's widths
    progress.console.rule("teacher and auxiliary (trained once)")
    if not Path(w("teacher.safetensors")).exists():
        run_train(cfg["teacher"], w("teacher.safetensors"), cfg["teacher_epochs"], cfg["teacher_optim"], base,
                  force=True)
    if not Path(w("aux.safetensors")).exists():
        run_train(cfg["aux"], w("aux_ce.safetensors"), cfg["aux_epochs"], adam(), base, force=True)
        run_distill(w("teacher.safetensors"), w("aux_ce.safetensors"), w("aux.safetensors"), ["pkt"], [], 0.0, [],
                    None, cfg["aux_epochs"], adam(), base, force=True)
    run_prune(w("aux.safetensors"), cfg["student"], w("aux_pruned.safetensors"), base, data_given=True, force=True)
    reference = {"teacher": scores(w("teacher.safetensors"), base), "auxiliary": scores(w("aux.safetensors"), base)}

    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    curves: dict[str, dict[str, list[float]]] = {}
    for seed in range(n_seeds):
        o = RunOptions(**{**base.as_dict(), "seed": seed})
        progress.console.rule(f"seed {seed + 1}/{n_seeds}")
        alone = w(f"s{seed}_alone.safetensors")
        run_train(cfg["student"], alone, E, adam(drop_at=cfg["drop_at"]), o, force=True, save_last=False)
        runs["student alone"].append(scores(alone, o))
        warm = w(f"s{seed}_warm.safetensors")
        wsum = run_warmup(w("aux_pruned.safetensors"), cfg["student"], warm, adam(), o,
                          explicit=cfg["epochs_per_tap"], force=True)
        for kd, label in (("pkt", "PKT"), ("kd", "KD")):
            ce = 0.0 if kd == "pkt" else None  # the reference trains PKT without CE; KD uses Hinton's recipe
            plain = w(f"s{seed}_{kd}.safetensors")
            s_plain = run_distill(w("aux.safetensors"), cfg["student"], plain, [kd], [], ce, [], None, E,
                                  adam(drop_at=cfg["drop_at"]), o, force=True,
                                  flow_teacher=w("aux_pruned.safetensors"))
            runs[label].append(scores(plain, o))
            ind = w(f"s{seed}_ind_{kd}.safetensors")
            s_ind = run_distill(w("aux.safetensors"), warm, ind, [kd], [], ce, [], None, E - W,
                                adam(drop_at=max(1, cfg["drop_at"] - W)), o, force=True,
                                flow_teacher=w("aux_pruned.safetensors"))
            runs[f"InDistill+{label}"].append(scores(ind, o))
            if seed == 0:
                curves[label] = s_plain["curves"]
                curves[f"InDistill+{label}"] = {k: wsum["curves"][k] + v[1:] for k, v in s_ind["curves"].items()}
    summary = summarise(runs)
    diffs = paired(runs, [("InDistill+PKT", "PKT"), ("InDistill+KD", "KD"), ("InDistill+PKT", "student alone")])
    result = {"preset": preset, "config": {k: (v.as_dict() if isinstance(v, OptimConfig) else v) for k, v in cfg.items()},
              "seeds": n_seeds, "device": device, "reference_models": reference, "runs": runs, "summary": summary,
              "paired_differences": diffs, "flow_curves_seed0": curves, "wall_s": round(time.perf_counter() - t0, 1),
              "command": " ".join(["python", "benchmarks/reproduce.py", *sys.argv[1:]])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    figure(result, out / "figure.png", W)
    progress.console.print(markdown(result))
    return result


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    return {m: {k: list(_ms([r[k] for r in rs])) for k, _ in METRICS} for m, rs in runs.items() if rs}


def paired(runs: dict[str, list[dict[str, float]]], pairs: list[tuple[str, str]]) -> dict[str, dict[str, list[float]]]:
    """Per-seed differences (same seed, same data order) as mean +- std."""
    out = {}
    for a, b in pairs:
        out[f"{a} - {b}"] = {k: list(_ms([x[k] - y[k] for x, y in zip(runs[a], runs[b])])) for k, _ in METRICS}
    return out


def markdown(r: dict[str, Any]) -> str:
    head = "| model | " + " | ".join(lbl for _, lbl in METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
    lines = [f"# InDistill reproduction, preset `{r['preset']}` ({r['seeds']} seeds, mean +- std)\n",
             f"Data `{r['config']['data']}`; teacher `{r['config']['teacher']}`, auxiliary `{r['config']['aux']}`, "
             f"student `{r['config']['student']}`; {r['config']['student_epochs']} student epochs in all "
             f"(warmup epochs per tap {r['config']['epochs_per_tap']}); wall {r['wall_s'] / 60:.1f} min.\n", head]
    for name, m in r["reference_models"].items():
        lines.append(f"| {name} (seed 0) | " + " | ".join(f"{m[k]:.2f}" for k, _ in METRICS) + " |\n")
    for name, m in r["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k][0]:.2f} +- {m[k][1]:.2f}" for k, _ in METRICS) + " |\n")
    lines += ["\nPaired differences (same seed):\n\n", head.replace("model", "difference")]
    for name, m in r["paired_differences"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k][0]:+.2f} +- {m[k][1]:.2f}" for k, _ in METRICS) + " |\n")
    lines.append(f"\nCommand: `{r['command']}`\n")
    return "".join(lines)


def figure(r: dict[str, Any], path: Path, warm_epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    ax = axes[0]
    names = list(r["summary"])
    width = 0.8 / len(METRICS)
    for j, (k, lbl) in enumerate(METRICS):
        means = [r["summary"][n][k][0] for n in names]
        stds = [r["summary"][n][k][1] for n in names]
        ax.bar([i + j * width for i in range(len(names))], means, width, yerr=stds, capsize=2, label=lbl)
    ax.set_xticks([i + width * (len(METRICS) - 1) / 2 for i in range(len(names))], names, rotation=20, fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(f"{r['seeds']} seeds, mean +- std")
    ax.legend(fontsize=7)
    for ax, kd in zip(axes[1:], ("PKT", "KD")):
        plain, ind = r["flow_curves_seed0"].get(kd, {}), r["flow_curves_seed0"].get(f"InDistill+{kd}", {})
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, tap in enumerate(plain):
            ax.plot(range(len(ind[tap])), ind[tap], color=colors[i], label=f"{tap} InDistill+{kd}")
            ax.plot(range(len(plain[tap])), plain[tap], color=colors[i], ls="--", label=f"{tap} {kd} only")
        ax.axvspan(0, warm_epochs, color="0.9", zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("student epoch (shaded: warmup)")
        ax.set_ylabel("val MSE to pruned auxiliary's tap")
        ax.set_title(f"information flow, seed 0: {kd} with vs without warmup")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--seeds", type=int, default=None, help="override the preset's number of seeds")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/reproduce-PRESET")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    progress.set_quiet(a.quiet)
    out = a.out or Path(__file__).parent / "results" / f"reproduce-{a.preset}"
    run(a.preset, out, a.seeds, a.device)


if __name__ == "__main__":
    main()
