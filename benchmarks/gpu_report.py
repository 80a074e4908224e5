"""The report of benchmarks/gpu_check.sh: one markdown page from the steps' JSON outputs and logs.

    python benchmarks/gpu_report.py OUT WORK [--mode gpu|cpu]

Writes OUT/report.md and OUT/report.json (gpu_check.sh's OUT defaults to benchmarks/results/gpu-<date>/), and
exits 1 when a step that must succeed failed (every step but `nonfinite_over`, which must fail with exit 1) or
a check did not hold: the two --deterministic students bitwise equal, exactly one injected step skipped, no
host synchronisation in a watched training step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MUST_FAIL = {"nonfinite_over": 1}  # past --skip-nonfinite the run stops: exit 1


def load(out: Path, name: str) -> dict[str, Any] | None:
    """A step's stdout as JSON (None when it printed none)."""
    try:
        text = (out / f"{name}.json").read_text().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, json.JSONDecodeError, IndexError):
        return None


def pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def num(v: Any, fmt: str = "{:.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def tensors_equal(a: Path, b: Path) -> str:
    """'bitwise equal' / 'max |diff| x' between two checkpoints' tensors."""
    from safetensors.torch import load_file

    if not (a.exists() and b.exists()):
        return "n/a (missing)"
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return "different keys"
    diff = max(((ta[k].double() - tb[k].double()).abs().max().item() if ta[k].numel() else 0.0) for k in ta)
    return "bitwise equal" if all(ta[k].equal(tb[k]) for k in ta) else f"max |diff| {diff:.3g}"


def stage_rows(out: Path, steps: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per training step: top-1, mAP, img/s, peak memory, syncs per step, compile graph breaks."""
    rows = []
    for name in steps:
        s = load(out, name)
        if not isinstance(s, dict) or "images_per_sec" not in s:
            continue
        sync = s.get("sync_check") or {}
        comp = s.get("compile") or {}
        rows.append([name, pct(s.get("val_top1")), pct(s.get("val_map")), num(s.get("images_per_sec")),
                     num(s.get("peak_memory_mb")),
                     num(sync.get("syncs_per_step"), "{:.2f}") + (f" ({sync.get('steps')} steps)" if sync else ""),
                     num(comp.get("graph_breaks")) if comp else "",
                     str(s.get("skipped_nonfinite", ""))])
    return rows


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def throughput_lines(out: Path, name: str) -> list[str]:
    r = load(out, name)
    if not r:
        return [f"- {name}: no result"]
    med = "  ".join(f"{k} {v:.0f}" for k, v in r.get("median_img_s", {}).items())
    ratio = "  ".join(f"ours/{k} {v:.3f}" for k, v in r.get("median_ratio", {}).items())
    skipped = f"; skipped: {', '.join(r['skipped'])}" if r.get("skipped") else ""
    return [f"- {name} ({r.get('rounds')} interleaved rounds): median img/s {med}; median of per-round ratios "
            f"{ratio}{skipped}"]


def compare_lines(out: Path) -> list[str]:
    r = load(out, "compare")
    if not r:
        return ["- compare: no result"]
    lines = []
    for m in r.get("models", r.get("rows", [])):
        keys = [k for k in m if k.startswith(("latency", "eager", "onnx", "top1", "map", "ran"))]
        lines.append("- " + str(m.get("name", m.get("checkpoint", "?"))) + ": " +
                     ", ".join(f"{k} {m[k]}" for k in keys))
    if "runs_on" in r:
        lines.append(f"- what ran where: {r['runs_on']}")
    return lines or ["- compare: " + json.dumps(r)[:400]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--mode", default="gpu")
    a = ap.parse_args()
    steps = {}
    for line in (a.out / "steps.jsonl").read_text().splitlines():
        s = json.loads(line)
        steps[s["step"]] = s
    failed = [n for n, s in steps.items() if s["rc"] != MUST_FAIL.get(n, 0)]
    det = tensors_equal(a.work / "det_1.safetensors", a.work / "det_2.safetensors")
    failed += [] if det == "bitwise equal" else ["check: deterministic students differ"]
    if (load(a.out, "nonfinite") or {}).get("skipped_nonfinite") != 1:
        failed.append("check: the injected non-finite step was not skipped exactly once")
    for name in steps:
        result = load(a.out, name)
        sync = result.get("sync_check") if isinstance(result, dict) else None
        if sync and sync.get("syncs_per_step", 0) > 0:
            failed.append(f"check: {name} synchronised with the host ({sync.get('ops')})")
    env = load(a.out, "env") or {}
    total = sum(s["wall_s"] for s in steps.values())
    md = [f"# GPU check ({a.mode}): {env.get('device') or 'CPU'}", "",
          f"`bash benchmarks/gpu_check.sh{' --cpu' if a.mode == 'cpu' else ''}`; torch {env.get('torch')}, "
          f"torchvision {env.get('torchvision')}, timm {env.get('timm')}, CUDA {env.get('cuda')}, Python "
          f"{env.get('python')}; code revision {env.get('revision', 'unknown')}; {len(steps)} steps in {total:.0f} s; failed: {', '.join(failed) or 'none'}.", "",
          "## Steps", ""]
    md += table(["step", "exit", "expected", "wall s"],
                [[n, str(s["rc"]), str(MUST_FAIL.get(n, 0)), f"{s['wall_s']:.1f}"] for n, s in steps.items()])
    md += ["", "## Training runs", ""]
    md += table(["step", "val top-1", "val mAP", "img/s", "peak MB", "host syncs / step", "graph breaks",
                 "skipped non-finite"], stage_rows(a.out, steps))
    md += ["", "## Checks", "",
           f"- `--deterministic` twice (at + reviewkd, resnet8 -> cnn3-w0.5): "
           f"{det}",
           f"- `--skip-nonfinite 2`, NaN injected at 1 step: exit {steps.get('nonfinite', {}).get('rc')}; "
           f"3 NaN steps: exit {steps.get('nonfinite_over', {}).get('rc')} (expected 1); last line: "
           f"{_last_line(a.out / 'nonfinite_over.log')}"]
    md += compare_lines(a.out)
    md += ["", "## Throughput", ""] + throughput_lines(a.out, "throughput_kd") + throughput_lines(a.out, "throughput_ce")
    text = "\n".join(md) + "\n"
    (a.out / "report.md").write_text(text)
    (a.out / "report.json").write_text(json.dumps({"steps": steps, "failed": failed, "env": env}, indent=1) + "\n")
    print(text)
    return 1 if failed else 0


def _last_line(p: Path) -> str:
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    except OSError:
        return "n/a"
    return f"`{lines[-1][:200]}`" if lines else "n/a"


if __name__ == "__main__":
    sys.exit(main())
