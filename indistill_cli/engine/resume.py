"""Resumable training state: what an interrupted `train`/`warmup`/`distill`/`prune --finetune` needs
to continue and reach the same tensors as a run that was never stopped.

Where it lives: a folder beside the output, `OUT.resume/` (`m.safetensors` -> `m.resume/`), or
`--state-dir DIR` (required to resume when `-o -` streams the checkpoint to stdout). It holds one
*generation* of state as two files written atomically (temp + fsync + rename):

- `state-NNNNNNNN.safetensors`: tensors only, no pickle: the trainable module's state dict
  (`trainable/...`: the model, plus for distill the KD methods' regressors and CRD memory banks),
  extra loss state (`extra/...`, e.g. CRD's negative-sampling generator) and the best-so-far model
  (`best/...`);
- `state-NNNNNNNN.pt`: the sidecar, loadable with `torch.load(weights_only=True)`: optimiser and
  grad-scaler state, RNG states (torch CPU/CUDA, Python), the position (epoch, steps done in that
  epoch), the partial epoch sums, history rows, best-so-far bookkeeping and stage extras (warmup's
  flow curves), plus the sha256 of its safetensors twin so a pair is only used when complete.

A new generation is complete once its sidecar exists; older generations are deleted after that, so
a SIGKILL at any moment leaves at least one complete generation. The data order is a function of
(seed, epoch) and the loaders skip the batches already done while drawing the same augmentation
random numbers, so a resumed CPU run is bitwise identical to an uninterrupted one.

On success the stage removes the folder. Written when: SIGINT/SIGTERM (after the current step; exit
130/143), every `--save-every` minutes (default 10 when there is a place to write; 0 = off), and on
divergence (the last good state, so a rerun with `--resume` and a lower `--lr` continues from there).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.errors import BadInput, Interrupted, RunFailure
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.paths import sibling

STATE_FORMAT = "indistill-state/1"
DEFAULT_SAVE_EVERY_MIN = 10.0


def state_dir_for(out: str, state_dir: str | None) -> Path | None:
    """`--state-dir`, else `OUT.resume/` beside the output; None for `-o -` without --state-dir."""
    if state_dir:
        return Path(state_dir)
    if out == "-":
        return None
    return Path(sibling(out, ".resume"))


def _strip(obj: Any, tunable: frozenset[str]) -> Any:
    """The run key without the tunable options (nested dicts included)."""
    if isinstance(obj, dict):
        return {k: _strip(v, tunable) for k, v in obj.items() if k not in tunable}
    if isinstance(obj, (list, tuple)):
        return [_strip(v, tunable) for v in obj]
    return obj


def _canon(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "key"]


class RunState:
    """The resumable state of one training stage (one per output).

    `tunable`: the option names that may change between the interrupted run and its resume (a rescue
    after divergence lowers --lr; a move to another machine changes --device); they do not define the
    trajectory's shape. The stages pass the set their option declarations mark (`optionspec.tunable`)."""

    def __init__(self, stage: str, out: str, key: dict[str, Any], opts: Any, is_main: bool = True,
                 force: bool = False, tunable: frozenset[str] = frozenset()) -> None:
        self.stage, self.out, self.tunable = stage, out, tunable
        self.key = _canon(key)
        self.dir = state_dir_for(out, getattr(opts, "state_dir", None))
        self.resume = bool(getattr(opts, "resume", False))
        self.force = force
        self.is_main = is_main
        every = getattr(opts, "save_every", None)
        self.every_min = every
        minutes = DEFAULT_SAVE_EVERY_MIN if every is None else every
        ok = isinstance(minutes, (int, float)) and minutes == minutes and minutes > 0
        self.every_s = float(minutes) * 60.0 if (ok and self.dir is not None) else None
        self.hooks: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = []
        self.last_save = time.monotonic()
        self.gen = 0
        self.stop_signal: int | None = None
        self.resumed_from: tuple[int, int] | None = None
        self._discard = False

    # ------------------------------------------------------------------ checks (before any work)
    def check(self) -> None:
        """Refuse impossible combinations early, and never silently replace an interrupted run's state."""
        import math

        every = self.every_min
        if every is not None and not (isinstance(every, (int, float)) and math.isfinite(every) and every >= 0):
            raise BadInput(f"--save-every must be a number of minutes >= 0 (0 = off), got {every}")
        if self.dir is None:
            if self.resume:
                raise BadInput("--resume needs to know where the state is: with -o - pass --state-dir DIR "
                               "(the one the interrupted run used)")
            if every:
                raise BadInput("--save-every needs somewhere to write the state: with -o - pass --state-dir DIR")
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise BadInput(f"state folder {self.dir}: exists and is not a folder (move it, or pass --state-dir)")
        if self.exists() and not self.resume:
            if not self.force:
                raise BadInput(f"{self.dir} holds the state of an interrupted run: add --resume to continue it, "
                               f"or --force to discard it and start over")
            self._discard = True
        elif self.exists() and not self.force:  # a wrong state must not wait for a dataset to say so
            saved = self._peek_key()
            known = {k: v for k, v in self._strip(saved).items() if k in self.key}
            if known != self._strip(self.key):
                what = ", ".join(_diff(known, self._strip(self.key))[:6])
                raise BadInput(f"{self.dir} was written by a different run (differs in: {what}): rerun with the "
                               f"same options, or pass --force to discard it and start over")

    def _unreadable(self, path: Path, e: BaseException) -> BadInput:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "not a state sidecar written by indistill"
        reason = reason.split(". ")[0][:160]
        return BadInput(f"resume state {path} is unreadable ({reason}); delete {self.dir} or run with --force "
                        f"instead of --resume to start over")

    def _peek_key(self) -> dict[str, Any]:
        """The run key of the newest complete generation's sidecar."""
        import torch

        for _, st, pt in self._pairs():
            if st.exists():
                try:
                    side = torch.load(pt, map_location="cpu", weights_only=True)
                    if not isinstance(side, dict) or side.get("format") != STATE_FORMAT:
                        raise ValueError("not a state sidecar written by indistill")
                    return json.loads(side["key"])
                except Exception as e:  # noqa: BLE001 - any unreadable state is one clear line
                    raise self._unreadable(pt, e) from None
        return {}

    def _strip(self, key: Any) -> Any:
        return _strip(key, self.tunable)

    def add_key(self, name: str, value: Any) -> None:
        """Part of what identifies the run, known only after loading (e.g. a parent checkpoint's sha256)."""
        self.key[name] = _canon(value)

    def saved_part(self) -> str | None:
        """With --resume, the part of a multi-part run (e.g. a KD method's phase, then the main loop) the
        newest saved state belongs to; None when there is nothing to resume or the run has one part."""
        if not self.resume or not self.exists():
            return None
        return self._peek_key().get("part")

    def begin_part(self, name: str) -> None:
        """The next part of a multi-part run: its states carry the part's name, and once an earlier part
        has run in this process, a state on disk is that part's (superseded), so this part starts fresh."""
        if "part" in self.key and self.key["part"] != name:
            self.resume = False
        self.key["part"] = name

    def register(self, name: str, get: Callable[[], Any], set_: Callable[[Any], None]) -> None:
        """A stage's own JSON-able bookkeeping (e.g. warmup's flow curves), saved and restored with the state."""
        self.hooks.append((name, get, set_))

    # ------------------------------------------------------------------ files
    def _pairs(self) -> list[tuple[int, Path, Path]]:
        if self.dir is None or not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("state-*.pt"):
            try:
                g = int(p.stem.split("-", 1)[1])
            except (IndexError, ValueError):
                continue
            out.append((g, p.with_suffix(".safetensors"), p))
        return sorted(out, reverse=True)

    def exists(self) -> bool:
        return any(st.exists() for _, st, _ in self._pairs())

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tensors, sidecar) of the newest complete generation, or None (no state / not resuming)."""
        if not self.resume or self.dir is None:
            return None
        import torch
        from safetensors.torch import load as st_load

        pairs = [(g, st, pt) for g, st, pt in self._pairs() if st.exists()]
        if not pairs:
            progress.info(f"--resume: no saved state in {self.dir}; starting from the beginning")
            return None
        g, st, pt = pairs[0]
        try:
            side = torch.load(pt, map_location="cpu", weights_only=True)
            data = st.read_bytes()
            if not isinstance(side, dict) or side.get("format") != STATE_FORMAT:
                raise ValueError("not an indistill state sidecar")
            if side.get("sha256") != hashlib.sha256(data).hexdigest():
                raise ValueError(f"{st.name} does not match its sidecar")
            tensors = st_load(data)
            key = json.loads(side["key"])
        except Exception as e:  # noqa: BLE001 - any unreadable state is one clear line
            raise self._unreadable(pt, e) from None
        if self._strip(key) != self._strip(self.key):
            what = ", ".join(_diff(self._strip(key), self._strip(self.key))[:6])
            if self.force:
                progress.warn(f"{self.dir} was written by a different run (differs in: {what}); starting over")
                self._discard = True
                return None
            raise BadInput(f"{self.dir} was written by a different run (differs in: {what}): rerun with the same "
                           f"options, or pass --force to discard it and start over")
        changed = _diff(key, self.key)
        if changed:
            progress.info(f"resuming with changed {', '.join(changed[:6])} (results will differ from an "
                          f"uninterrupted run)")
        self.gen = g
        return tensors, side

    def save(self, tensors: dict[str, Any], side: dict[str, Any]) -> None:
        """Write the next generation (tensors first, then the sidecar), then drop older ones."""
        self.last_save = time.monotonic()
        if self.dir is None or not self.is_main:
            return
        import io

        import torch
        from safetensors.torch import save as st_save

        if self._discard:
            self.clear()
            self._discard = False
        self.gen = max([self.gen] + [g for g, _, _ in self._pairs()]) + 1
        name = f"state-{self.gen:08d}"
        data = st_save(tensors, metadata={"format": STATE_FORMAT, "stage": self.stage})
        buf = io.BytesIO()
        torch.save({**side, "format": STATE_FORMAT, "stage": self.stage, "key": json.dumps(self.key),
                    "sha256": hashlib.sha256(data).hexdigest()}, buf)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / f"{name}.safetensors", data)
        atomic_write(self.dir / f"{name}.pt", buf.getvalue())
        for g, st, pt in self._pairs():
            if g < self.gen:
                pt.unlink(missing_ok=True)
                st.unlink(missing_ok=True)
        for stray in self.dir.glob("state-*.safetensors"):  # twins of sidecars that were never written
            if not stray.with_suffix(".pt").exists() and stray.name != f"{name}.safetensors":
                stray.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the state (after the stage wrote its outputs)."""
        if self.dir is None or not self.is_main or not self.dir.is_dir():
            return
        for p in list(self.dir.glob("state-*")) + list(self.dir.glob(".state-*")):
            p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass  # the user's own files are in it (a --state-dir shared with something else)

    def due(self) -> bool:
        return self.every_s is not None and time.monotonic() - self.last_save >= self.every_s

    def where(self) -> str:
        return f"{self.dir}/" if self.dir is not None else "nowhere"


# ---------------------------------------------------------------------- engine helpers

def capture_rng(device: Any = None) -> dict[str, Any]:
    """The random streams a step draws from: torch's CPU generator, Python's, NumPy's, and on CUDA the
    generator of `device` (the run's device) alone: not every visible GPU's, which another machine may
    not have and the run never drew from."""
    import torch

    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if device is not None and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        rng["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "rest": json.dumps([kind, int(pos),
                        int(has_gauss), float(cached)])}
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass
    return rng


def restore_rng(rng: dict[str, Any], device: Any = None) -> None:
    """Set the streams `capture_rng` saved; the CUDA one on `device`, the device this run uses, whatever its
    index was when saved (a resume on a machine with fewer GPUs, or another GPU, sets only the one in
    use). A state written before kept every visible device's: its entry at this device's index is taken
    (under torchrun, the rank's own device), and none when that device did not exist there."""
    import torch

    torch.set_rng_state(rng["torch"])
    st = json.loads(rng["python"])
    random.setstate((st[0], tuple(st[1]), st[2]))
    cuda = rng.get("cuda")
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[device.index or 0] if device is not None and (device.index or 0) < len(cuda) else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    if "numpy" in rng:
        import numpy as np

        kind, pos, has_gauss, cached = json.loads(rng["numpy"]["rest"])
        np.random.set_state((kind, rng["numpy"]["keys"].numpy().astype("uint32"), pos, has_gauss, cached))


def module_tensors(module: Any) -> dict[str, Any]:
    """The trainable module's state dict plus the extra state of losses that keep some (CRD's generator)."""
    out = {f"trainable/{k}": v for k, v in module.state_dict().items()}
    for name, m in module.named_modules():
        fn = getattr(m, "extra_state_tensors", None)
        if callable(fn):
            for k, v in fn().items():
                out[f"extra/{name}/{k}"] = v
    return out


def load_module_tensors(module: Any, tensors: dict[str, Any]) -> None:
    sd = {k[len("trainable/"):]: v for k, v in tensors.items() if k.startswith("trainable/")}
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise BadInput(f"the resume state does not fit this model ({str(e).splitlines()[0]}); "
                       f"pass --force to start over") from None
    for name, m in module.named_modules():
        fn = getattr(m, "load_extra_state_tensors", None)
        if callable(fn):
            pre = f"extra/{name}/"
            fn({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})


def cpu_copy(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def iterate_from(loader: Any, skip: int) -> Iterator[Any]:
    """The loader's batches after the first `skip`, with the epoch's random numbers drawn as if they ran.

    Loaders with `skip_batches(n)` fast-forward without building the skipped batches (the tensor loader
    still draws their crop/flip numbers so the rest of the epoch is augmented identically); others are
    iterated and the first batches discarded.
    """
    if skip <= 0:
        yield from loader
        return
    fast = getattr(loader, "skip_batches", None)
    if callable(fast):
        fast(skip)
        yield from loader
        return
    it = iter(loader)
    for _ in range(skip):
        if next(it, None) is None:
            return
    yield from it


# ---------------------------------------------------------------------- signals

@contextmanager
def catch_signals(state: RunState | None) -> Iterator[None]:
    """SIGINT/SIGTERM set `state.stop_signal`; the engine stops after the current step. A second
    SIGINT stops at once (KeyboardInterrupt), for a user who does not want to wait."""
    if state is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if state.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state.stop_signal = signum
        if not progress.quiet():
            progress.console.print(f"[yellow]{signal.Signals(signum).name}: stopping after this step "
                                   f"(again to stop now)[/yellow]")

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread of the main interpreter
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interrupted(state: RunState | None, epoch: int, step: int, saved: bool) -> Interrupted:
    """The one line an interrupted run ends with (exit 130 for SIGINT, 143 for SIGTERM)."""
    signum = state.stop_signal if state is not None and state.stop_signal is not None else signal.SIGINT
    where = f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}"
    if saved and state is not None and state.dir is not None:
        msg = (f"interrupted at {where}; resume with the same command plus --resume "
               f"(state in {state.where()})")
    else:
        msg = f"interrupted at {where}; no resume state was written (with -o - pass --state-dir DIR to resume)"
    return Interrupted(msg, 128 + int(signum))


def divergence(what: str, epoch: int, step: int, lr: float, saved_at: str | None, skip: int) -> RunFailure:
    tail = (f"; the last good state is in {saved_at}: rerun the same command with a lower --lr plus --resume"
            if saved_at else "")
    tol = f"or raise --skip-nonfinite (now {skip}) to tolerate a few bad batches" if skip else \
        "or --skip-nonfinite N to tolerate a few bad batches"
    return RunFailure(f"{what} at epoch {epoch + 1} step {step + 1}; try a lower --lr (now {lr:.3g}), "
                      f"--precision fp32, {tol}{tail}")
