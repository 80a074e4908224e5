"""Tests for `indistill warmup` (InDistill stage 1b): the curriculum, the gradient flow of one warmup
step, and real warmups on fashion-mnist-mini that must copy the teacher's feature maps.

A cnn3 teacher is trained for one epoch (shared with test_distill / test_retrieve through a file cache,
once per run), pruned to cnn3-w0.5, and warmed up for one epoch per tap. The residual pair is a resnet8
trained for a few batches (a full epoch of resnet8 at 28x28 costs ~25 s on one core) pruned to
resnet8-w0.5. Everything runs single-threaded: on a shared 2-core machine two OpenMP threads are many
times slower than one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.io.history import write_model
from indistill_cli.stages.curriculum import epochs_per_tap, phases, tap_of_epoch
from indistill_cli.errors import BadInput
from indistill_cli.metrics.flow import mse
from indistill_cli.pruning.targets import FlowPair, pairs_from_teacher
from indistill_cli.models import make_spec
from indistill_cli.pruning.rebuild import model_from_checkpoint

from stage_helpers import (  # noqa: F401 - fixtures
    DATA, SEED, _bad, _ok, _shared_file, build_cnn3_teacher, build_quick_teacher, _prune, info, teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")

VAL = ("--val-fraction", "0.05")  # 500 validation images (the flow images), 9500 to train on
# one epoch per tap at lr 1e-2: the reference lr (1e-3) needs many more steps than one epoch of the mini set
FAST = ("--epochs-per-tap", "1,1,1", "--lr", "1e-2")


# ----------------------------------------------------------------------------- helpers

def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.pop("INDISTILL_QUIET", None)
    return env


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, teacher) -> str:
    return _shared_file(tmp_path_factory, "cnn3_pruned_w0.5", _prune(teacher, "cnn3-w0.5"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warmup")


def _fresh_student(path: Path, name: str, info, seed: int = 7) -> str:
    torch.manual_seed(seed)
    spec, model = make_spec(name, info.in_channels, info.num_classes, info.image_size,
                            {"mean": info.mean, "std": info.std})
    write_model(str(path), {k: v.detach().clone() for k, v in model.state_dict().items()}, spec, [],
                {"dataset": info.as_dict()})
    return str(path)


# ----------------------------------------------------------------------------- curriculum

@pytest.mark.parametrize("n, a, b, expected", [
    (3, 2.0, 1.0, [3, 4, 5]),           # the reference schedule
    (4, 2.0, 1.0, [3, 4, 5, 6]),
    (3, 1.5, 0.5, [2, 3, 3]),           # 2.0, 2.5 (half away from zero), 3.0
    (2, 0.5, 1.0, [2, 3]),              # 1.5, 2.5
    (4, 0.0, 0.4, [0, 1, 1, 2]),        # 0.4, 0.8, 1.2, 1.6
    (3, 4.0, -1.0, [3, 2, 1]),          # a decreasing curriculum is allowed
    (1, 0.0, 1.0, [1]),
])
def test_epochs_per_tap(n, a, b, expected):
    assert epochs_per_tap(n, a, b) == expected


def test_tap_of_epoch_and_phases():
    assert tap_of_epoch([3, 4, 5]) == [0] * 3 + [1] * 4 + [2] * 5
    assert phases([3, 4, 5]) == [(0, 1, 3), (1, 4, 7), (2, 8, 12)]
    sched = epochs_per_tap(4, 0.0, 0.4)
    assert tap_of_epoch(sched) == [1, 2, 3, 3]  # tap 0 gets no epoch
    assert phases(sched) == [(1, 1, 1), (2, 2, 2), (3, 3, 4)]


def test_explicit_schedule_overrides_a_b():
    assert epochs_per_tap(3, 100.0, 100.0, "3,4,5") == [3, 4, 5]
    assert epochs_per_tap(3, explicit=" 1, 0 ,2 ") == [1, 0, 2]


@pytest.mark.parametrize("n, a, b, explicit, needle", [
    (3, 2.0, 1.0, "3,4", "gives 2 values but there are 3"),
    (2, 2.0, 1.0, "3,4,5", "gives 3 values but there are 2"),
    (3, 2.0, 1.0, "3,-1,5", "negative"),
    (3, 2.0, 1.0, "3,x,5", "comma-separated integers"),
    (3, 2.0, 1.0, "0,0,0", "no epochs"),
    (3, -3.0, 1.0, None, "negative"),       # -2, -1, 0
    (2, -0.5, 0.0, None, "negative"),       # rounds half away from zero to -1
    (2, 0.0, 0.0, None, "no epochs"),
    (0, 2.0, 1.0, None, "at least one"),
])
def test_curriculum_errors(n, a, b, explicit, needle):
    with pytest.raises(BadInput, match=needle):
        epochs_per_tap(n, a, b, explicit)


# ----------------------------------------------------------------------------- gradient flow of one step

def test_step_of_tap_l_reaches_only_layers_up_to_l(pruned, info):
    """The warmup step as warmup.py builds it: only blocks up to tap l get a gradient, the teacher none."""
    from indistill_cli.stages.options import RunOptions
    from indistill_cli.stages.session import open_session

    ck = load_checkpoint(pruned)
    teacher = model_from_checkpoint(ck).eval()  # requires_grad left on: the flow itself must keep grads out
    torch.manual_seed(0)
    spec, student = make_spec("cnn3-w0.5", info.in_channels, info.num_classes, info.image_size,
                              {"mean": info.mean, "std": info.std})
    student.train()
    pairs = pairs_from_teacher(ck, spec)
    assert [(p.teacher_tap, p.student_tap) for p in pairs] == [("block1", "block1"), ("block2", "block2"),
                                                               ("block3", "block3")]
    assert [len(p.keep) for p in pairs] == [8, 16, 32]
    flow = FlowPair(teacher, student, pairs)
    s = open_session(RunOptions(data=DATA, val_fraction=0.05))
    x = next(iter(s.train_loader(spec))).x[:32]
    blocks = ["block1", "block2", "block3"]
    for l in range(3):
        student.zero_grad(set_to_none=True)
        targets = flow.targets(x, l)
        maps = flow.student_maps(x, l)
        assert len(targets) == len(maps) == l + 1
        assert not any(t.requires_grad for t in targets)
        assert maps[l].shape == targets[l].shape == (32, pairs[l].keep.numel(), *maps[l].shape[-2:])
        loss = mse(maps[l], targets[l])
        assert math.isfinite(loss.item()) and loss.item() > 0
        loss.backward()
        for i, name in enumerate(blocks):
            conv, bn = student.get_submodule(name)[0], student.get_submodule(name)[1]
            if i <= l:
                assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0, (l, name)
                assert bn.weight.grad is not None and float(bn.weight.grad.abs().sum()) > 0, (l, name)
            else:
                assert conv.weight.grad is None and bn.weight.grad is None, (l, name)
        for name in ("embed", "fc"):
            assert all(p.grad is None for p in student.get_submodule(name).parameters()), (l, name)
        assert all(p.grad is None for p in teacher.parameters())
        # the target is the real (eval-mode) teacher activation at the kept channels
        with torch.no_grad():
            ref = x
            for b in blocks[: l + 1]:
                ref = teacher.get_submodule(b)(ref)
            torch.testing.assert_close(targets[l], ref[:, pairs[l].keep], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- real warmups

@pytest.fixture(scope="module")
def cnn3_warm(work, pruned):
    out, plot = work / "warm.safetensors", work / "flow.png"
    summary = _ok("warmup", "-t", pruned, "-s", "cnn3-w0.5", "-o", out, "--data", DATA, *VAL, *FAST, *SEED,
                  "--plot", plot)
    return summary, out, plot


def _record_flow_copied(record, summary: dict, names: list[str]) -> None:
    """Every tap ends at under half its initial MSE, and tap l's own phase (epoch l+1) brings it under 0.3x."""
    init, final, curves = summary["initial_mse"], summary["final_mse"], summary["curves"]
    for n in names:
        record(f"{n} final / initial MSE", final[n] / init[n], 0.5, "<")
    for l, n in enumerate(names):
        record(f"{n} MSE after / before its phase", curves[n][l + 1] / curves[n][l], 0.3, "<")


@pytest.mark.trained
def test_warmup_copies_feature_maps_cnn3(cnn3_warm, record):
    summary, out, _ = cnn3_warm
    names = ["block1", "block2", "block3"]
    init, final, curves = summary["initial_mse"], summary["final_mse"], summary["curves"]
    print("cnn3 curves", curves)
    assert list(init) == list(final) == list(curves) == names
    for n in names:
        assert len(curves[n]) == 4 and curves[n][0] == init[n] and curves[n][-1] == final[n]
    # tap l's own phase (epoch l+1) brings it far down; later taps' phases leave it well below its start
    _record_flow_copied(record, summary, names)
    assert summary["epochs_per_tap"] == [1, 1, 1] and summary["cumulative"] is False
    # non-cumulative: each epoch's loss is the active tap's MSE only, nothing else
    rows = summary["epochs"]
    assert len(rows) == 3
    for l, row in enumerate(rows):
        mses = sorted(k for k in row if k.startswith("train_mse_"))
        assert mses == [f"train_mse_{names[l]}"], row
        assert row["train_loss"] == pytest.approx(row[mses[0]], rel=1e-6)
        assert row["active_tap"] == l + 1
        assert row[f"val_mse_{names[l]}"] == curves[names[l]][l + 1]


def test_warmup_checkpoint_history_and_plot(cnn3_warm, pruned):
    summary, out, plot = cnn3_warm
    ck = load_checkpoint(out, role="model")
    assert ck.spec["arch"] == "cnn3" and ck.spec["width"] == 0.5
    assert ck.stage_names() == ["warmup"]
    h = ck.history[-1]
    w = h["warmup"]
    assert w["pairs"] == [{"teacher_tap": f"block{i}", "student_tap": f"block{i}", "epochs": 1} for i in (1, 2, 3)]
    assert w["epochs_per_tap"] == [1, 1, 1] and w["cumulative"] is False
    assert w["final_mse"] == summary["final_mse"] and w["initial_mse"] == summary["initial_mse"]
    assert w["teacher"]["sha256"] == load_checkpoint(pruned).sha256
    assert h["metrics"]["final_mse"] == summary["final_mse"]
    assert h["curves"] == summary["curves"]
    assert h["options"]["epochs_per_tap"] == [1, 1, 1] and h["options"]["lr"] == 1e-2
    assert h["data"] == DATA
    assert ck.info["warmup"]["final_mse"] == summary["final_mse"]
    data = Path(plot).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(plot) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_evaluate_teacher_reports_the_warmup_final_mse(cnn3_warm, pruned):
    """`evaluate --teacher` on the same validation images (the first --flow-images) = warmup's final MSE."""
    summary, out, _ = cnn3_warm
    ev = _ok("evaluate", out, "--teacher", pruned, "--split", "val", *VAL, "--flow-images", "1000")
    flow = ev["flow"]
    assert flow["flow_images"] == 500
    assert list(flow["tap_mse"]) == [f"block{i}<-block{i}" for i in (1, 2, 3)]
    for i in (1, 2, 3):
        assert flow["tap_mse"][f"block{i}<-block{i}"] == pytest.approx(summary["final_mse"][f"block{i}"], rel=1e-5)
    assert 0.0 <= flow["agreement"] <= 1.0


@pytest.fixture(scope="module")
def resnet_pruned(tmp_path_factory):
    teacher = _shared_file(tmp_path_factory, "resnet8_quick", build_quick_teacher("resnet8", 20))
    return _shared_file(tmp_path_factory, "resnet8_pruned_w0.5", _prune(teacher, "resnet8-w0.5"))


@pytest.mark.trained
def test_cumulative_warmup_residual_pair(work, resnet_pruned, record):
    """resnet8 -> resnet8-w0.5 (coupled residual channels), --cumulative: every earlier tap stays in the loss."""
    ck = load_checkpoint(resnet_pruned, role="pruned-teacher")
    assert [(p["teacher_tap"], p["kept"]) for p in ck.info["pruning"]["pairs"]] == [
        ("layer1", 8), ("layer2", 16), ("layer3", 32)]
    out = work / "warm_resnet.safetensors"
    # 2000 training images in batches of 32: enough steps for BN statistics, cheap for a resnet on a CPU
    summary = _ok("warmup", "-t", resnet_pruned, "-s", "resnet8-w0.5", "-o", out, "--val-fraction", "0.8",
                  "--batch-size", "32", "--flow-images", "500", "--cumulative", *FAST, *SEED)
    names = ["layer1", "layer2", "layer3"]
    init, final, curves = summary["initial_mse"], summary["final_mse"], summary["curves"]
    print("resnet8 cumulative curves", curves)
    assert list(final) == names and summary["cumulative"] is True
    _record_flow_copied(record, summary, names)
    rows = summary["epochs"]
    assert len(rows) == 3
    for l, row in enumerate(rows):
        mses = sorted(k for k in row if k.startswith("train_mse_"))
        assert mses == [f"train_mse_{n}" for n in names[: l + 1]], row
        assert row["train_loss"] == pytest.approx(sum(row[k] for k in mses), rel=1e-5)
    assert load_checkpoint(out).history[-1]["warmup"]["cumulative"] is True


def test_pipe_equals_files_and_later_layers_untouched(work, teacher, info):
    """`prune T --like S -o - | warmup -t - -s S -o -` with real pipes = the same run through files.

    With --epochs-per-tap 1,0,0 only block1 trains: every later tensor of the student checkpoint must
    come out bitwise equal to the student that went in.
    """
    student = _fresh_student(work / "fresh.safetensors", "cnn3-w0.5", info)
    tiny = ("--val-fraction", "0.9", "--epochs-per-tap", "1,0,0", "--flow-images", "200", "--seed", "3")
    env = _subprocess_env()
    cmd = [sys.executable, "-m", "indistill_cli"]
    p1 = subprocess.Popen([*cmd, "prune", teacher, "--like", "cnn3-w0.5", "-o", "-", "--val-fraction", "0.02", "-q"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p2 = subprocess.Popen([*cmd, "warmup", "-t", "-", "-s", student, "-o", "-", *tiny, "-q"],
                          stdin=p1.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p1.stdout.close()
    piped, err2 = p2.communicate(timeout=300)
    err1 = p1.stderr.read()
    p1.stderr.close()
    assert p1.wait(timeout=60) == 0, err1.decode()
    assert p2.returncode == 0, err2.decode()
    piped_file = work / "piped.safetensors"
    piped_file.write_bytes(piped)

    pruned_file, warm_file = work / "pruned_files.safetensors", work / "warm_files.safetensors"
    _ok("prune", teacher, "--like", "cnn3-w0.5", "-o", pruned_file, "--val-fraction", "0.02")
    _ok("warmup", "-t", pruned_file, "-s", student, "-o", warm_file, *tiny)

    a, b = load_checkpoint(piped_file, role="model"), load_checkpoint(warm_file, role="model")
    assert set(a.state) == set(b.state)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k
    assert a.history[-1]["warmup"]["final_mse"] == b.history[-1]["warmup"]["final_mse"]
    # only block1 moved
    before = load_checkpoint(student).state
    for k, v in b.state.items():
        if k.startswith("block1.") and not k.endswith("num_batches_tracked"):
            assert not torch.equal(v, before[k]), k
        elif not k.startswith("block1."):
            assert torch.equal(v, before[k]), k
    w = b.history[-1]["warmup"]
    assert [p["epochs"] for p in w["pairs"]] == [1, 0, 0] and len(w["final_mse"]) == 3


# ----------------------------------------------------------------------------- bad inputs

def test_teacher_pruned_for_another_width(work, pruned):
    _bad("warmup", "-t", pruned, "-s", "cnn3-w0.25", "-o", work / "x.safetensors", *VAL,
         needles=("keeps 8 channels", "block1", "has 4", "prune again with --like"))


def test_unpruned_teacher_of_other_widths_says_run_prune(work, teacher):
    _bad("warmup", "-t", teacher, "-s", "cnn3-w0.5", "-o", work / "x.safetensors", *VAL,
         needles=("16 channels", "indistill prune", "--like"))


@pytest.mark.parametrize("extra, needle", [
    (("--epochs-per-tap", "1,2"), "gives 2 values but there are 3 paired taps"),
    (("--epochs-per-tap", "1,-1,1"), "negative"),
    (("--a", "-4"), "negative"),
    (("--flow-images", "0"), "--flow-images"),
    (("--optimizer", "lion"), "--optimizer"),
])
def test_bad_warmup_options(work, pruned, extra, needle):
    _bad("warmup", "-t", pruned, "-s", "cnn3-w0.5", "-o", work / "x.safetensors", *VAL, *extra, needles=(needle,))


def test_bad_warmup_files(work, pruned):
    _bad("warmup", "-t", work / "missing.safetensors", "-s", "cnn3-w0.5", "-o", work / "x.safetensors")
    _bad("warmup", "-t", pruned, "-s", "cnn3-w0.5", "-o", pruned, needles=("exists", "--force"))
    _bad("warmup", "-t", pruned, "-s", "cnn4-w0.5", "-o", work / "x.safetensors", *VAL, needles=("cnn",))
