"""`indistill compare`: parameters, MACs (torch's flop counter), bytes on disk and latency of each model,
quality from the evaluate and retrieve stages themselves with --data, ratios against the first model;
native, timm and torchvision models; an optimised path that fails is a note, not a failure; bad input is
one line, exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error
from test_export import _fresh

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ("--runs", "2", "--warmup", "1", "--batch", "4", "--threads", "1")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return _fresh(tmp_path_factory.mktemp("compare") / "teacher.safetensors", "cnn3")


def test_costs_and_ratios_against_the_first_model(teacher, trained_cnn3, cli):
    code, stdout, err = cli("compare", str(teacher), str(trained_cnn3.path), *QUICK, "--json")
    assert code == 0, err
    out = json.loads(stdout)
    t, s = out["models"]
    assert out["reference"] == "teacher" and out["threads"] == 1 and out["batch"] == 4
    assert (t["model"], s["model"]) == ("cnn3", "cnn3-w0.5")
    assert s["parameters"] == 14906 and s["file_bytes"] == trained_cnn3.path.stat().st_size
    assert s["macs"] == 342048  # torch's flop counter at 1x32x32, halved (conv + linear)
    for row in (t, s):
        for path in ("eager", "onnxruntime"):
            for b in ("1", "4"):
                lat = row["latency"][path][b]
                assert 0 < lat["median_ms"] <= lat["p90_ms"] and lat["runs"] == 2 and lat["batch"] == int(b)
    v = s["vs_reference"]
    assert v["fewer_macs"] == pytest.approx(t["macs"] / s["macs"]) and v["fewer_macs"] > 3
    assert v["smaller"] == pytest.approx(t["file_bytes"] / s["file_bytes"])
    assert t["vs_reference"]["faster_batch4"] == 1.0 and "delta_top1" not in v
    for needle in ("models", "latency, ms: median (p90) of 2 runs after 1", "against teacher", "fewer MACs"):
        assert needle in err


def test_quality_is_what_evaluate_and_retrieve_report(teacher, trained_cnn3, cli, tmp_path):
    plot = tmp_path / "tradeoff.png"
    code, stdout, err = cli("compare", str(teacher), str(trained_cnn3.path), *QUICK, "--optimized", "none",
                            "--data", "fashion-mnist-mini", "--plot", str(plot), "--json")
    assert code == 0, err
    s = json.loads(stdout)["models"][1]
    code, ev, _ = cli("evaluate", str(trained_cnn3.path), "--json", "-q")
    code, rt, _ = cli("retrieve", str(trained_cnn3.path), "--metric", "cosine", "--json", "-q")
    assert s["top1"] == json.loads(ev)["top1"] and s["map"] == json.loads(rt)["metrics"]["cosine"]["map"]
    t = json.loads(stdout)["models"][0]
    assert s["vs_reference"]["delta_top1"] == pytest.approx(s["top1"] - t["top1"])
    assert list(s["latency"]) == ["eager"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timm_and_torchvision_models(tmp_path, cli):
    a = _fresh(tmp_path / "a.safetensors", "timm:test_resnet")
    b = _fresh(tmp_path / "b.safetensors", "tv:mobilenet_v2")
    code, stdout, err = cli("compare", str(a), str(b), *QUICK, "--json", "-q")
    assert code == 0, err
    rows = json.loads(stdout)["models"]
    assert [r["model"] for r in rows] == ["timm:test_resnet", "tv:mobilenet_v2"]
    assert all(r["macs"] > 0 and r["parameters"] > 0 and "1" in r["latency"]["onnxruntime"] for r in rows)
    assert rows[1]["parameters"] == sum(p.numel() for p in __import__("torchvision").models.mobilenet_v2(
        num_classes=10).parameters())


def test_a_failing_optimised_path_is_a_note(teacher, cli, monkeypatch):
    def fails(*a, **k):
        raise RuntimeError("no kernel for this\nsecond line")

    monkeypatch.setattr("indistill_cli.stages.compare.optimised_runner", fails)
    code, stdout, err = cli("compare", str(teacher), *QUICK, "--optimized", "compile", "--json")
    assert code == 0, err
    lat = json.loads(stdout)["models"][0]["latency"]
    assert lat["compile"] == {"error": "n/a: no kernel for this"} and "4" in lat["eager"]
    assert "n/a" in err


def test_without_onnxruntime_auto_times_eager_only(teacher, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, stdout, err = cli("compare", str(teacher), *QUICK, "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert out["optimized"] == "none" and "pip install 'indistill[export]'" in out["optimized_note"]
    code, _, err = cli("compare", str(teacher), *QUICK, "--optimized", "onnxruntime")
    assert_one_line_error(code, err, "pip install 'indistill[export]'")


def test_bad_inputs(teacher, trained_cnn3, tmp_path, cli):
    five = _fresh(tmp_path / "five.safetensors", "cnn3-w0.5", classes=5)
    emb = tmp_path / "emb.safetensors"
    assert cli("retrieve", str(trained_cnn3.path), "--data", "synthetic:1x28x28:10:40", "--export", str(emb),
               "-q")[0] == 0
    t = str(teacher)
    cases = [((t, str(tmp_path / "missing.safetensors")), "checkpoint not found"),
             ((t, str(emb)), "is an embeddings file"),
             ((t, str(five), "--data", "fashion-mnist-mini"), "their class counts differ"),
             ((t, "--plot", str(tmp_path / "p.png")), "--plot draws top-1 against latency: give --data too"),
             ((t, "--batch", "0"), "--batch and --runs must be at least 1"),
             ((t, "--threads", "0"), "--threads must be at least 1"),
             ((t, "--optimized", "tensorrt"), "--optimized must be one of auto, onnxruntime, compile, none")]
    for args, needle in cases:
        code, stdout, err = cli("compare", *args, *QUICK[:4])
        assert_one_line_error(code, err, needle)
        assert stdout == b""
    code, _, err = cli("compare", t, str(five), *QUICK, "-q")  # no --data: class counts may differ
    assert code == 0, err
    assert not (tmp_path / "p.png").exists()


def test_latency_heads_say_where_and_in_what_precision_each_path_ran(monkeypatch):
    """On CUDA, eager runs the fp32 model on the GPU (no autocast) and onnxruntime the fp32 graph on the CPU:
    the table's heads and --json's `paths` say so, and nothing claims the training precision (bf16). No
    GPU here: the device is only named, and torch.cuda's name lookup faked."""
    import io

    import torch
    from rich.console import Console

    from indistill_cli import progress
    from indistill_cli.engine.runtime import Runtime
    from indistill_cli.stages.compare import show, timed_paths

    gpu = torch.device("cuda", 0)
    paths = timed_paths(gpu, True, "onnxruntime", 8)
    assert paths == {"eager": {"device": "cuda:0", "precision": "fp32", "layout": "channels_last"},
                     "onnxruntime": {"device": "cpu", "precision": "fp32", "layout": "contiguous", "threads": 8}}
    assert timed_paths(gpu, True, "compile", 8)["compile"] == paths["eager"]  # compiled: where eager runs
    assert timed_paths(torch.device("cpu"), False, "none", 2) == {
        "eager": {"device": "cpu", "precision": "fp32", "layout": "contiguous", "threads": 2}}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    rt = Runtime(gpu, "bf16", True)
    assert rt.device_name() == "NVIDIA H100 80GB HBM3 (cuda:0)" and "bf16" in rt.describe()  # describe: training's

    lat = {"1": {"median_ms": 1.0, "p90_ms": 1.5}, "4": {"median_ms": 2.0, "p90_ms": 2.5}}
    row = {"label": "t", "model": "cnn3", "parameters": 10, "macs": 10, "file_bytes": 1024,
           "latency": {"eager": lat, "onnxruntime": lat},
           "vs_reference": {"smaller": 1.0, "fewer_parameters": 1.0, "fewer_macs": 1.0, "faster_batch1": 1.0,
                            "faster_batch4": 1.0}}
    out = {"reference": "t", "device": rt.device_name(), "threads": 8, "paths": paths, "load_average": 0.0,
           "batch": 4, "runs": 2, "warmup": 1, "optimized": "onnxruntime", "models": [row]}
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, width=400, highlight=False))
    show(out)
    text = buf.getvalue()
    for head in ("eager cuda:0 fp32 b=1", "eager cuda:0 fp32 b=4", "onnxruntime cpu fp32 b=1", "onnxruntime cpu fp32 b=4"):
        assert head in text, text
    assert "NVIDIA H100 80GB HBM3 (cuda:0), 8 CPU threads" in text and "bf16" not in text


def test_json_says_what_ran_where(teacher, cli):
    code, stdout, err = cli("compare", str(teacher), *QUICK, "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert out["paths"]["eager"]["device"] == "cpu" and out["paths"]["eager"]["precision"] == "fp32"
    assert out["paths"]["onnxruntime"] == {"device": "cpu", "precision": "fp32", "layout": "contiguous", "threads": 1}
