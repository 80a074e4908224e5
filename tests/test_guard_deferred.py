"""The non-finite guard's deferred mode (the CUDA default), exercised on CPU: the step's verdict stays on
the device, the fused optimiser skips the update through `found_inf`, buffers are put back with
`torch.where` and the epoch's sums are masked, so a skipped batch changes nothing: weights, optimiser
state (SGD momentum, Adam moments and step count), BatchNorm statistics and the logged means equal those
of a run that never saw the batch. Past the tolerance the run fails and its newest saved state is good.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_resume import _Loader, _model, _step

from indistill_cli.errors import RunFailure


class _Without(_Loader):
    """The same batches with one left out of the first epoch."""

    def __init__(self, drop: int) -> None:
        super().__init__()
        self.drop, self.epoch = drop, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([b for i, b in enumerate(self.batches) if not (self.epoch == 0 and i == self.drop)])


def _deferred(optimizer: str, skip: int, log_every: int = 4, state=None):
    """The engine as on a GPU: flags on the device, read when logging (constant lr: positions don't matter)."""
    from indistill_cli.engine.loop import Engine
    from indistill_cli.engine.runtime import Runtime
    from indistill_cli.engine.schedule import OptimConfig

    lr = 0.1 if optimizer == "sgd" else 0.01
    eng = Engine(Runtime(torch.device("cpu"), "fp32", False), OptimConfig(optimizer=optimizer, lr=lr, schedule="none"),
                 2, log_every=log_every, skip_nonfinite=skip, label="unit", state=state)
    eng.check_every_step = False
    return eng


def _same(a, b) -> None:
    assert a.best_state.keys() == b.best_state.keys()
    for k in a.best_state:  # weights and BatchNorm buffers (running stats, num_batches_tracked)
        assert torch.equal(a.best_state[k], b.best_state[k]), k
    assert a.optimizer_state.keys() == b.optimizer_state.keys() and a.optimizer_state
    for name, st in a.optimizer_state.items():
        assert st.keys() == b.optimizer_state[name].keys(), name
        for k in st:
            assert torch.equal(st[k], b.optimizer_state[name][k]), (name, k)
    for ra, rb in zip(a.history, b.history, strict=True):  # the epoch means leave the skipped batch out
        assert {k: v for k, v in ra.items() if k.startswith("train_")} == \
               {k: v for k, v in rb.items() if k.startswith("train_")}


@pytest.mark.parametrize("optimizer, kind, at", [("sgd", "loss", 0), ("sgd", "grad", 2), ("adam", "loss", 3),
                                                 ("adam", "grad", 0), ("adamw", "loss", 5)])
def test_deferred_skip_changes_nothing(optimizer, kind, at):
    m = _model()
    res = _deferred(optimizer, skip=1).fit(m, m, _step(m, {at}, kind), _Loader())
    assert res.bad_steps == 1
    assert all(torch.isfinite(v).all() for v in res.best_state.values() if v.is_floating_point())
    clean = _model()
    ref = _deferred(optimizer, skip=0).fit(clean, clean, _step(clean, set(), "loss"), _Without(at))
    assert ref.bad_steps == 0
    _same(res, ref)
    if optimizer != "sgd":  # the step count skipped the bad batch too: 11 steps in 2 epochs of 6
        assert {float(st["step"]) for st in res.optimizer_state.values()} == {11.0}


def test_deferred_past_the_tolerance_fails_leaving_a_good_state(tmp_path):
    """Batch 2 goes bad (tolerated), a state is saved at steps 2 and 4, batch 5 goes bad (one too many):
    the run fails naming the state at step 4, which holds no NaN; resumed with the cause gone, the run
    ends where a run that never saw batch 2 ends."""
    from indistill_cli.engine.resume import RunState

    def state(resume: bool) -> RunState:
        opts = SimpleNamespace(resume=resume, save_every=1e-9, state_dir=None)  # a save at every log
        return RunState("unit", str(tmp_path / "u.safetensors"), {"stage": "unit"}, opts)

    m = _model()
    with pytest.raises(RunFailure, match=r"non-finite loss or gradient in 1 of the steps up to here .*at epoch 1 "
                                         r"step 6.*last good state is in"):
        _deferred("sgd", skip=1, log_every=2, state=state(False)).fit(m, m, _step(m, {1, 4}, "loss"), _Loader())
    saved = torch.load(next((tmp_path / "u.resume").glob("state-*.pt")), weights_only=True)
    from safetensors.torch import load_file

    good = load_file(str(next((tmp_path / "u.resume").glob("state-*.safetensors"))))
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for st in saved["optimizer"]["state"].values() for v in st.values())
    m2 = _model()
    eng = _deferred("sgd", skip=1, log_every=2, state=state(True))
    res = eng.fit(m2, m2, _step(m2, set(), "loss"), _Loader())
    assert eng.state.resumed_from == (0, 4) and res.bad_steps == 1
    clean = _model()
    _same(res, _deferred("sgd", skip=0, log_every=2).fit(clean, clean, _step(clean, set(), "loss"), _Without(1)))


def test_fp16_grad_scaler_deferred_skips_without_a_sync():
    """fp16 (GradScaler; fp16 autocast runs on CPU too): with the deferred guard's fused optimiser the scaler
    hands `found_inf` to the kernel instead of reading it with `.item()` every step (which it does for a
    for-each optimiser: the detector sees that), and the bad batch changes nothing."""
    from sync_detector import SyncDetector

    from indistill_cli.engine import loop
    from indistill_cli.engine.runtime import Runtime

    found: dict[bool, list[str]] = {}
    step = loop._Run.step

    def watched(self, epoch, i, batch):
        with SyncDetector() as d:
            out = step(self, epoch, i, batch)
        found.setdefault(self.guard.every_step, []).extend(d.found)
        return out

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop._Run, "step", watched)
        for every_step in (False, True):
            m = _model()
            eng = _deferred("sgd", skip=1)
            eng.rt = Runtime(torch.device("cpu"), "fp16", False)
            eng.check_every_step = every_step
            results[every_step] = eng.fit(m, m, _step(m, {2}, "loss"), _Loader())
    assert found[False] == [], found[False]
    assert "_local_scalar_dense" in found[True]  # GradScaler.step's .item() with a for-each optimiser
    res = results[False]
    assert res.bad_steps == 1
    assert all(torch.isfinite(v).all() for v in res.best_state.values() if v.is_floating_point())
    clean = _model()
    eng = _deferred("sgd", skip=0)
    eng.rt = Runtime(torch.device("cpu"), "fp16", False)
    _same(res, eng.fit(clean, clean, _step(clean, set(), "loss"), _Without(2)))
