"""End to end: `indistill pipeline`, its --resume, the README's shell pipe, and the effect study's runner.

The pipeline must be exactly the standalone commands chained (same seed -> bitwise-identical student),
resume must redo only what is missing, and the README's pipe must run as written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import suite_seed

from indistill_cli.io.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["--data", "fashion-mnist-mini", "--val-fraction", "0.05", "--seed", str(suite_seed(3))]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("INDISTILL_QUIET", None)
    return env


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "indistill_cli", *map(str, args)], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("pipeline")
    p = _cli("pipeline", "-t", "cnn3", "-s", "cnn3-w0.5", "--teacher-epochs", "1", "--epochs", "2",
             "--budget", "added", "--epochs-per-tap", "1,1,1", "-m", "kd", *SMALL, "-o", d / "out", "--json", cwd=d)
    return d, json.loads(p.stdout)


@pytest.mark.trained
def test_pipeline_writes_every_stage_and_a_final_table(run, record):
    d, summary = run
    out = d / "out"
    for name in ("teacher.safetensors", "teacher_pruned.safetensors", "student_warm.safetensors",
                 "student.safetensors", "evaluate.json", "retrieve.json", "flow.png", "pipeline.json"):
        assert (out / name).is_file(), name
    assert summary["stages"] == ["teacher", "prune", "warmup", "distill", "evaluate", "retrieve"]
    final = summary["final"]
    record("top1", final["top1"], 0.5, ">")
    record("map_cosine", final["map_cosine"], 0.3, ">")
    record("p@100_cosine", final["p@100_cosine"], 0.4, ">")
    stages = [h["stage"] for h in load_checkpoint(out / "student.safetensors").history]
    assert stages == ["warmup", "distill"]
    assert summary["estimate_s"]["distill"] > 0


def test_pipeline_student_equals_the_standalone_commands(run):
    d, _ = run
    w = d / "standalone"
    w.mkdir()
    _cli("train", "cnn3", "--epochs", "1", *SMALL, "-o", w / "t.safetensors", cwd=w)
    _cli("prune", w / "t.safetensors", "--like", "cnn3-w0.5", *SMALL, "-o", w / "p.safetensors", cwd=w)
    # the pipeline's student plan: one Adam run over 3 warmup + 2 KD epochs, x0.1 for the last seventh
    _cli("warmup", "-t", w / "p.safetensors", "-s", "cnn3-w0.5", "--epochs-per-tap", "1,1,1", *SMALL,
         "--optimizer", "adam", "--lr", "1e-3", "--wd", "0", "--schedule", "multistep", "--milestones", "4",
         "--plan-epochs", "5", "-o", w / "warm.safetensors", cwd=w)
    _cli("distill", "-t", w / "t.safetensors", "-s", w / "warm.safetensors", "-m", "kd", "--continue-plan", *SMALL,
         "-o", w / "s.safetensors", cwd=w)
    a = load_checkpoint(d / "out" / "student.safetensors").state
    b = load_checkpoint(w / "s.safetensors").state
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_redoes_only_missing_stages(run):
    d, _ = run
    out = d / "out"
    teacher_mtime = (out / "teacher.safetensors").stat().st_mtime_ns
    before = load_checkpoint(out / "student.safetensors").state
    (out / "student.safetensors").unlink()  # as if the run had died during distill
    (out / "retrieve.json").unlink()
    p = _cli("pipeline", "-t", "cnn3", "-s", "cnn3-w0.5", "--teacher-epochs", "1", "--epochs", "2",
             "--budget", "added", "--epochs-per-tap", "1,1,1", "-m", "kd", *SMALL, "-o", out, "--resume", "--json", cwd=d)
    skipped = re.findall(r"stage \d+/\d+ ([\w-]+):? up to date, skipped", p.stderr)
    assert skipped == ["teacher", "prune", "warmup"]
    assert (out / "teacher.safetensors").stat().st_mtime_ns == teacher_mtime
    after = load_checkpoint(out / "student.safetensors").state
    assert all(torch.equal(before[k], after[k]) for k in before)  # same seed, same student
    assert (out / "retrieve.json").is_file()


def test_pipeline_into_a_used_folder_needs_resume(run):
    d, _ = run
    p = subprocess.run([sys.executable, "-m", "indistill_cli", "pipeline", "-t", "cnn3", "-s", "cnn3-w0.5",
                        "-o", str(d / "out")], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--resume" in p.stderr and "Traceback" not in p.stderr


def test_readme_pipe_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- pipe-example -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README lost its pipe example"
    script = block.group(1)
    assert "-o - \\\n  | indistill warmup --teacher -" in script
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    s = load_checkpoint(tmp_path / "s.safetensors")
    assert [h["stage"] for h in s.history] == ["warmup", "distill"]
    assert "top-1" in p.stderr


def test_effect_study_smoke_writes_protocol_results_and_figure(tmp_path):
    """The effect study's runner end to end on tiny synthetic data: every arm for every seed, both budget
    views, paired differences that are the per-seed differences, and a resumable run folder."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "effect.py"), "--preset", "smoke", "--out", str(tmp_path)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    s = r["summary"]
    assert s["complete_seeds"] == [0, 1]
    assert set(s["per_seed"]) == {"CE", "PKT", "PKT+W", "InD+PKT", "InD+PKT+keep", "KD", "KD+W", "InD+KD"}
    rows = {(c["a"], c["b"]): c for c in s["comparisons"]["primary"]}
    views = {c["view"] for c in rows.values()}
    assert {"equal total epochs", "warmup added"} <= views
    eq = rows[("InD+KD", "KD+W")]["map_cosine"]
    per = s["per_seed"]
    assert eq["per_seed"] == [per["InD+KD"][k]["map_cosine"] - per["KD+W"][k]["map_cosine"] for k in ("0", "1")]
    assert r["pilot"]["chosen"] in [[1.0, 0.5], [10.0, 0.5]]
    assert len(r["runs"]) == 5 + 4 + 2 * 9  # reference, pilot (warmup, 2 keep-flow candidates, plain), (warmup + 8 arms) per seed
    for name in ("protocol.md", "results.md", "figure.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "equal total epochs" in (tmp_path / "results.md").read_text()
    # a rerun finds every run done and only rebuilds the report
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[effect] start" not in again.stderr
