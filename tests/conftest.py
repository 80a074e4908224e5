"""Shared fixtures: the CLI in a subprocess (real pipes) or in-process (fast), and one trained model.

`trained_cnn3` trains `cnn3-w0.5` for one epoch on the embedded Fashion-MNIST subset once per test
session (once per run under pytest-xdist: workers share it through a file lock) and is reused by
every test that needs real trained weights. Tests must treat its file as read-only: copy the bytes
before corrupting them.

Tests that assert on a quantity training produced (accuracy, mAP, a loss that must fall) carry the
`trained` marker and check it through the `record` fixture: one place that asserts, and that appends the
value to $INDISTILL_MARGINS_OUT (JSON lines) so `benchmarks/margins.py` can measure every threshold's
margin across CPU kernel variants and seeds. Their seeds (and those of the shared teachers they use) are
`suite_seed(base)`: `base` plus $INDISTILL_TEST_SEED (default 0: the recorded behaviour).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the hub from tests
if os.environ.get("PYTEST_XDIST_WORKER"):
    # share the cores between workers (and the CLI subprocesses they start) instead of oversubscribing;
    # set before torch is imported, so this process and its children use the same thread count
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
os.environ.pop("INDISTILL_QUIET", None)  # tests assert on what users see on stderr
os.environ.pop("INDISTILL_DATA", None)

ROOT = Path(__file__).resolve().parents[1]
CLI_TIMEOUT = 300


def suite_seed(base: int = 0) -> int:
    """The seed of a trained-quantity test: `base` offset by $INDISTILL_TEST_SEED (0 when unset), so the
    margins benchmark can rerun every such test, and the shared teachers they use, under other seeds."""
    return base + int(os.environ.get("INDISTILL_TEST_SEED", "0"))


# ----------------------------------------------------------------------------- trained quantities

_CHECKS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t, "<=": lambda v, t: v <= t}
_FAILED = pytest.StashKey[list]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that records a trained quantity is marked `trained` and every `trained` test records one,
    so `-m trained` (make test-isa, benchmarks/margins.py) selects exactly the tests with such thresholds."""
    bad = [it.nodeid for it in items
           if ("record" in getattr(it, "fixturenames", ())) != (it.get_closest_marker("trained") is not None)]
    if bad:
        raise pytest.UsageError("the `trained` marker and the `record` fixture go together: " + ", ".join(bad))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Fail a test whose recorded quantities missed their thresholds, after its body ran to the end (so
    every quantity of the test is recorded, not only those before the first miss)."""
    result = yield
    failed = item.stash.get(_FAILED, [])
    if failed:
        pytest.fail("trained quantities missed their thresholds:\n  " + "\n  ".join(failed), pytrace=False)
    return result


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., float]:
    """record(quantity, value, threshold, direction): check `value direction threshold` (one of > >= < <=)
    for a quantity training produced. The test fails when any check missed (after its body ends); with
    $INDISTILL_MARGINS_OUT set, each check appends one JSON line (test, quantity, value, threshold,
    direction, passed) to that file. Returns `value`."""
    failed = request.node.stash.setdefault(_FAILED, [])

    def check(quantity: str, value: float, threshold: float, direction: str) -> float:
        ok = _CHECKS[direction](float(value), float(threshold))
        out = os.environ.get("INDISTILL_MARGINS_OUT")
        if out:
            line = json.dumps({"test": request.node.nodeid, "quantity": quantity, "value": float(value),
                               "threshold": float(threshold), "direction": direction, "passed": ok,
                               "seed": suite_seed()})
            with open(out, "a", encoding="utf-8") as f:  # one short append per line: workers may share the file
                f.write(line + "\n")
        if not ok:
            failed.append(f"{quantity} = {float(value):.4f}, needs {direction} {float(threshold):.4f}")
        return value

    return check


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env.pop("INDISTILL_QUIET", None)
    env.update(extra)
    return env


def run_cli_subprocess(*args: str, input: bytes | None = None, cwd: str | Path | None = None,
                       env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> tuple[int, bytes, str]:
    """`python -m indistill_cli ARGS` with real pipes: (exit code, stdout bytes, stderr text)."""
    p = subprocess.run([sys.executable, "-m", "indistill_cli", *map(str, args)], input=input,
                       stdin=None if input is not None else subprocess.DEVNULL, capture_output=True,
                       cwd=cwd, env=cli_env(**(env or {})), timeout=timeout)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


@pytest.fixture
def run_cli():
    """Run the CLI in a subprocess: run_cli(*args, input=bytes|None, cwd=..., env={...})."""
    return run_cli_subprocess


def invoke(*args: object, input: bytes | None = None) -> Any:
    """The CLI in this process (typer's CliRunner result); module state (the stdin cache, --quiet) is reset
    before and after, so in-process runs leave nothing behind for the next one."""
    from typer.testing import CliRunner

    from indistill_cli import progress
    from indistill_cli.cli import app
    from indistill_cli.io import checkpoint

    checkpoint._STDIN_CACHE = None
    try:
        return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=True)
    finally:
        checkpoint._STDIN_CACHE = None
        progress.set_quiet(False)


@pytest.fixture
def cli():
    """Run the CLI in this process (typer's CliRunner): same (code, stdout bytes, stderr text) triple.

    Much faster than a subprocess (torch is already imported); use it for error matrices. Anything
    that must go through real stdin/stdout pipes uses `run_cli`.
    """
    def run(*args: str, input: bytes | None = None) -> tuple[int, bytes, str]:
        r = invoke(*args, input=input)
        stderr = r.stderr
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            import traceback

            stderr += "Traceback (in-process):\n" + "".join(traceback.format_exception(r.exception))
        return r.exit_code, r.stdout_bytes, stderr

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's in-process work: on a shared 2-core machine two OpenMP threads
    are many times slower than one. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def image_tree(root: Path, per_class: int | tuple[int, int] = 6, val_per_class: int = 2) -> Path:
    """ROOT/train/{cat,dog}/*.png and ROOT/val/...: small RGB images, dark cats and bright dogs.
    `per_class`: training images of each class (one count, or one per class)."""
    import numpy as np
    from PIL import Image

    counts = (per_class, per_class) if isinstance(per_class, int) else per_class
    rng = np.random.default_rng(0)
    for split, ns in (("train", counts), ("val", (val_per_class, val_per_class))):
        for (cls, base), n in zip((("cat", 40), ("dog", 200)), ns):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(base + rng.integers(-30, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def assert_one_line_error(code: int, stderr: str, *needles: str, exit_code: int = 2) -> str:
    """Exit code as expected, stderr exactly one 'error:' line containing every needle, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == exit_code, (code, stderr)
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, (n, line)
    return line


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint trained once per session. `path` is read-only for tests; `summary` is train's --json."""

    path: Path
    summary: dict[str, Any]
    stderr: str

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


TRAIN_ARGS = ("train", "cnn3-w0.5", "--data", "fashion-mnist-mini", "--epochs", "1", "--seed", str(suite_seed()),
              "--json")


def _train_once(folder: Path) -> TrainedModel:
    out = folder / "cnn3-w0.5.safetensors"
    summary_file, err_file = folder / "summary.json", folder / "stderr.txt"
    if not summary_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        code, stdout, stderr = run_cli_subprocess(*TRAIN_ARGS, "-o", out)
        assert code == 0, stderr
        err_file.write_text(stderr)
        summary_file.write_bytes(stdout)  # written last: its presence means the run finished
    return TrainedModel(out, json.loads(summary_file.read_bytes()), err_file.read_text())


@pytest.fixture(scope="session")
def trained_cnn3(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """cnn3-w0.5 trained 1 epoch on fashion-mnist-mini (seed `suite_seed()`) through the CLI, with its JSON summary."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from filelock import FileLock

        shared = tmp_path_factory.getbasetemp().parent  # common to all workers of this run
        with FileLock(str(shared / "trained_cnn3.lock")):
            return _train_once(shared / "trained_cnn3")
    return _train_once(tmp_path_factory.mktemp("trained_cnn3"))
