"""`--compile` for real on CPU: torch.compile with backend aot_eager (INDISTILL_COMPILE_BACKEND; it traces
and partitions like inductor but runs ATen kernels, so no C++ compiler is needed) for `train`, the warmup's
stop-early forward (StudentUpTo) and `distill`. Each trains to the quality of the same run in eager mode
(margin: 0.02 of validation top-1; the warmup's final per-tap MSE within 2%; observed here: identical, e.g.
train 0.6819 both, distill kd+at 0.3858 both) and states its graphs and graph breaks on stderr and in --json.
The absolute floors (top-1 >= 0.3, 3x chance, after 31 steps on 1000 images; every tap's MSE below the
untrained student's) only guard against a run that did not train at all.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from stage_helpers import DATA, _cli

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ("--data", DATA, "--val-fraction", "0.8", "--batch-size", "32", "--seed", "1")  # 1000 training images


def _run(*args: object) -> tuple[dict, str]:
    res = _cli(*args, *SMALL, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res.stderr


def _compiled_and_eager(monkeypatch, tmp_path, *args: object) -> tuple[dict, dict, str]:
    monkeypatch.setenv("INDISTILL_COMPILE_BACKEND", "aot_eager")
    compiled, err = _run(*args, "--compile", "-o", tmp_path / "c.safetensors")
    eager, _ = _run(*args, "-o", tmp_path / "e.safetensors")
    c = compiled["compile"]
    assert "compile" not in eager
    assert c["backend"] == "aot_eager" and c["graphs"] >= 1 and c["graph_breaks"] == sum(c["reasons"].values())
    line = f"--compile (aot_eager): {c['graphs']} graph(s), {c['graph_breaks']} graph break(s)"
    assert line in err, err
    print(f"{args[0]}: {line}; reasons {c['reasons']}")
    return compiled, eager, err


def test_train_compiled(monkeypatch, tmp_path):
    compiled, eager, _ = _compiled_and_eager(monkeypatch, tmp_path, "train", "cnn3-w0.5", "--epochs", "1")
    print(f"train val top-1: compiled {compiled['val_top1']}, eager {eager['val_top1']}")
    assert compiled["val_top1"] >= 0.3 and abs(compiled["val_top1"] - eager["val_top1"]) <= 0.02
    assert compiled["compile"]["graph_breaks"] == 0  # a plain forward: one graph


def test_warmup_compiled(monkeypatch, tmp_path, trained_cnn3):
    """The warmup compiles StudentUpTo (the student's forward stopped after the active tap), one per phase."""
    compiled, eager, _ = _compiled_and_eager(monkeypatch, tmp_path, "warmup", "-t", trained_cnn3.path, "-s",
                                             "cnn3-w0.5", "--epochs-per-tap", "1,1,1", "--flow-images", "200")
    c, e = compiled["final_mse"], eager["final_mse"]
    print(f"warmup final MSE: compiled {c}, eager {e}")
    for tap in e:
        assert c[tap] == pytest.approx(e[tap], rel=0.02) and c[tap] < compiled["initial_mse"][tap]
    # at most one break per phase (StudentUpTo registers its tap hooks inside the forward)
    assert compiled["compile"]["graph_breaks"] <= 3


def test_distill_compiled(monkeypatch, tmp_path, trained_cnn3):
    compiled, eager, _ = _compiled_and_eager(monkeypatch, tmp_path, "distill", "-t", trained_cnn3.path, "-s",
                                             "cnn3-w0.5", "-m", "kd", "-m", "at", "--epochs", "1")
    print(f"distill val top-1: compiled {compiled['val_top1']}, eager {eager['val_top1']}")
    assert compiled["val_top1"] >= 0.3 and abs(compiled["val_top1"] - eager["val_top1"]) <= 0.02
    assert compiled["compile"]["graph_breaks"] == 0  # the tap hooks are registered once, outside the graph


def test_unknown_backend_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("INDISTILL_COMPILE_BACKEND", "nope")
    res = _cli("train", "cnn3-w0.5", "--epochs", "1", "--compile", "-o", tmp_path / "x.safetensors", "-q", *SMALL)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "INDISTILL_COMPILE_BACKEND=nope" in lines[0], res.output
    assert not (tmp_path / "x.safetensors").exists()


def test_compile_help_names_the_backend_variable():
    import dataclasses

    from indistill_cli.optionspec import KEY
    from indistill_cli.stages.options import RunOptions

    (field,) = [f for f in dataclasses.fields(RunOptions) if f.name == "compile"]
    assert "$INDISTILL_COMPILE_BACKEND (default inductor" in field.metadata[KEY]["help"]
