"""What a run leaves behind besides its checkpoint: the command that made it (`inspect --command`, `rerun`)
and the trackers (`--log`), checked on one small `pipeline` run with every tracker on.

- every stage's printed command, executed, gives bitwise-equal tensors (CPU, same seed);
- `rerun` says equal, and after a deliberate change (another --lr in the recorded command) how far apart;
- TensorBoard's event files (EventAccumulator), MLflow's file store (its client), W&B's offline run folders and
  the CSV files hold the per-epoch values the checkpoints' histories hold, one run (folder) per stage.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bitwise import tensor_sha256
from conftest import assert_one_line_error, cli_env, invoke

from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

SMALL = ("--data", "fashion-mnist-mini", "--val-fraction", "0.05", "--seed", "3")
# the trackers whose library is installed (all three with `.[test]`); a missing one's test skips, the rest still run
TRACKERS = [k for k, m in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb"))
            if importlib.util.find_spec(m) is not None] + ["csv"]
STAGES = ("teacher.safetensors", "teacher_pruned.safetensors", "student_warm.safetensors", "student.safetensors")


def _env(d: Path) -> dict[str, str]:
    return cli_env(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_DIR=str(d), WANDB_CACHE_DIR=str(d / ".wandb-cache"),
                   WANDB_CONFIG_DIR=str(d / ".wandb-config"), WANDB_DATA_DIR=str(d / ".wandb-data"))


def _cli(*args: object, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "indistill_cli", *map(str, args)], cwd=cwd, env=_env(cwd),
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """cnn3 teacher (1 epoch) -> prune -> warmup (1,1,1) -> distill (2 epochs, kd), every tracker on."""
    d = tmp_path_factory.mktemp("record")
    p = _cli("pipeline", "-t", "cnn3", "-s", "cnn3-w0.5", "--teacher-epochs", "1", "--epochs", "2", "--budget", "added",
             "--epochs-per-tap", "1,1,1", "-m", "kd", *SMALL, "-o", "out", *(w for k in TRACKERS for w in ("--log", k)),
             "--json", cwd=d)
    return d, json.loads(p.stdout)


def test_the_command_of_every_stage_reproduces_its_tensors(run) -> None:
    d, _ = run
    (d / "again").mkdir()
    for name in STAGES:
        shown = json.loads(_cli("inspect", f"out/{name}", "--command", "-o", f"again/{name}", "--json", cwd=d).stdout)
        assert shown["argv"][:2] == ["indistill", {"teacher.safetensors": "train", "student.safetensors": "distill",
                                                  "teacher_pruned.safetensors": "prune"}.get(name, "warmup")]
        assert name == "teacher.safetensors" or "--expect-sha256" in shown["argv"]  # its parents, checked
        p = subprocess.run(["bash", "-c", shown["line"].replace("indistill ", f"{sys.executable} -m indistill_cli ", 1)],
                           cwd=d, env=_env(d), capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        assert tensor_sha256(d / "again" / name) == tensor_sha256(d / "out" / name), name


def test_a_changed_parent_is_refused_in_one_line(run) -> None:
    d, _ = run
    os.chdir(d)
    r = invoke("distill", "-t", "out/teacher.safetensors", "-s", "out/student_warm.safetensors", "-m", "kd",
               "-o", d / "x.safetensors", "--expect-sha256", f"out/teacher.safetensors={'0' * 64}")
    assert_one_line_error(r.exit_code, r.stderr, "out/teacher.safetensors: sha256", "is not the recorded 0000000000")
    assert not (d / "x.safetensors").exists()


def test_rerun_says_equal_then_how_far_apart_after_a_change(run) -> None:
    d, _ = run
    pruned = load_checkpoint(d / "out" / "teacher_pruned.safetensors")  # (every stage's own command is checked above)
    same = json.loads(_cli("rerun", "out/teacher_pruned.safetensors", "-o", "rerun.safetensors", "--json",
                           cwd=d).stdout)
    assert same["bitwise_equal"] and same["differing"] == 0 and same["max_abs_diff"] == 0.0
    assert same["tensors"] == len(pruned.state) + len(pruned.extras) and "quality" not in same
    ck = load_checkpoint(d / "out" / "teacher.safetensors")  # the same teacher, its recorded lr changed
    ck.history[-1]["command"]["config"]["lr"] = 0.2
    save_checkpoint(Checkpoint(ck.role, ck.spec, ck.state, ck.extras, ck.history, ck.info), d / "changed.safetensors")
    p = _cli("rerun", "changed.safetensors", "-o", "rerun2.safetensors", "--json", cwd=d)
    diff = json.loads(p.stdout)
    assert not diff["bitwise_equal"] and diff["differing"] > 0 and diff["max_abs_diff"] > 1e-4
    assert "--lr 0.2" in " ".join(diff["command"]) and "not bitwise equal" in p.stderr
    q = diff["quality"]
    recorded = json.loads(_cli("evaluate", "out/teacher.safetensors", "--json", "-q", *SMALL[:4], cwd=d).stdout)
    assert q["recorded"]["top1"] == recorded["top1"] and q["recorded"]["data"] == "fashion-mnist-mini"
    assert 0.1 < q["rerun"]["top1"] < 1 and q["rerun"]["top1"] != q["recorded"]["top1"] and 0 < q["rerun"]["map"] < 1


# ------------------------------------------------------------------------------------------ trackers


def _history(d: Path) -> dict[str, dict[str, list[float]]]:
    """Per stage, each per-epoch value the checkpoints' histories hold (the warmup's flow curves without their
    first point, which is the untrained student's)."""
    def rows(name: str, stage: str) -> dict[str, list[float]]:
        h = next(e for e in load_checkpoint(d / "out" / name).history if e["stage"] == stage)
        keys = {k for r in h["curve"] for k in r if k != "epoch"}
        return {k: [r[k] for r in h["curve"]] for k in keys}

    warm = next(e for e in load_checkpoint(d / "out" / "student_warm.safetensors").history if e["stage"] == "warmup")
    return {"teacher": rows("teacher.safetensors", "train"), "distill": rows("student.safetensors", "distill"),
            "warmup": {f"val_mse_{tap}": v[1:] for tap, v in warm["curves"].items()}}


def _needs(kind: str) -> None:
    if kind not in TRACKERS:
        pytest.skip(f"{kind} is not installed (pip install 'indistill[log]')")


def test_tensorboard_event_files_hold_the_history(run) -> None:
    _needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d, _ = run
    root = d / "out" / "logs" / "tensorboard" / "out"
    for stage, values in _history(d).items():
        acc = EventAccumulator(str(root / stage))
        acc.Reload()
        assert set(values) <= set(acc.Tags()["scalars"]), stage
        for key, want in values.items():
            got = [e.value for e in acc.Scalars(key)]
            assert [e.step for e in acc.Scalars(key)] == list(range(1, len(want) + 1))
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (stage, key)  # event files hold float32
    assert {p.name for p in root.iterdir() if p.is_dir()} == {"teacher", "prune", "warmup", "distill", "evaluate",
                                                              "retrieve"}
    acc = EventAccumulator(str(root / "warmup"), size_guidance={"images": 0})
    acc.Reload()
    assert "flow" in acc.Tags()["images"]  # the warmup's plot


def test_mlflow_file_store_holds_the_history_in_child_runs(run) -> None:
    _needs("mlflow")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    d, summary = run
    client = MlflowClient(tracking_uri=(d / "out" / "logs" / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("indistill")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "out")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"teacher", "prune", "warmup", "distill", "evaluate", "retrieve"}
    for stage, values in _history(d).items():
        run_id = children[stage].info.run_id
        for key, want in values.items():
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [m.value for m in hist] == want and [m.step for m in hist] == list(range(1, len(want) + 1))
    student = children["distill"]
    assert student.data.tags["output"] == "out/student.safetensors"
    assert student.data.tags["output_sha256"] == load_checkpoint(d / "out" / "student.safetensors").sha256
    assert student.data.params["method"] == "['kd']" and student.data.params["command"] == "distill"
    assert parent.data.metrics["final/top1"] == summary["final"]["top1"]
    assert parent.data.params["teacher-epochs"] == "1"
    assert [a.path for a in client.list_artifacts(children["warmup"].info.run_id)] == ["flow.png"]


def test_wandb_offline_writes_a_run_per_stage(run) -> None:
    _needs("wandb")
    d, _ = run
    wandb_runs = sorted((d / "out" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 7 and all(p.stat().st_size > 0 for p in wandb_runs)  # 6 stages + the pipeline's


def test_csv_files_hold_the_history(run) -> None:
    d, _ = run
    logs = d / "out" / "logs"
    for stage, values in _history(d).items():
        with open(logs / "csv" / "out" / stage / "metrics.csv") as f:
            table = list(csv.DictReader(f))
        for key, want in values.items():
            assert [float(r[key]) for r in table] == want, (stage, key)
    final = json.loads((logs / "csv" / "out" / "distill" / "final.json").read_text())
    assert final["output"] == "out/student.safetensors" and final["metrics"]["best_epoch"] >= 1


def test_a_missing_tracker_library_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules["indistill_cli.io.trackers"].KINDS, "wandb", "indistill_no_such_module")
    r = invoke("train", "cnn3", "-o", tmp_path / "m.safetensors", "--log", "wandb")
    assert_one_line_error(r.exit_code, r.stderr, "--log wandb needs", "pip install 'indistill[log]'")
    r = invoke("train", "cnn3", "-o", tmp_path / "m.safetensors", "--log", "neptune")
    assert_one_line_error(r.exit_code, r.stderr, "--log neptune: unknown tracker", "tensorboard, mlflow, wandb, csv")
    assert not (tmp_path / "m.safetensors").exists()


def test_only_rank_0_logs_under_torchrun(tmp_path) -> None:
    from test_ddp import _torchrun

    code, _, err = _torchrun("train", "cnn3-w0.5", "--data", "synthetic:1x28x28:10:160", "--val-fraction", "0.2",
                             "--batch-size", "32", "--epochs", "2", "-o", "m.safetensors", "--log", "csv",
                             "--log-dir", "logs", cwd=tmp_path)
    assert code == 0, err[-3000:]
    runs = sorted(p.relative_to(tmp_path / "logs") for p in (tmp_path / "logs").rglob("metrics.csv"))
    assert runs == [Path("csv/m/metrics.csv")]
    with open(tmp_path / "logs" / "csv" / "m" / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
