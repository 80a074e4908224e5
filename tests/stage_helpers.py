"""Helpers shared by the stage tests (prune, warmup, distill, retrieve, fair comparison): in-process CLI
calls, one-line error checks, and artefacts (a trained cnn3 teacher, quick teachers) built once per run and shared
by every xdist worker through a file lock.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import invoke, suite_seed

from indistill_cli.io.history import write_model
from indistill_cli.models import create_model

DATA = "fashion-mnist-mini"
SEED = ("--seed", str(suite_seed()))  # the CLI's seed in trained-quantity tests ($INDISTILL_TEST_SEED, default 0)


_cli = invoke  # the CLI in this process (conftest)


def _ok(*args: object) -> dict:
    res = _cli(*args, "--json", "-q")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _bad(*args: object, needles: tuple[str, ...] = ()) -> str:
    """A command that must fail as bad input: exit 2, exactly one 'error:' line on stderr, no traceback."""
    res = _cli(*args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _shared_file(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> str:
    """Build an artefact once per test run (all xdist workers, all three test files share it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # common to all workers of this run
    folder = base / "indistill_shared"
    folder.mkdir(exist_ok=True)
    out = folder / f"{name}.safetensors"
    with FileLock(str(folder / f"{name}.lock")):
        if not out.exists():
            build(str(out))  # checkpoints are written atomically: existence means complete
    return str(out)


def _quiet_call(fn, *a, **kw):
    from indistill_cli import progress

    progress.set_quiet(True)
    try:
        return fn(*a, **kw)
    finally:
        progress.set_quiet(False)


def build_cnn3_teacher(out: str) -> None:
    """cnn3 trained one epoch on fashion-mnist-mini (val 0.05, seed `suite_seed()`): val top-1 ~0.75."""
    from indistill_cli.stages.commands import TrainSettings
    from indistill_cli.stages.options import RunOptions
    from indistill_cli.stages.train import run_train

    _quiet_call(run_train, TrainSettings(model="cnn3", output=out, epochs=1, last=False,
                                         opts=RunOptions(data=DATA, val_fraction=0.05, seed=suite_seed())))


def build_quick_teacher(name: str, steps: int):
    """A teacher trained for `steps` Adam batches of 64 (cheap for models slow on a CPU)."""
    def build(out: str) -> None:
        import torch.nn.functional as F

        from indistill_cli.stages.options import RunOptions
        from indistill_cli.stages.session import open_session

        s = open_session(RunOptions(data=DATA, val_fraction=0.05, batch_size=64, seed=suite_seed()))
        info = s.ds.info
        spec, model = create_model(name, info.shape)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        model.train()
        for i, b in enumerate(s.train_loader(spec)):
            loss = F.cross_entropy(model(b.x), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i + 1 == steps:
                break
        write_model(out, {k: v.detach() for k, v in model.state_dict().items()}, spec, [],
                    {"dataset": info.as_dict()})

    return build


def _prune(teacher: str, like: str):
    def build(out: str) -> None:
        _ok("prune", teacher, "--like", like, "-o", out, "--val-fraction", "0.02")

    return build


@pytest.fixture(scope="module")
def info():
    from indistill_cli.data import load_dataset

    return load_dataset(DATA).info


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return _shared_file(tmp_path_factory, "cnn3_teacher", build_cnn3_teacher)
