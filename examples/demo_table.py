"""The demo's last step: its three students side by side, beside the effect study's same three arms.

    python examples/demo_table.py demo-out 32 12
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "effect-fmnist" / "results.json"
ARMS = (("CE", "student, CE alone"), ("KD+W", "student, KD alone"), ("InD+KD", "student, InDistill + KD"))
KEYS = ("top1", "map_cosine", "map_euclidean", "p100_cosine")  # Scores: percent


def main(out: str, total: int, warm: int) -> None:
    from indistill_cli.metrics.scores import Scores

    load = lambda p: json.loads((Path(out) / p).read_text())  # noqa: E731
    scores = [Scores.from_stages(load("student_ce.evaluate.json"), load("student_ce.retrieve.json"))]
    scores += [Scores.read(load(f"{name}.json")["final"]) for name in ("kd", "indistill")]  # older runs: fractions
    rows = [tuple(s.as_dict()[k] for k in KEYS) for s in scores]
    study = json.loads(STUDY.read_text()) if STUDY.exists() else None
    print(f"\nbudget: equal total epochs -- every student trains {total} epochs; InDistill's {warm} warmup epochs "
          f"count inside them ({warm} warmup + {total - warm} KD, one continuous lr plan)")
    head = f"{'test split (%)':<26}{'top-1':>8}{'mAP cos':>9}{'mAP euc':>9}{'P@100':>8}"
    if study:
        n = len(study["summary"]["complete_seeds"])
        head += f"   | study: full Fashion-MNIST, {n} seeds, mAP cos mean +- std"
    print(head)
    for (arm, label), r in zip(ARMS, rows):
        line = f"{label:<26}" + "".join(f"{v:>{w}.2f}" for v, w in zip(r, (8, 9, 9, 8)))
        if study:
            m = study["summary"]["arms"][arm]["map_cosine"]
            line += f"   | {m['mean']:.2f} +- {m['std']:.2f}"
        print(line)
    if study:
        for c in study["summary"]["comparisons"]["primary"]:
            if (c["a"], c["b"]) == ("InD+KD", "KD+W"):
                d = c["map_cosine"]
                print(f"study, InDistill+KD - KD (equal total epochs, n={c['n']}): {d['mean']:+.2f} mAP "
                      f"[95% CI {d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]; details: {STUDY.parent / 'results.md'}")
    else:
        print(f"(the effect study's results are not in this checkout: {STUDY})")
    figure = flow_figure(out, warm)
    print(f"\nper-tap MSE to the pruned teacher through training, with vs without the warmup (the paper's "
          f"Figure 4): {figure}; all checkpoints: {out}/")


def flow_figure(out: str, warm: int) -> str:
    """Both students' per-tap validation MSE to the pruned teacher, on one axis of student epochs."""
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.io.history import flow_curves
    from indistill_cli.io.plots import plot_flow

    ind, n_warm = flow_curves(load_checkpoint(f"{out}/indistill/student.safetensors").history)
    kd, _ = flow_curves(load_checkpoint(f"{out}/kd/student.safetensors").history)
    path = f"{out}/flow_with_vs_without_warmup.png"
    plot_flow(ind, path, "per-tap MSE to the pruned teacher: InDistill + KD vs KD alone (dashed)",
              [("warmup", 1, n_warm)], compare=kd, compare_label="KD alone")
    return path


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
