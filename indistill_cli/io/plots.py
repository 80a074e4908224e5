"""PNG figures: information-flow curves (per-tap MSE over epochs), with curriculum phases shaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_flow(curves: dict[str, list[float]], path: str | Path, title: str,
              phase_spans: list[tuple[str, int, int]] | None = None,
              compare: dict[str, list[float]] | None = None, compare_label: str = "without warmup") -> None:
    """One line per tap (epoch 0 = before training); `compare` draws a dashed twin per tap."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, ys) in enumerate(curves.items()):
        c = colors[i % len(colors)]
        ax.plot(range(len(ys)), ys, marker="o", ms=3, color=c, label=name)
        if compare and name in compare:
            ax.plot(range(len(compare[name])), compare[name], ls="--", color=c, label=f"{name} ({compare_label})")
    for j, (label, lo, hi) in enumerate(phase_spans or []):
        ax.axvspan(lo - 1, hi, color="0.85" if j % 2 == 0 else "0.93", zorder=0)
        ax.text((lo - 1 + hi) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE to teacher target (validation)")
    ax.set_yscale("log")
    ax.set_title(title, pad=14)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> None:
    """Atomic PNG write (rendered in memory, then temp file + fsync + rename)."""
    import io

    from indistill_cli.io.atomic import atomic_write

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


def plot_tap_bars(values: dict[str, float], path: str | Path, title: str) -> None:
    """One bar per paired tap (log scale): the student's MSE to the teacher's target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MSE")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, plt, path)


def plot_tradeoff(points: list[tuple[str, float, float]], path: str | Path, xlabel: str, ylabel: str,
                  title: str) -> None:
    """One labelled point per model (e.g. top-1 against latency): what each step of compression bought."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (label, x, y) in enumerate(points):
        ax.scatter([x], [y], s=40, color="#c44e52" if i == 0 else "#4c72b0", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.margins(0.15)  # room for the labels of the outermost points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, plt, path)
