"""The skeleton every stage runs, so a new stage only says what is its own.

    check the output (never clobber without --force) -> check the options (before any data is loaded)
    -> take the resumable state (refuse a stale one) -> prepare (e.g. read a teacher) -> open the session
    -> execute (build, train, summarise) -> write on rank 0 -> clear the state -> finish -> barrier

A stage subclass overrides the hooks it needs; `run()` is the only entry point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from indistill_cli.engine.resume import RunState
from indistill_cli import progress
from indistill_cli.engine.runtime import barrier, compile_begin, compile_stats, describe_compile, reset_peak_memory
from indistill_cli.errors import BadInput
from indistill_cli.stages.options import TUNABLE, RunOptions
from indistill_cli.stages.session import Session, open_session


def check_output(dest: str, force: bool) -> None:
    """Refuse early (before any training) to clobber a checkpoint without --force."""
    if dest == "-":
        if sys.stdout.isatty():
            raise BadInput("-o - writes a binary checkpoint to stdout, which is a terminal: redirect it or give a file")
        return
    p = Path(dest)
    if p.is_dir():
        raise BadInput(f"-o {dest}: is a directory; give a file name such as {dest.rstrip('/')}/model.safetensors")
    if p.exists() and not force:
        raise BadInput(f"-o {dest}: exists; pass --force to overwrite it")
    if not p.parent.exists():
        raise BadInput(f"-o {dest}: folder {p.parent} does not exist")


class Stage:
    """One command's run. `out`: its output checkpoint (None: it writes none); `opts`: the shared options."""

    name: ClassVar[str]
    loads_data: bool = True  # False: the stage reads its own data (or none); the session has no dataset
    compiles: bool = False  # True: it trains, so --compile applies and its graphs and breaks are reported

    def __init__(self, out: str | None, opts: RunOptions, force: bool = False) -> None:
        self.out, self.opts, self.force = out, opts, force
        self.state: RunState | None = None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ hooks
    def check(self) -> None:
        """Option checks that need no data: a typo must not cost a dataset load or a model build."""

    def key(self) -> dict[str, Any] | None:
        """What identifies this run for --resume (options that shape it); None: not resumable."""
        return None

    def prepare(self) -> None:
        """Work before the session opens (e.g. reading a checkpoint that decides the dataset)."""

    def execute(self, s: Session) -> dict[str, Any]:
        """Build, train, evaluate: the summary (`--json`)."""
        raise NotImplementedError

    def write(self, s: Session, summary: dict[str, Any]) -> None:
        """Rank 0 only: write the outputs (and add their sha256 to the summary)."""

    def report(self, summary: dict[str, Any]) -> None:
        """Rank 0 only, after the outputs are written and the state cleared: the closing line(s)."""

    def finish(self) -> None:
        """Every rank, after the writes: release what the run holds (hooks, DDP wrappers)."""

    # ------------------------------------------------------------------ skeleton
    def run(self) -> dict[str, Any]:
        if self.out is not None:
            check_output(self.out, self.force)
        self.check()
        key = self.key()
        if key is not None:
            assert self.out is not None, "a resumable stage has an output"
            self.state = RunState(self.name, self.out, key, self.opts, force=self.force, tunable=TUNABLE)
            self.state.check()
        self.t0 = time.perf_counter()
        self.prepare()
        s = self.session = open_session(self.opts, self.loads_data)
        reset_peak_memory(s.rt.device)  # this stage's own peak (a pipeline runs several in one process)
        compiles = self.compiles and self.opts.compile
        if compiles:
            compile_begin()
        summary = self.execute(s)
        if compiles:
            summary["compile"] = compile_stats()
            progress.info(describe_compile(summary["compile"]))
        if s.rt.is_main:
            self.write(s, summary)
            if self.state is not None:
                self.state.clear()  # the outputs are written: the resume state has done its job
            self.report(summary)
        self.finish()
        barrier(s.rt)  # no rank leaves (or starts the next pipeline stage) before rank 0 has written
        return summary

    def bind_state(self, s: Session, **parents: Any) -> None:
        """Identify the run by its parent checkpoints too (known once loaded); only rank 0 writes states."""
        if self.state is not None:
            for name, value in parents.items():
                self.state.add_key(name, value)
            self.state.is_main = s.rt.is_main

    def wall(self) -> float:
        return time.perf_counter() - self.t0
