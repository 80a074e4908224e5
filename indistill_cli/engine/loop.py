"""The one training loop, shared by `train`, `warmup`, `distill` and `prune --finetune`.

A stage supplies a `step(batch, epoch) -> {name: tensor}` (the key "loss" is optimised, other keys
are logged; keys starting with "_" are counts such as "_correct") and a `validate(epoch)`. The
engine owns everything else: optimiser and schedule, autocast, the progress display, best-on-
validation selection (`epoch.EpochEnd`), the non-finite guard (`guard.NonFiniteGuard`), resumable
state (`loop_state.ResumePoint`), throughput and peak memory. Losses are read back to the host only
every `log_every` steps, so a GPU is never synchronised per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.engine import resume
from indistill_cli.engine.epoch import COUNTED, EpochEnd
from indistill_cli.engine.guard import NonFiniteGuard, describe_terms
from indistill_cli.engine.loop_state import LoopState, Position, ResumePoint, snapshot
from indistill_cli.engine.optim import (grad_norm, load_named_optimizer_state, make_optimizer, named_optimizer_state,
                                        param_names, trainable_groups)
from indistill_cli.engine.runtime import Runtime, agree, peak_memory_mb
from indistill_cli.engine.schedule import OptimConfig, check_epochs, lr_factor

Step = Callable[[Any, int], dict[str, torch.Tensor]]


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch: train losses, val metrics, lr, img/s
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    final_metrics: dict[str, float]
    images_per_sec: float
    peak_memory_mb: float
    wall_s: float
    optimizer_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # by `keep` parameter name
    bad_steps: int = 0  # steps skipped by --skip-nonfinite (non-finite loss or gradient)


class Engine:
    """Runs epochs of a step function over a loader with one optimiser over `trainable`."""

    def __init__(self, rt: Runtime, cfg: OptimConfig, epochs: int, log_every: int = 20,
                 select: str | None = None, select_mode: str = "max", label: str = "train",
                 skip_nonfinite: int = 0, state: resume.RunState | None = None) -> None:
        check_epochs(epochs)
        cfg.validate()
        self.rt, self.cfg, self.epochs, self.log_every = rt, cfg, epochs, max(1, log_every)
        self.select, self.select_mode, self.label = select, select_mode, label
        self.skip_nonfinite = skip_nonfinite
        self.state = state  # signals, periodic/resumable state (None: neither)
        # check every step for non-finite values on the host (CPU: free); None = on CPU only. On a GPU
        # that would be a sync per step, so flags accumulate on the device and are read when logging.
        self.check_every_step: bool | None = None

    def fit(self, trainable: nn.Module, keep: nn.Module, step: Step, loader: Any,
            validate: Callable[[int], dict[str, float]] | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            opt_state: dict[str, dict[str, torch.Tensor]] | None = None) -> FitResult:
        """Train `trainable`'s parameters; `keep` is the module whose best/last state is returned.

        `opt_state` (by `keep` parameter name) continues an earlier stage's optimiser, e.g. the
        warmup's Adam moments when KD continues its lr plan; the result carries the final one.
        With a `state`, SIGINT/SIGTERM stop the run after the current step with a resumable state,
        states are also written every --save-every minutes, and a run given --resume continues from
        the newest one (bitwise identical to an uninterrupted run on CPU). Bad (non-finite) steps:
        see `guard`.
        """
        run = _Run(self, trainable, keep, step, loader, opt_state)
        end = EpochEnd(self.rt, self.label, self.select, self.select_mode, validate, on_epoch)
        with progress.bar(self.rt.is_main) as bars, resume.catch_signals(self.state):
            run.show(bars)
            for epoch in range(run.start.epoch, self.epochs):
                run.train_epoch(epoch)
                end.finish(run.loop, keep, epoch, run.sums, run.seen, time.perf_counter() - run.t0)
                run.end_epoch(epoch)
        if run.guard.bad and self.rt.is_main:
            progress.warn(f"{self.label}: skipped {run.guard.bad} batch{'es' if run.guard.bad > 1 else ''} with a "
                          f"non-finite loss or gradient (--skip-nonfinite {self.skip_nonfinite})")
        return run.result()


class _Run:
    """One fit in progress: the optimiser, the guard, what the loop has accumulated, the current epoch."""

    def __init__(self, engine: Engine, trainable: nn.Module, keep: nn.Module, step: Step, loader: Any,
                 opt_state: dict[str, dict[str, torch.Tensor]] | None) -> None:
        self.e, self.rt, self.cfg = engine, engine.rt, engine.cfg
        self.trainable, self.keep, self.step_fn, self.loader = trainable, keep, step, loader
        self.groups = trainable_groups(trainable)
        self.params = [p for params, _ in self.groups for p in params]
        self.names = param_names(keep, self.params)
        self.guard = NonFiniteGuard(self.rt, trainable, engine.skip_nonfinite, engine.check_every_step)
        self.opt = self.new_optimizer()
        if opt_state:
            load_named_optimizer_state(self.opt, self.names, opt_state)
        self.scaler = torch.amp.GradScaler(self.rt.device.type) if self.rt.precision == "fp16" else None
        self.steps = max(1, len(loader))
        self.loop = LoopState([], snapshot(keep), lr=self.cfg.lr * lr_factor(self.cfg, 0.0, engine.epochs))
        self.t_start = time.perf_counter()
        self.point = ResumePoint(engine.state, self.rt, trainable) if engine.state is not None else None
        self.start = Position()
        if self.point is not None:
            self.start, self.guard.bad = self.point.load(self.loop, self.opt, self.scaler, engine.label)
        self.sums: dict[str, torch.Tensor] = {}
        self.seen, self.t0 = 0, 0.0

    def new_optimizer(self) -> torch.optim.Optimizer:
        """The deferred guard skips bad steps through a fused optimiser's `found_inf` (see `guard`)."""
        return make_optimizer(self.groups, self.cfg, fused=not self.guard.every_step)

    def show(self, bars: Any) -> None:
        self.bars = bars
        self.task = bars.add_task(self.e.label, total=self.e.epochs * self.steps, status="",
                                  completed=self.start.epoch * self.steps + self.start.step)

    def train_epoch(self, epoch: int) -> None:
        """One epoch (the rest of it, when resuming mid-epoch); leaves its sums, images and start time."""
        skip = self.start.step if epoch == self.start.epoch else 0
        if self.cfg.reset_each_epoch and epoch > 0 and skip == 0:
            self.opt = self.new_optimizer()
        self.loader.set_epoch(self.cfg.plan_offset + epoch)  # a continued plan also continues the data order
        self.trainable.train()
        self.sums = dict(self.start.sums) if skip else {}
        self.seen = self.start.seen if skip else 0
        self.t0 = time.perf_counter() - (self.start.elapsed if skip else 0.0)
        for i, batch in enumerate(resume.iterate_from(self.loader, skip), start=skip):
            out = self.step(epoch, i, batch)
            if out is None:  # a bad step, skipped
                continue
            self.add(out, int(batch.y.shape[0]))
            self.after_step(epoch, i, out)
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize(self.rt.device)

    def add(self, out: dict[str, torch.Tensor], n: int) -> None:
        """Add a step's terms (x its images) to the epoch's sums. Deferred guard: masked on the device by
        the step's verdict, with the images that counted kept under COUNTED (a skipped step adds 0)."""
        self.seen += n
        ok = self.guard.ok
        for k, v in out.items():
            v = v.detach().float() * (1 if k.startswith("_") else n)
            if ok is not None:
                v = torch.where(ok, v, 0.0)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        if ok is not None or COUNTED in self.sums:  # (also when a resumed epoch began in the other mode)
            kept = ok.long() * n if ok is not None else n
            self.sums[COUNTED] = self.sums.get(COUNTED, self.seen - n) + kept

    def step(self, epoch: int, i: int, batch: Any) -> dict[str, torch.Tensor] | None:
        """Forward, backward and update; None when the guard found the step bad (and undid it)."""
        self.loop.lr = self.cfg.lr * lr_factor(self.cfg, epoch + i / self.steps, self.e.epochs)
        for g in self.opt.param_groups:
            g["lr"] = self.loop.lr * g.get("lr_mult", 1.0)
        guard = self.guard
        guard.remember()
        with self.rt.autocast():
            out = self.step_fn(batch, epoch)
        loss = out["loss"]
        if guard.every_step and guard.loss_is_bad(loss):
            return self.bad_step(describe_terms(out), epoch, i)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: the scaler skips steps with inf/nan gradients (a non-finite
            # loss gives such gradients); with a fused optimiser (deferred) it passes found_inf, no .item()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if guard.flags is not None:
                guard.flag(loss)
                guard.keep_if_ok()
            return out
        loss.backward()
        gnorm = grad_norm(self.params)
        if not guard.every_step:  # the fused kernels skip the update where found_inf is 1
            self.opt.found_inf = guard.flag(loss, gnorm)
            self.opt.step()
            guard.keep_if_ok()
            return out
        if not torch.isfinite(gnorm):
            return self.bad_step(f"non-finite gradient (norm {float(gnorm):.4g}, loss {float(loss.detach()):.4g})",
                                 epoch, i)
        self.opt.step()
        return out

    def bad_step(self, what: str, epoch: int, i: int) -> None:
        """Undo the bad step; past the tolerance fail, leaving the last good state (from before it)."""
        if not self.guard.undo(self.opt):
            saved = self.save(Position(epoch, i, self.sums, self.seen, self.elapsed(i)), collective=False)
            raise resume.divergence(what, epoch, i, self.loop.lr, self.e.state.where() if saved else None,
                                    self.e.skip_nonfinite)

    def after_step(self, epoch: int, i: int, out: dict[str, torch.Tensor]) -> None:
        """Logging cadence: device flags, the progress line, a periodic or signalled save."""
        state, guard = self.e.state, self.guard
        at_log = (i + 1) % self.e.log_every == 0 or i + 1 == self.steps
        stop = state is not None and state.stop_signal is not None
        due = state is not None and state.due() and (guard.every_step or at_log)
        if self.rt.distributed:
            stop, due = agree(self.rt, stop, due) if at_log else (False, False)
        if guard.flags is not None and (at_log or stop or due):  # (at_log on every rank: stop/due agree there)
            n_bad = guard.read_flags()
            if n_bad and guard.exceeded:
                last = state.where() if state is not None and state.exists() else None
                raise resume.divergence(f"non-finite loss or gradient in {n_bad} of the steps up to here "
                                        f"({describe_terms(out, brief=True)})", epoch, i, self.loop.lr, last,
                                        self.e.skip_nonfinite)
        if at_log:
            el = time.perf_counter() - self.t0
            self.bars.update(self.task, completed=epoch * self.steps + i + 1, status=(
                f"epoch {epoch + 1}/{self.e.epochs} loss {float(self.sums['loss']) / max(self.counted(), 1):.4f} "
                f"{self.seen / max(el, 1e-9):.0f} img/s"))
        if stop or due:
            saved = self.save(Position(epoch, i + 1, self.sums, self.seen, self.elapsed(i + 1)))
            if stop:
                raise self.interrupted(epoch, i + 1, saved)

    def end_epoch(self, epoch: int) -> None:
        """Save (and stop, after a signal) at the epoch boundary when due."""
        state = self.e.state
        if state is None:
            return
        stop, due = agree(self.rt, state.stop_signal is not None, state.due())
        if stop or due:
            saved = self.save(Position(epoch + 1, 0, {}, 0, 0.0))
            if stop:
                raise self.interrupted(epoch + 1, 0, saved)

    def counted(self) -> int:
        """The images of this epoch's steps that counted (the deferred guard masks skipped ones on the device)."""
        return int(self.sums[COUNTED]) if COUNTED in self.sums else self.seen

    def elapsed(self, done: int) -> float:
        return time.perf_counter() - self.t0 if done else 0.0

    def save(self, pos: Position, collective: bool = True) -> bool:
        if self.point is None:
            return False
        return self.point.save(self.loop, self.guard.bad, self.opt, self.scaler, pos, collective)

    def interrupted(self, epoch: int, done: int, saved: bool) -> Exception:
        """The exit after a signal; under torchrun once rank 0 has written (no rank is killed mid-write)."""
        if self.rt.distributed:
            import torch.distributed as dist

            dist.barrier()
        return resume.interrupted(self.e.state, epoch, done, saved)

    def result(self) -> FitResult:
        loop, e = self.loop, self.e
        if not e.select or loop.best_epoch < 0:
            loop.best_state, loop.best_epoch = snapshot(self.keep), e.epochs
        return FitResult(loop.history, loop.best_state, loop.best_epoch, loop.history[-1] if loop.history else {},
                         loop.train_images * self.rt.world / max(loop.train_time, 1e-9), peak_memory_mb(self.rt.device),
                         time.perf_counter() - self.t_start, named_optimizer_state(self.opt, self.names),
                         self.guard.bad)
