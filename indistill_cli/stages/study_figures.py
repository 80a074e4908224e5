"""A study's figures: the forest plot of its paired differences (figure.png) and, when the arms recorded it,
the information flow through training (flow.png: the paper's Figure 4, mean over seeds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from indistill_cli.metrics.scores import LABELS
from indistill_cli.stages.study import StudySpec


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def forest(spec: StudySpec, result: dict[str, Any], path: Path) -> None:
    """One panel per primary endpoint: each comparison's mean paired difference and 95% t-interval over the
    primary seeds; primaries filled, the rest hollow; 0 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]["comparisons"]["primary"]
    keys = list(spec.primary_endpoints)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 0.3 * len(rows) + 1.8), dpi=110, sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], keys):
        for i, r in enumerate(rows):
            if k not in r:
                continue
            m, (lo, hi) = r[k]["mean"], r[k]["ci95"]
            err = [[m - lo], [hi - m]] if not math.isnan(lo) else None
            ax.errorbar([m], [i], xerr=err, fmt="o", ms=4, capsize=2, color="C0" if r["primary"] else "C1",
                        mfc="C0" if r["primary"] else "white")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), [f"{r['a']} - {r['b']} ({r['view']})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference, test {LABELS[k]} (points)")
        ax.set_title(f"{LABELS[k]}: mean and 95% t-interval, n = {rows[0]['n'] if rows else 0} seeds "
                     "(filled: primary)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def flow_figure(spec: StudySpec, result: dict[str, Any], path: Path) -> None:
    """Per method row, the per-tap validation MSE to the pruned targets through training, mean over seeds, each
    arm a line style; the warmup's epochs shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["mean_curves"]
    rows = [r.name for r in spec.rows if any(spec.arm(a).row == r.name for a in curves)]
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(6 * max(1, len(rows)), 4.4), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, row in zip(axes[0], rows):
        arms = [a for a in curves if spec.arm(a).row == row]
        for arm, ls in zip(arms, ["--", "-", ":", "-."] * 4):
            for i, (tap, c) in enumerate(curves[arm].items()):
                ax.plot(range(len(c)), c, color=colors[i % len(colors)], ls=ls, label=f"{tap} {arm}")
        ax.axvspan(0, spec.warm_epochs, color="0.9", zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel(f"student epoch (shaded: the {spec.warm_epochs} warmup epochs)")
        ax.set_ylabel("val MSE to the pruned targets")
        ax.set_title(f"information flow, mean over seeds: {row}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
