"""benchmarks/gpu_check.sh is valid bash, and its report (benchmarks/gpu_report.py) fails the check when a
step or a check does not hold: an unexpected exit code, students of two --deterministic runs that differ, an
injected non-finite step not skipped exactly once, a host sync in a watched step. (The whole script runs in
~7 minutes with --cpu: too long for the suite; its steps are the commands the other tests cover.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")]).returncode == 0


def _out(tmp: Path, *, rc_over: int = 1, det_equal: bool = True, skipped: int = 1, syncs: float = 0.0) -> Path:
    out, work = tmp / "out", tmp / "out" / "work"
    work.mkdir(parents=True)
    steps = [("env", 0), ("distill_kd", 0), ("nonfinite", 0), ("nonfinite_over", rc_over)]
    (out / "steps.jsonl").write_text("".join(json.dumps({"step": n, "rc": rc, "wall_s": 1.0, "command": n}) + "\n"
                                             for n, rc in steps))
    (out / "env.json").write_text(json.dumps({"torch": torch.__version__, "device": "Test GPU"}))
    (out / "distill_kd.json").write_text(json.dumps({"val_top1": 0.5, "images_per_sec": 100.0, "peak_memory_mb": 1.0,
                                                     "skipped_nonfinite": 0,
                                                     "sync_check": {"steps": 4, "syncs_per_step": syncs,
                                                                    "ops": {"aten::item": 4} if syncs else {}}}))
    (out / "nonfinite.json").write_text(json.dumps({"val_top1": 0.4, "images_per_sec": 100.0, "peak_memory_mb": 1.0,
                                                    "skipped_nonfinite": skipped}))
    w = torch.arange(6.0)
    save_file({"w": w}, str(work / "det_1.safetensors"))
    save_file({"w": w if det_equal else w + 1e-6}, str(work / "det_2.safetensors"))
    return out


@pytest.mark.parametrize("change, failed", [
    ({}, []),
    ({"rc_over": 0}, ["nonfinite_over"]),
    ({"det_equal": False}, ["check: deterministic students differ"]),
    ({"skipped": 0}, ["check: the injected non-finite step was not skipped exactly once"]),
    ({"syncs": 1.0}, ["check: distill_kd synchronised with the host ({'aten::item': 4})"]),
])
def test_report_fails_on_what_did_not_hold(tmp_path, change, failed):
    out = _out(tmp_path, **change)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_report.py"), str(out), str(out / "work")],
                       capture_output=True, text=True)
    assert p.returncode == (1 if failed else 0), p.stderr
    assert json.loads((out / "report.json").read_text())["failed"] == failed
    md = (out / "report.md").read_text()
    assert md.startswith("# GPU check (gpu): Test GPU")
    assert "| distill_kd | 50.00 | n/a | 100 | 1 | " + f"{1.0 if failed and 'syncs' in change else 0.0:.2f} (4 steps)" in md
