"""The numerics a GPU run relies on, exercised on CPU.

* `--deterministic`: our pooling has a deterministic backward (`models.pooling`: exact avg_pool2d or
  averaging matmuls instead of ATen's adaptive_avg_pool2d, whose CUDA backward has no deterministic
  kernel), and each training command probes its step for such ops before training (`engine.determinism`:
  on CUDA only; here its logic is called directly, or switched on by patching `needs_check`).
* `--precision bf16` (CPU autocast stands in for CUDA's): the KD terms, the methods' phase losses and every
  reported metric run in fp32 while the student's forward runs in bf16, read from a TorchDispatchMode that
  records each aten op's output dtypes and where in our code it was called.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from indistill_cli.engine import determinism
from indistill_cli.engine.determinism import first_nondeterministic, probe_backward
from indistill_cli.engine.runtime import Runtime
from indistill_cli.errors import BadInput
from indistill_cli.models import make_spec
from indistill_cli.models.pooling import adaptive_avg_pool2d
from indistill_cli.models.taps import match_spatial

from stage_helpers import (  # noqa: F401 - fixtures
    DATA, _bad, _cli, _ok, _shared_file, build_quick_teacher, teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PKG = str(Path(determinism.__file__).resolve().parents[1]) + os.sep


class OpTrace(TorchDispatchMode):
    """Every aten op run under it: (overload packet name, where, floating output dtypes, first output's shape).

    `where`: "eval:FILE" inside metrics/accuracy.py or stages/retrieve.py (evaluation), else "loss:FILE:FUNC"
    for the outermost frame in losses/ (a KD term or a method's phase loss), else "step:FILE" (inside the
    engine's training step) or "model:FILE" (elsewhere) for the innermost frame of our package (e.g. a
    model's forward), else "other"."""

    def __init__(self, where: bool = False) -> None:
        super().__init__()
        self.ops: list[tuple[str, str, tuple[torch.dtype, ...], tuple[int, ...]]] = []
        self.where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        ts = [o for o in outs if isinstance(o, torch.Tensor)]
        dtypes = tuple(t.dtype for t in ts if t.is_floating_point())
        self.ops.append((func.overloadpacket.__name__, _where() if self.where else "", dtypes,
                         tuple(ts[0].shape) if ts else ()))
        return out

    @property
    def names(self) -> set[str]:
        return {o[0] for o in self.ops}


def _where() -> str:
    f, inner, loss, ev, step = sys._getframe(2), None, None, None, False
    while f is not None:
        path = f.f_code.co_filename
        if path.startswith(PKG):
            rel = path[len(PKG):].replace(os.sep, "/")
            inner = inner or rel
            if rel in ("metrics/accuracy.py", "stages/retrieve.py"):
                ev = rel
            if rel.startswith("losses/"):
                loss = f"{rel}:{f.f_code.co_name}"
            step = step or (rel == "engine/loop.py" and f.f_code.co_name == "step")
        f = f.f_back
    if ev or loss:
        return f"eval:{ev}" if ev else f"loss:{loss}"
    return f"{'step' if step else 'model'}:{inner}" if inner else "other"


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for the test, the process's setting restored after."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


# ----------------------------------------------------------------------------- pooling

POOL_SIZES = [((32, 32), (15, 15)), ((16, 16), (6, 6)), ((8, 8), (2, 2)), ((7, 5), (4, 2)), ((3, 3), (5, 7)),
              ((12, 8), (4, 8))]


@pytest.mark.parametrize("size_in, size_out", POOL_SIZES)
def test_deterministic_pooling_equals_adaptive_avg_pool2d(size_in, size_out, deterministic):
    """Under deterministic algorithms: the same values and gradients as ATen's adaptive_avg_pool2d (float64,
    to rounding), and its backward never runs: avg_pool2d where the sizes divide, matmuls where they do not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(2, 3, *size_out, dtype=torch.float64, generator=g)
    torch.use_deterministic_algorithms(False)
    ref = F.adaptive_avg_pool2d(x, size_out)
    (g_ref,) = torch.autograd.grad(ref, x, up)
    torch.use_deterministic_algorithms(True)
    with OpTrace() as trace:
        out = adaptive_avg_pool2d(x, size_out)
        (g_out,) = torch.autograd.grad(out, x, up)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-14)
    assert not trace.names & {"_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward"}, trace.names
    divisible = all(i % o == 0 for i, o in zip(size_in, size_out))
    assert ("avg_pool2d_backward" in trace.names) == divisible and ("mm" in trace.names or "bmm" in trace.names
                                                                      or divisible), trace.names


def test_pooling_is_atens_op_by_default():
    """Without the flag nothing changes: ATen's op, bitwise (the default CPU numerics are recorded)."""
    assert not torch.are_deterministic_algorithms_enabled()
    x = torch.randn(4, 8, 15, 15)
    with OpTrace() as trace:
        out = adaptive_avg_pool2d(x, (6, 6))
    assert torch.equal(out, F.adaptive_avg_pool2d(x, (6, 6))) and "_adaptive_avg_pool2d" in trace.names
    a, b = match_spatial(torch.randn(2, 4, 32, 32), x[:2, :4])
    assert a.shape == b.shape == (2, 4, 15, 15)


# ----------------------------------------------------------------------------- the detector

def _flagged(model: nn.Module, x: torch.Tensor) -> str | None:
    return first_nondeterministic(lambda: probe_backward(model, lambda: model(x).sum()))


def test_detector_flags_adaptive_pooling_and_leaves_the_model_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, 12)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(36, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    assert _flagged(m, x) == "adaptive_avg_pool2d backward (AdaptiveAvgPool2d or F.adaptive_avg_pool2d to a size other than 1x1)"
    assert m.training and all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # BN statistics too
    assert torch.equal(torch.get_rng_state(), rng)
    # global average pooling is ATen's mean (deterministic): our native families pass
    assert _flagged(nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), x) is None
    for arch in ("cnn3-w0.5", "resnet8", "wrn_16_1", "vgg8", "preact_resnet18"):
        _, model = make_spec(arch, 1, 10, (32, 32))
        assert _flagged(model, torch.zeros(2, 1, 32, 32)) is None, arch


@pytest.mark.parametrize("fn, expect", [
    (lambda x: torch.bincount(x.long().abs().flatten()), None),
    (lambda x: torch.bincount(x.long().abs().flatten(), weights=x.flatten()), "bincount with weights"),
    (lambda x: torch.median(x), None),
    (lambda x: torch.median(x, 0).values.sum(), "median with indices"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="nearest").sum(), None),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear").sum(), "upsample_bilinear2d backward"),
    (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect").sum(), "reflection_pad2d backward"),
    (lambda x: F.cross_entropy(x[:, :, 0, 0], torch.zeros(2, dtype=torch.long)), None),
    (lambda x: F.cross_entropy(x, torch.zeros(2, 3, 3, dtype=torch.long)), "nll_loss2d"),
])
def test_detector_table_conditions(fn, expect):
    """Ops that alert only in some calls are flagged only then (the others' kernels are deterministic)."""
    x = torch.randn(2, 3, 3, 3, requires_grad=True)

    def run() -> None:
        out = fn(x)
        if out.requires_grad:
            out.backward()

    got = first_nondeterministic(run)
    assert (got is None) if expect is None else (got or "").startswith(expect), got


def test_check_kernels_is_one_line_on_cuda_only(deterministic):
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    x = torch.zeros(2, 1, 8, 8)
    cuda = Runtime(torch.device("cuda"), "fp32", False)  # only its device type is read
    with pytest.raises(BadInput) as e:
        determinism.check_kernels(cuda, m, lambda: m(x).sum(), "train toy")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--deterministic: train toy runs adaptive_avg_pool2d backward")
    determinism.check_kernels(Runtime(torch.device("cpu"), "fp32", False), m, lambda: m(x).sum(), "cpu")
    torch.use_deterministic_algorithms(False)
    determinism.check_kernels(cuda, m, lambda: m(x).sum(), "not deterministic")


@pytest.fixture
def keep_deterministic_flag():
    was = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("command", ["train", "warmup", "distill"])
def test_each_training_command_probes_before_training(command, monkeypatch, trained_cnn3, tmp_path,
                                                      keep_deterministic_flag):
    """With the check switched on (as on CUDA) and a stand-in entry for an op the cnn3 family uses, each
    command stops before its first step with one line naming the op and --deterministic, writing nothing."""
    monkeypatch.setattr(determinism, "needs_check", lambda rt: True)
    monkeypatch.setitem(determinism.NONDETERMINISTIC_CUDA, "max_pool2d_with_indices_backward", "stand-in op")
    out = tmp_path / "o.safetensors"
    t = str(trained_cnn3.path)
    args = {"train": ("train", "cnn3-w0.5", "--epochs", "1"),
            "warmup": ("warmup", "-t", t, "-s", "cnn3-w0.5", "--epochs-per-tap", "1,1,1"),
            "distill": ("distill", "-t", t, "-s", "cnn3-w0.5", "-m", "kd", "--epochs", "1")}[command]
    what = {"train": "train cnn3-w0.5", "warmup": "warmup cnn3-w0.5", "distill": "distill (the KD step)"}[command]
    _bad(*args, "--data", DATA, "--deterministic", "-o", out, "-q", needles=(f"--deterministic: {what} runs stand-in op",))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_deterministic_distill_step_never_runs_adaptive_pool_backward(tmp_path_factory, tmp_path, monkeypatch,
                                                                      keep_deterministic_flag):
    """resnet8 -> cnn3-w0.5 (maps 32/16/8 vs 15/6/2: pooled, mostly by sizes that do not divide) with at,
    reviewkd and fitnet under --deterministic: the probe finds nothing, and a dispatch trace of the whole
    run (probe, phases, steps, validation) holds no adaptive_avg_pool2d backward."""
    r8 = _shared_file(tmp_path_factory, "resnet8_quick", build_quick_teacher("resnet8", 20))
    found: list[str | None] = []
    probe = determinism.first_nondeterministic
    monkeypatch.setattr(determinism, "needs_check", lambda rt: True)
    monkeypatch.setattr(determinism, "first_nondeterministic", lambda run: found.append(probe(run)) or found[-1])
    with OpTrace() as trace:
        summary = _ok("distill", "-t", r8, "-s", "cnn3-w0.5", "-o", tmp_path / "s.safetensors", "-m", "at", "-m",
                      "reviewkd", "-m", "fitnet", "--epochs", "1", "--val-fraction", "0.9", "--batch-size", "64",
                      "--deterministic")
    assert found == [None]  # the KD step was probed (no method here has a phase) and passed
    assert "_adaptive_avg_pool2d_backward" not in trace.names
    assert "avg_pool2d_backward" in trace.names  # 8->2 (and reviewkd's 4 and 2); 32->15 and 16->6 by matmuls
    assert summary["epochs"][0]["train_loss"] == summary["epochs"][0]["train_loss"]  # finite, not NaN


# ----------------------------------------------------------------------------- bf16 on CPU

BF16 = ("--precision", "bf16", "--device", "cpu")


CONV = ("convolution", "conv2d")  # conv2d: what the dispatch mode sees under inference_mode


def _dtypes(trace: OpTrace, where: str, ops: tuple[str, ...] = ()) -> set[torch.dtype]:
    return {d for name, w, ds, _ in trace.ops if w.startswith(where) and (not ops or name in ops) for d in ds}


FP = {torch.float32, torch.float64}  # float64: kd-svd's eigh, the evaluation's loss sum


def test_bf16_kd_terms_phase_losses_and_metrics_run_in_fp32(teacher, tmp_path):
    """One distill run with kd, dkd, crd, pkt, fitnet and the phase methods ab and ft under --precision bf16
    (CPU autocast, as CUDA's would): every op of the KD terms, the phase losses and the validation is fp32,
    while the student's forward runs in bf16; then `retrieve` embeds in fp32 too."""
    out = tmp_path / "s.safetensors"
    methods = [a for m in ("kd", "dkd", "crd", "pkt", "fitnet", "ab", "ft") for a in ("-m", m)]
    with OpTrace(where=True) as trace:
        _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-o", out, *methods, "--param", "ab.init_epochs=1",
            "--param", "ft.init_epochs=1", "--param", "crd.nce_k=64", "--epochs", "1", "--val-fraction", "0.9",
            "--batch-size", "64", *BF16)
    where = {w for _, w, _, _ in trace.ops}
    for term in ("kd.py:forward", "dkd.py:forward", "crd.py:forward", "pkt.py:forward", "fitnet.py:forward",
                 "ft.py:forward", "ab.py:boundaries", "ft.py:reconstruction"):  # the last two: the phases
        assert f"loss:losses/{term}" in where, (term, sorted(where))
    assert _dtypes(trace, "loss:") <= FP
    assert _dtypes(trace, "eval:metrics/accuracy.py") <= FP
    assert _dtypes(trace, "eval:metrics/accuracy.py", CONV) == {torch.float32}
    # in the training steps the student's convolutions (8 channels in cnn3-w0.5's first block; the teacher's
    # has 16) ran in bf16
    convs = {ds for name, w, ds, shape in trace.ops if name in CONV and w.startswith("step:models/")
             and shape[1:2] == (8,)}
    assert convs == {(torch.bfloat16,)}, convs
    with OpTrace(where=True) as trace:
        _ok("retrieve", out, "--data", DATA, "--database", "val", "--queries", "test", "--val-fraction", "0.5", *BF16)
    assert _dtypes(trace, "eval:stages/retrieve.py") <= FP
    assert _dtypes(trace, "eval:stages/retrieve.py", CONV) == {torch.float32}


def test_metrics_under_bf16_equal_fp32(trained_cnn3):
    """The same checkpoint gives the same evaluate and retrieve figures whatever --precision says (it only
    sets the training numerics)."""
    m = str(trained_cnn3.path)
    ev = [_ok("evaluate", m, "--data", DATA, "--precision", p, "--device", "cpu") for p in ("fp32", "bf16")]
    assert ev[0]["top1"] == ev[1]["top1"] and ev[0]["loss"] == ev[1]["loss"], (ev[0], ev[1])
    rt = [_ok("retrieve", m, "--data", DATA, "--database", "val", "--queries", "test", "--val-fraction", "0.5",
              "--precision", p, "--device", "cpu") for p in ("fp32", "bf16")]
    assert rt[0]["metrics"] == rt[1]["metrics"]
