"""What a run leaves behind besides its checkpoint: the command that made it (`inspect --command`, `rerun`)
and the trackers (`--log`), checked on one small `pipeline` run with every tracker on.

- every stage's printed command, executed, gives bitwise-equal tensors (CPU, same seed);
- `rerun` says equal, and after a deliberate change (another --lr in the recorded command) how far apart;
- TensorBoard's event files (EventAccumulator), MLflow's file store (its client), W&B's offline run folders and
  the CSV files hold the per-epoch values the checkpoints' histories hold, one run (folder) per stage.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bitwise import tensor_sha256
from conftest import assert_one_line_error, cli_env, invoke

from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

SMALL = ("--data", "fashion-mnist-mini", "--val-fraction", "0.05", "--seed", "3")
TRACKERS = ("tensorboard", "mlflow", "wandb", "csv")  # the test extra installs all three libraries (`.[log]`'s)
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


def test_tensorboard_event_files_hold_the_history(run) -> None:
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


def _wandb_records(path: Path) -> list:
    """The records of an offline run file (`run-ID.wandb`: W&B's header, then LevelDB-log blocks of 32 KiB whose
    chunks, 7-byte headers each, join into `Record` protobufs, as `wandb sync` reads them)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pos, buf = path.read_bytes(), [], 7, b""
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(pb.Record.FromString(buf))
            buf = b""
    return records


def _wandb_run(path: Path) -> tuple[str, dict, dict[str, list[float]], dict]:
    """(name, config, per-step history, summary) of one offline run, read back from its file."""
    name, config, history, summary = "", {}, {}, {}
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            name = r.run.display_name
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for k, v in row.items():
                history.setdefault(k, []).append((row["_step"], v))
        elif kind == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
    return name, config, {k: [v for _, v in sorted(pts)] for k, pts in history.items()}, summary


def test_wandb_offline_runs_hold_the_history(run) -> None:
    d, summary = run
    runs = {}
    for path in sorted((d / "out" / "logs" / "wandb").glob("offline-run-*/run-*.wandb")):
        name, config, history, final = _wandb_run(path)
        runs[name] = (config, history, final)
    # 6 stages and the pipeline's own run (its options and final table), in one group named after the output
    assert set(runs) == {"teacher", "prune", "warmup", "distill", "evaluate", "retrieve", "out"}
    for stage, values in _history(d).items():
        _, history, _ = runs[stage]
        assert history["_step"] == list(range(1, len(next(iter(values.values()))) + 1)), stage
        for key, want in values.items():
            assert history[key] == want, (stage, key)
    config, _, final = runs["distill"]
    assert config["method"] == ["kd"] and config["command"] == "distill"
    assert final["output"] == "out/student.safetensors"
    assert final["output_sha256"] == load_checkpoint(d / "out" / "student.safetensors").sha256
    config, _, final = runs["out"]
    assert config["teacher-epochs"] == 1 and final["top1"] == summary["final"]["top1"]


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


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_tracker_library_is_one_line(tmp_path, monkeypatch, kind) -> None:
    monkeypatch.setitem(sys.modules, kind, None)  # as if not installed: `import` and find_spec find nothing
    r = invoke("train", "cnn3", "-o", tmp_path / "m.safetensors", "--log", "csv", "--log", kind)
    assert_one_line_error(r.exit_code, r.stderr, f"--log {kind} needs the {kind} package",
                          "pip install 'indistill[log]'")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "logs").exists()  # checked before any work
    r = invoke("train", "cnn3", "-o", tmp_path / "m.safetensors", "--log", "neptune")
    assert_one_line_error(r.exit_code, r.stderr, "--log neptune: unknown tracker", "tensorboard, mlflow, wandb, csv")
    assert not (tmp_path / "m.safetensors").exists()


def test_only_rank_0_logs_under_torchrun(tmp_path) -> None:
    from test_ddp import _torchrun

    code, _, err = _torchrun("train", "cnn3-w0.5", "--data", "synthetic:1x28x28:10:160", "--val-fraction", "0.2",
                             "--batch-size", "32", "--epochs", "2", "-o", "m.safetensors", "--log-to", "csv",
                             "--log-dir", "logs", cwd=tmp_path)
    assert code == 0, err[-3000:]
    runs = sorted(p.relative_to(tmp_path / "logs") for p in (tmp_path / "logs").rglob("metrics.csv"))
    assert runs == [Path("csv/m/metrics.csv")]
    with open(tmp_path / "logs" / "csv" / "m" / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
