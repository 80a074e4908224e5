"""The diagnostics the GPU check switches on by the environment (engine/diagnostics.py), run on CPU:
`INDISTILL_INJECT_NONFINITE` poisons exactly the named global steps (a skipped one changes nothing: the run
equals one that never saw that batch), `INDISTILL_SYNC_CHECK` counts 0 host syncs in the engine's steps and
runs the guard deferred, as on a GPU; a bad value is one line and exit 2.
"""

from __future__ import annotations

import pytest
import torch
from stage_helpers import DATA, SEED, _bad, _ok
from test_guard_deferred import _same, _Without
from test_resume import _engine, _Loader, _model, _step

from indistill_cli.errors import RunFailure


@pytest.mark.parametrize("sync_check", ["0", "1"])
def test_injected_step_is_skipped_like_a_missing_batch(monkeypatch, sync_check):
    """Step 2 of 12 (epoch 0) poisoned; --skip-nonfinite 1 skips it: weights, BatchNorm buffers, optimiser
    state and epoch means equal a run without that batch, whether the guard checks every step or deferred."""
    monkeypatch.setenv("INDISTILL_SYNC_CHECK", sync_check)
    monkeypatch.setenv("INDISTILL_INJECT_NONFINITE", "2")
    m = _model()
    eng = _engine(skip=1)
    assert eng.check_every_step is (False if sync_check == "1" else None)
    res = eng.fit(m, m, _step(m, set(), "loss"), _Loader())
    assert res.bad_steps == 1 and res.figures()["skipped_nonfinite"] == 1
    monkeypatch.delenv("INDISTILL_INJECT_NONFINITE")
    clean = _model()
    ref = _engine(skip=0)
    ref.check_every_step = eng.check_every_step
    _same(res, ref.fit(clean, clean, _step(clean, set(), "loss"), _Without(2)))


def test_injection_counts_global_steps_and_past_the_tolerance_fails(monkeypatch):
    monkeypatch.setenv("INDISTILL_INJECT_NONFINITE", "7")  # epoch 1 (6 steps per epoch), its step 2
    m = _model()
    with pytest.raises(RunFailure, match=r"non-finite loss .* at epoch 2 step 2"):
        _engine(skip=0).fit(m, m, _step(m, set(), "loss"), _Loader())


def test_sync_check_reports_zero_syncs_in_the_steps_it_watched(monkeypatch):
    """6 steps per epoch, the last one logs: 5 watched steps in each of 2 epochs."""
    monkeypatch.setenv("INDISTILL_SYNC_CHECK", "1")
    m = _model()
    res = _engine().fit(m, m, _step(m, set(), "loss"), _Loader())
    assert res.figures()["sync_check"] == {"steps": 10, "syncs_per_step": 0.0, "ops": {}}
    monkeypatch.delenv("INDISTILL_SYNC_CHECK")
    assert "sync_check" not in _engine().fit(m, m, _step(m, set(), "loss"), _Loader()).figures()


def test_sync_check_sees_a_step_that_reads_back(monkeypatch):
    """The control: a step that calls .item() is counted, once per watched step."""
    monkeypatch.setenv("INDISTILL_SYNC_CHECK", "1")
    m = _model()
    plain = _step(m, set(), "loss")

    def step(batch, epoch):
        out = plain(batch, epoch)
        float(out["ce"].item())
        return out

    rep = _engine().fit(m, m, step, _Loader()).figures()["sync_check"]
    assert rep["steps"] == 10 and rep["syncs_per_step"] == 1.0 and sum(rep["ops"].values()) == 10


def test_cli_train_with_both_diagnostics(tmp_path, monkeypatch):
    """A real run: one injected step skipped and reported, no host sync in the watched steps, finite weights."""
    from safetensors.torch import load_file

    monkeypatch.setenv("INDISTILL_SYNC_CHECK", "1")
    monkeypatch.setenv("INDISTILL_INJECT_NONFINITE", "3")
    out = tmp_path / "m.safetensors"
    s = _ok("train", "cnn3-w0.5", "--data", DATA, "--val-fraction", "0.9", "--epochs", "1", "--batch-size", "64",
            "--skip-nonfinite", "1", "-o", out, *SEED)
    assert s["skipped_nonfinite"] == 1
    assert s["sync_check"]["syncs_per_step"] == 0.0 and s["sync_check"]["steps"] >= 10
    assert all(torch.isfinite(v).all() for v in load_file(str(out)).values() if v.is_floating_point())


def test_bad_injection_value_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_INJECT_NONFINITE", "3,x")
    _bad("train", "cnn3-w0.5", "-q", "--data", DATA, "--epochs", "1", "-o", tmp_path / "m.safetensors",
         needles=("INDISTILL_INJECT_NONFINITE",))
    assert not (tmp_path / "m.safetensors").exists()
