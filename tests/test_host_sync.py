"""No host synchronisation inside a training step in the deferred mode (the CUDA default), for CE
training, the warmup's step, the kept flow, and every registered KD method with its phases: each step
runs under `sync_detector.SyncDetector` on CPU (the same ops as on a GPU). The one exception allowed is
KD-SVD's eigendecomposition (`torch.linalg.eigh` reads its solver status back: the method needs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stage_helpers import _ok, _prune, _shared_file, teacher  # noqa: F401 - fixtures
from sync_detector import SyncDetector

from indistill_cli import losses

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2  # batches per epoch: enough to reach a second step (banks, momentum, estimated constants)
SPLIT = ("--val-fraction", "0.05", "-b", "32")
FAST = ("--epochs", "1", *SPLIT)
ALLOWED = {"kdsvd": {"_linalg_eigh"}}  # by nature: the method's top singular vectors
PARAMS = {"crd": ["crd.nce_k=64"], "ab": ["ab.init_epochs=1"], "fsp": ["fsp.init_epochs=1"],
          "ft": ["ft.init_epochs=1"]}


class _Head:
    """The first `n` batches of a loader (and everything else it offers)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i == self.n:
                return
            yield b

    def __getattr__(self, name):
        return getattr(self.loader, name)


@pytest.fixture
def steps(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every fit deferred (flags on the device, a fused optimiser) over STEPS batches an epoch, each step
    under the detector; collects (fit label, what would have synchronised)."""
    from indistill_cli.engine import loop

    seen: list[tuple[str, list[str]]] = []
    fit, step = loop.Engine.fit, loop._Run.step

    def deferred_fit(self, trainable, keep, step_fn, loader, *a, **kw):
        self.check_every_step = False
        return fit(self, trainable, keep, step_fn, _Head(loader, STEPS), *a, **kw)

    def watched_step(self, epoch, i, batch):
        with SyncDetector() as d:
            out = step(self, epoch, i, batch)
        seen.append((self.e.label, d.found))
        return out

    monkeypatch.setattr(loop.Engine, "fit", deferred_fit)
    monkeypatch.setattr(loop._Run, "step", watched_step)
    return seen


def _assert_no_sync(steps, allowed: set[str] = frozenset()) -> None:
    assert steps, "no training step ran"
    from collections import Counter

    bad = Counter(f"{label}: {f}" for label, found in steps for f in found if f not in allowed)
    assert not bad, dict(bad)


def test_detector_catches_what_synchronises():
    t = torch.randn(6)
    mask = t > 0
    for what, fn in {"float(t)": lambda: float(t.sum()), "t[mask]": lambda: t[mask], "bool(t)": lambda: bool(t.sum() > 0),
                     "t.item()": lambda: t.max().item(), "nonzero": lambda: mask.nonzero(),
                     "unique": lambda: torch.unique(t), "tolist": lambda: t.tolist(),
                     "t[mask] = 0": lambda: t.clone().__setitem__(mask, 0.0), "eigh": lambda: torch.linalg.eigh(torch.eye(3)),
                     "masked_select": lambda: t.masked_select(mask), "where(mask)": lambda: torch.where(mask)}.items():
        with SyncDetector() as d:
            fn()
        assert d.found, what
    for what, fn in {"sum": lambda: t.sum() * 2, "where": lambda: torch.where(mask, t, 0.0),
                     "gather": lambda: t[None].gather(1, torch.zeros(1, 2, dtype=torch.long)),
                     "index by long": lambda: t[torch.arange(3)], "to its device": lambda: t.to(t.device)}.items():
        with SyncDetector() as d:
            fn()
        assert not d.found, (what, d.found)


def test_ce_training_step_does_not_sync(steps, tmp_path):
    _ok("train", "cnn3-w0.5", "-o", tmp_path / "m.safetensors", *FAST)
    _assert_no_sync(steps)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, teacher) -> str:  # noqa: F811 - fixture
    return _shared_file(tmp_path_factory, "cnn3_pruned_w0.5", _prune(teacher, "cnn3-w0.5"))


def test_warmup_and_kept_flow_steps_do_not_sync(steps, pruned, teacher, tmp_path: Path):  # noqa: F811
    _ok("warmup", "-t", pruned, "-s", "cnn3-w0.5", "-o", tmp_path / "w.safetensors", *SPLIT, "--epochs-per-tap",
        "1,1,1", "--reset-optimizer-each-epoch")
    assert {label for label, _ in steps} and all("warmup" in label for label, _ in steps)
    _assert_no_sync(steps)
    steps.clear()
    _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", "kd", "--flow-teacher", pruned, "--keep-flow", "1",
        "-o", tmp_path / "k.safetensors", *FAST)
    _assert_no_sync(steps)


@pytest.mark.parametrize("method", losses.names() + ["ctkd"])
def test_every_method_step_does_not_sync(method, steps, teacher, tmp_path):  # noqa: F811 - fixture
    name, params = ("kd", ["kd.learnable_temperature=1"]) if method == "ctkd" else (method, PARAMS.get(method, []))
    _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", name, *[a for p in params for a in ("--param", p)],
        "-o", tmp_path / "s.safetensors", *FAST)
    _assert_no_sync(steps, ALLOWED.get(method, set()))
    if method in ALLOWED:  # the exception is real (and the only one)
        assert {f for _, found in steps for f in found} == ALLOWED[method]


def test_kept_channel_indices_move_to_the_teachers_device_once():
    """Copied from the host at every step they would make a CUDA step wait; a teacher on the meta device
    shows where FlowPair puts them (the step then uses them as they are)."""
    from indistill_cli.pruning.targets import FlowPair, Pair

    teacher = torch.nn.Conv2d(1, 4, 1).to("meta")
    flow = FlowPair(teacher, torch.nn.Conv2d(1, 2, 1), [Pair("a", "b", torch.tensor([0, 3])), Pair("c", "d", None)])
    assert flow.pairs[0].keep.device.type == "meta" and flow.pairs[1].keep is None


def test_crd_draws_where_its_banks_are_and_carries_that_generator():
    """On CPU the sampler is the CPU generator (its numbers as ever); elsewhere one made on that device,
    whose state a checkpoint carries (`device_rng_state`) and gives back before the first draw there."""
    crd = losses.get("crd")([(6,)], [(10,)], 5, 40, nce_k=8.0, feat_dim=4.0)
    assert crd.generator(torch.device("cpu")) is crd._gen
    assert set(crd.extra_state_tensors()) == {"rng_state"}
    carried = torch.arange(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes (seed, offset)
    other = losses.get("crd")([(6,)], [(10,)], 5, 40, nce_k=8.0, feat_dim=4.0)
    other.load_extra_state_tensors({**crd.extra_state_tensors(), "device_rng_state": carried})
    assert torch.equal(other.extra_state_tensors()["device_rng_state"], carried)
    with SyncDetector() as d:
        draw = crd.sample_negatives(torch.arange(4))
    assert draw.shape == (4, 8) and not d.found
    assert not (draw == torch.arange(4)[:, None]).any()  # never a row's own index
