"""The skeleton every stage runs, so a new stage only says what is its own.

    check the parents' sha256 (--expect-sha256) -> check the output (never clobber without --force)
    -> check the options (before any data is loaded) -> take the resumable state (refuse a stale one)
    -> prepare (e.g. read a teacher) -> open the session and the trackers (--log)
    -> execute (build, train, summarise: a `Result`) -> write on rank 0 -> clear the state -> finish -> barrier

A stage is built from its settings (`stages.commands`), overrides the hooks it needs and returns what it
made as a `Result`; `run()` is the only entry point. The checkpoint a stage writes carries, in its history
entry, the command that made it (`StageSettings.record`), which `inspect --command` and `rerun` read.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from indistill_cli import progress
from indistill_cli.engine.resume import RunState
from indistill_cli.engine.runtime import barrier, compile_begin, compile_stats, describe_compile, reset_peak_memory
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import read_source
from indistill_cli.io.history import history_entry, write_model
from indistill_cli.io.trackers import Tracker, check_available, open_trackers
from indistill_cli.stages.options import TUNABLE
from indistill_cli.stages.session import Session, open_session
from indistill_cli.stages.settings import StageSettings


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


def verify_expected(items: list[str]) -> None:
    """--expect-sha256 PATH=SHA256: each file (or stdin, '-') must have the recorded sha256."""
    for item in items:
        path, sep, want = item.rpartition("=")
        if not sep or not path or len(want) != 64:
            raise BadInput(f"--expect-sha256 {item}: expected PATH=SHA256 (64 hex digits)")
        got = hashlib.sha256(read_source(path)).hexdigest()
        if got != want.lower():
            raise BadInput(f"{path}: sha256 {got[:16]}... is not the recorded {want[:16]}...: the checkpoint changed "
                           f"since the command was recorded")


@dataclass
class Result:
    """What a stage made: the summary (`--json`), and the checkpoint to write (`state` None: none).

    `entry` is the stage's history entry (without the command record, which `write` adds); `artifacts`
    the files written beside the checkpoint (plots), which the trackers keep."""

    summary: dict[str, Any]
    state: dict[str, Any] | None = None
    spec: Any = None  # the checkpoint's ModelSpec (None: no checkpoint)
    history: list[dict[str, Any]] = field(default_factory=list)  # the parent's, before this stage
    entry: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    role: str = "model"
    extras: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return dict(self.entry.get("metrics") or {})


class Stage:
    """One command's run, from its settings `s`. `out`: its output (None: it writes none); `opts`: the
    session's options; `tracker`: where the epochs go (a pipeline's child run), else opened from --log."""

    name: ClassVar[str]
    loads_data: bool = True  # False: the stage reads its own data (or none); the session has no dataset
    resumable: ClassVar[bool] = False  # an interrupted run can continue (--resume)
    compiles: bool = False  # True: it trains, so --compile applies and its graphs and breaks are reported

    def __init__(self, s: StageSettings, tracker: Tracker | None = None) -> None:
        self.s = s
        self.out: str | None = s.destination
        self.opts = s.run_options()
        self.force = s.force
        self.tracker = tracker
        self.state: RunState | None = None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ hooks
    def check(self) -> None:
        """Option checks that need no data: a typo must not cost a dataset load or a model build."""

    def key(self) -> dict[str, Any] | None:
        """What identifies this run for --resume (the options that shape it); None: not resumable."""
        return self.s.key() if self.resumable else None

    def prepare(self) -> None:
        """Work before the session opens (e.g. reading a checkpoint that decides the dataset)."""

    def execute(self, s: Session) -> Result:
        """Build, train, evaluate: what the stage made."""
        raise NotImplementedError

    def write(self, s: Session, r: Result) -> None:
        """Rank 0 only: write the checkpoint (its history entry records this command) and add its sha256 to
        the summary; `write_more` writes what else the stage makes."""
        if r.state is not None and self.out is not None:
            entry = {**r.entry, "command": self.s.record()}
            r.summary["sha256"] = write_model(self.out, r.state, r.spec, r.history + [entry], r.info, r.role, r.extras)
        self.write_more(s, r)

    def write_more(self, s: Session, r: Result) -> None:
        """Rank 0 only: outputs beside the checkpoint (plots, sidecars)."""

    def entry(self, s: Session, options: dict[str, Any], parents: list[dict[str, Any]], metrics: dict[str, Any],
              **extra: Any) -> dict[str, Any]:
        """This stage's history entry: its options (the settings', plus what the stage resolved), parents,
        metrics, wall time, device and versions."""
        opts = self.opts.as_dict() if self.opts is not None else {}  # as the session ran (e.g. prune's data)
        return history_entry(self.name, {**self.s.options(), **opts, **options}, parents, metrics, self.wall(),
                             s.ds.info.name if s.ds is not None else None, device=s.rt.describe(), **extra)

    def report(self, r: Result) -> None:
        """Rank 0 only, after the outputs are written and the state cleared: the closing line(s)."""

    def finish(self) -> None:
        """Every rank, after the writes: release what the run holds (hooks, DDP wrappers)."""

    # ------------------------------------------------------------------ skeleton
    def run(self) -> dict[str, Any]:
        verify_expected(self.s.expect_sha256)
        if self.out is not None:
            check_output(self.out, self.force)
        self.check()
        check_available(self.s.log)  # every rank: a missing tracker library stops all of them alike
        key = self.key()
        if key is not None:
            assert self.out is not None, "a resumable stage has an output"
            self.state = RunState(self.name, self.out, key, self.opts, force=self.force, tunable=TUNABLE)
            self.state.check()
        self.t0 = time.perf_counter()
        self.prepare()
        s = self.session = open_session(self.opts, self.loads_data)
        reset_peak_memory(s.rt.device)  # this stage's own peak (a pipeline runs several in one process)
        tracker = self.open_tracker(s)
        s.on_epoch = tracker.epoch if tracker is not None else None
        ok = False
        try:
            r = self.execute_compiled(s)
            if s.rt.is_main:
                self.write(s, r)
                if self.state is not None:
                    self.state.clear()  # the outputs are written: the resume state has done its job
                self.report(r)
                if tracker is not None:
                    tracker.final(r.metrics(), self.out, r.summary.get("sha256"), r.artifacts)
            ok = True
        finally:
            if tracker is not None and tracker is not self.tracker:  # a pipeline closes the runs it opened
                tracker.close(ok)
        self.finish()
        barrier(s.rt)  # no rank leaves (or starts the next pipeline stage) before rank 0 has written
        return r.summary

    def execute_compiled(self, s: Session) -> Result:
        """`execute`, with --compile's graphs and breaks counted and reported when the stage trains."""
        compiles = self.compiles and self.opts.compile
        if compiles:
            compile_begin()
        r = self.execute(s)
        if compiles:
            r.summary["compile"] = compile_stats()
            progress.info(describe_compile(r.summary["compile"]))
        return r

    def open_tracker(self, s: Session) -> Tracker | None:
        """The trackers (rank 0 only): the pipeline's child run, or the --log ones, named after the output."""
        if not s.rt.is_main:
            return None
        if self.tracker is not None:  # a pipeline's child run: this stage's options
            self.tracker.params(self.s.config(), self.name)
            return self.tracker
        if not self.s.log:
            return None
        out = self.out if self.out not in (None, "-") else None
        name = Path(out).name.removesuffix(".safetensors") if out else self.name
        log_dir = self.s.log_dir or str((Path(out).parent if out else Path(".")) / "logs")
        t = open_trackers(self.s.log, log_dir, name)
        t.params(self.s.config(), self.name)
        progress.info(f"logging to {', '.join(self.s.log)} in {log_dir}/")
        return t

    def bind_state(self, s: Session, **parents: Any) -> None:
        """Identify the run by its parent checkpoints too (known once loaded); only rank 0 writes states."""
        if self.state is not None:
            for name, value in parents.items():
                self.state.add_key(name, value)
            self.state.is_main = s.rt.is_main

    def wall(self) -> float:
        return time.perf_counter() - self.t0
