"""The one training loop, shared by `train`, `warmup` and `distill`.

A stage supplies a `step(batch, epoch) -> {name: tensor}` (the key "loss" is optimised, other keys
are logged; keys starting with "_" are counts such as "_correct") and a `validate(epoch)`. The
engine owns everything else: optimiser and schedule, autocast, the progress display, best-on-
validation selection, the NaN guard, throughput and peak memory. Losses are read back to the host
only every `log_every` steps, so a GPU is never synchronised per step.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.errors import BadInput, RunFailure
from indistill_cli.runtime import Runtime, peak_memory_mb


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # none | cosine | multistep
    milestones: list[int] = field(default_factory=list)  # epochs where multistep multiplies lr by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    reset_each_epoch: bool = False  # the InDistill reference re-creates Adam every epoch
    # one lr plan across stages (warmup, then KD, as the reference runs its student): the plan spans
    # plan_epochs (0: this run's own epochs) and this run starts plan_offset epochs into it
    plan_epochs: int = 0
    plan_offset: int = 0

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise BadInput(f"--optimizer must be sgd, adam or adamw, got '{self.optimizer}'")
        if self.schedule not in ("none", "cosine", "multistep"):
            raise BadInput(f"--schedule must be none, cosine or multistep, got '{self.schedule}'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInput(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise BadInput("--weight-decay must be >= 0")
        if self.plan_epochs < 0 or self.plan_offset < 0:
            raise BadInput("the lr plan's length and offset must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, t: float, epochs: int) -> float:
    """Multiplier of the base lr at fractional epoch t of this run (warmup, then the schedule).

    With a plan (cfg.plan_epochs), t is shifted by plan_offset and the schedule spans the plan, so
    a KD stage that continues a warmup's plan takes up the lr exactly where the warmup left it."""
    t += cfg.plan_offset
    epochs = cfg.plan_epochs or epochs
    if cfg.warmup_epochs and t < cfg.warmup_epochs:
        return (t + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1e-9, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - cfg.warmup_epochs) / span)))
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if t >= m)
    return 1.0


SELECT_KEYS = {"top1": "val_top1", "map": "val_map", "last": None}


def resolve_select(requested: str, trains_head: bool, trains_embedding: bool, has_val: bool,
                   what: str = "this run") -> str:
    """--select: which epoch a run keeps. 'auto' picks what the run trains: validation top-1 when a loss
    reaches the classifier head, else validation retrieval mAP when one reaches the embedding, else
    the last epoch. An explicit choice that the run cannot support is refused, never silently used:
    top-1 of a head no loss trains would keep an arbitrary epoch."""
    if requested not in ("auto", *SELECT_KEYS):
        raise BadInput(f"--select must be auto, last, top1 or map, got '{requested}'")
    if requested == "auto":
        if not has_val:
            return "last"
        return "top1" if trains_head else "map" if trains_embedding else "last"
    if requested != "last" and not has_val:
        raise BadInput(f"--select {requested} needs a validation split (--val-fraction > 0); use --select last")
    if requested == "top1" and not trains_head:
        raise BadInput(f"--select top1: no loss in {what} reaches the classifier head (no CE, no logit method), so "
                       f"its top-1 is arbitrary; use --select map (validation retrieval mAP) or last")
    if requested == "map" and not trains_embedding and not trains_head:
        raise BadInput(f"--select map: no loss in {what} reaches the embedding; use --select last")
    return requested


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


def _param_names(keep: nn.Module, params: list[nn.Parameter]) -> list[str | None]:
    """Each trained parameter's name in `keep` (the model whose state a run returns); None for the
    parameters outside it (KD adapters), which carry no optimiser state between stages."""
    by_id = {id(p): n for n, p in keep.named_parameters()}
    return [by_id.get(id(p)) for p in params]


def named_optimizer_state(opt: torch.optim.Optimizer, names: list[str | None]) -> dict[str, dict[str, torch.Tensor]]:
    """The optimiser's per-parameter state (Adam moments and step, SGD momentum) keyed by parameter name."""
    state = opt.state_dict()["state"]
    return {n: {k: v.detach().cpu().clone() for k, v in state[i].items() if torch.is_tensor(v)}
            for i, n in enumerate(names) if n is not None and i in state}


def load_named_optimizer_state(opt: torch.optim.Optimizer, names: list[str | None],
                               named: dict[str, dict[str, torch.Tensor]]) -> int:
    """Give the optimiser the per-parameter state of an earlier stage, by name; returns how many matched."""
    sd = opt.state_dict()
    hits = 0
    for i, n in enumerate(names):
        if n is not None and n in named:
            sd["state"][i] = {k: v.clone() for k, v in named[n].items()}
            hits += 1
    opt.load_state_dict(sd)
    return hits


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Total gradient 2-norm as a device tensor (no host sync); non-finite if any gradient is."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


def _bad_terms(out: dict[str, torch.Tensor], brief: bool = False) -> str:
    """'non-finite loss in term kd (loss=nan, ce=2.3, kd=nan)': which named term went bad."""
    vals = {k: float(v.detach().float()) for k, v in out.items() if not k.startswith("_")}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
    if brief:
        return shown
    bad = [k for k, v in vals.items() if k != "loss" and not math.isfinite(v)]
    if not bad:
        return f"non-finite loss ({shown})"
    return f"non-finite loss in term{'s' if len(bad) > 1 else ''} {', '.join(bad)} ({shown})"


class Engine:
    """Runs epochs of a step function over a loader with one optimiser over `trainable`."""

    def __init__(self, rt: Runtime, cfg: OptimConfig, epochs: int, log_every: int = 20,
                 select: str | None = None, select_mode: str = "max", label: str = "train",
                 skip_nonfinite: int = 0, state: Any = None) -> None:
        if epochs < 1:
            raise BadInput(f"--epochs must be at least 1, got {epochs}")
        cfg.validate()
        self.rt, self.cfg, self.epochs, self.log_every = rt, cfg, epochs, max(1, log_every)
        self.select, self.select_mode, self.label = select, select_mode, label
        self.skip_nonfinite = skip_nonfinite
        self.state = state  # resume.RunState: signals, periodic/resumable state (None: neither)
        # check every step for non-finite values on the host (CPU: free); None = on CPU only. On a GPU
        # that would be a sync per step, so flags accumulate on the device and are read when logging.
        self.check_every_step: bool | None = None

    def fit(self, trainable: nn.Module, keep: nn.Module, step: Callable[[Any, int], dict[str, torch.Tensor]],
            loader: Any, validate: Callable[[int], dict[str, float]] | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            opt_state: dict[str, dict[str, torch.Tensor]] | None = None) -> FitResult:
        """Train `trainable`'s parameters; `keep` is the module whose best/last state is returned.

        `opt_state` (by `keep` parameter name) continues an earlier stage's optimiser, e.g. the
        warmup's Adam moments when KD continues its lr plan; the result carries the final one.

        With a `state` (resume.RunState), SIGINT/SIGTERM stop the run after the current step with a
        resumable state, states are also written every --save-every minutes, and a run given
        --resume continues from the newest one (bitwise identical to an uninterrupted run on CPU).
        A step whose loss or gradient norm is not finite is a bad step: skipped (weights, optimiser
        and buffers untouched) up to `skip_nonfinite` times, then the run fails, leaving the last
        good state. On CPU every step is checked; on CUDA the flags accumulate on the device and are
        read at the logging cadence (no per-step host sync), so there a bad step is only detected
        (its update is not undone) and the last good state is the newest one saved.
        """
        from indistill_cli import resume

        rt, cfg, guard = self.rt, self.cfg, self.state
        params = [p for p in trainable.parameters() if p.requires_grad]
        names = _param_names(keep, params)
        opt = make_optimizer(params, cfg)
        if opt_state:
            load_named_optimizer_state(opt, names, opt_state)
        scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
        steps_per_epoch = max(1, len(loader))
        history: list[dict[str, float]] = []
        best_val, best_epoch, best_state = None, -1, _snapshot(keep)
        train_time, train_images, bad_batches = 0.0, 0, 0
        t_start = time.perf_counter()
        every_step = rt.device.type == "cpu" if self.check_every_step is None else self.check_every_step
        lr = cfg.lr * lr_factor(cfg, 0.0, self.epochs)
        bufs = list(trainable.buffers()) if every_step else []  # restored when a step turns out bad
        backup = [b.detach().clone() for b in bufs]
        bad_dev = None if every_step else torch.zeros((), dtype=torch.int64, device=rt.device)
        start_epoch, start_step, sums0, seen0, epoch_time0 = 0, 0, {}, 0, 0.0

        def save_state(epoch: int, done: int, sums: dict[str, torch.Tensor], seen: int, t0: float,
                       collective: bool = True) -> bool:
            """A resumable state at `done` steps into `epoch` (0-based); False when there is nowhere to write.

            `collective`: every rank calls this at the same step (agreed stop/save), so RNG states can
            be gathered; a divergence seen by one rank alone saves without collectives."""
            if guard is None or guard.dir is None:
                return False
            rng, ranks = resume.capture_rng(), None
            cpu_sums = {k: v.detach().cpu() for k, v in sums.items()}
            if rt.distributed and collective:  # each rank's RNG streams and epoch sums, kept by rank 0
                import torch.distributed as dist

                ranks = [None] * rt.world
                dist.all_gather_object(ranks, {"rng": rng, "sums": cpu_sums, "seen": seen})
            if not guard.is_main:  # rank 0 writes the (replicated) model and optimiser
                guard.last_save = time.monotonic()
                return True
            tensors = resume.module_tensors(trainable)
            if best_epoch >= 0:
                tensors.update({f"best/{k}": v for k, v in best_state.items()})
            loop = {"epoch": epoch, "step": done, "history": history, "best_val": best_val, "best_epoch": best_epoch,
                    "train_time": train_time, "train_images": train_images, "bad_batches": bad_batches,
                    "seen": seen, "lr": lr, "epoch_time": time.perf_counter() - t0 if done else 0.0,
                    "hooks": {name: get() for name, get, _ in guard.hooks}}
            side = {"loop": json.dumps(loop, default=float), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "sums": cpu_sums, "rng": rng}
            if ranks is not None:
                side["rng_ranks"] = ranks
            guard.save(resume.cpu_copy(tensors), side)
            return True

        if guard is not None:
            guard.add_key("world", rt.world)  # the data shards depend on it
            loaded = guard.load()
            if loaded is not None:
                tensors, side = loaded
                resume.load_module_tensors(trainable, tensors)
                loop = json.loads(side["loop"])
                opt.load_state_dict(side["optimizer"])
                if scaler is not None and side.get("scaler"):
                    scaler.load_state_dict(side["scaler"])
                history, best_val, best_epoch = loop["history"], loop["best_val"], loop["best_epoch"]
                if best_epoch >= 0:
                    best_state = {k[len("best/"):]: v.to(rt.device) for k, v in tensors.items()
                                  if k.startswith("best/")}
                train_time, train_images, bad_batches = loop["train_time"], loop["train_images"], loop["bad_batches"]
                start_epoch, start_step, seen0, lr = loop["epoch"], loop["step"], loop["seen"], loop["lr"]
                epoch_time0 = loop.get("epoch_time", 0.0)
                sums0 = {k: v.to(rt.device) for k, v in side["sums"].items()}
                for name, _, set_ in guard.hooks:
                    if name in loop["hooks"]:
                        set_(loop["hooks"][name])
                per_rank = side.get("rng_ranks") or []
                mine = per_rank[rt.rank] if rt.distributed and rt.rank < len(per_rank) else None
                if mine is not None:  # this rank's own streams and partial sums
                    sums0 = {k: v.to(rt.device) for k, v in mine["sums"].items()}
                    seen0 = mine["seen"]
                resume.restore_rng(mine["rng"] if mine is not None else side["rng"])  # last: no draws after it
                guard.resumed_from = (start_epoch, start_step)
                progress.info(f"resuming {self.label} at epoch {start_epoch + 1} step {start_step} "
                              f"(state in {guard.where()})")

        def bad_step(what: str, epoch: int, i: int, sums: dict[str, torch.Tensor], seen: int, t0: float) -> None:
            """Undo what the bad step changed; fail (leaving the last good state) past the tolerance."""
            nonlocal bad_batches
            for b, c in zip(bufs, backup):
                b.copy_(c)
            opt.zero_grad(set_to_none=True)
            if bad_batches + 1 > self.skip_nonfinite:
                saved = save_state(epoch, i, sums, seen, t0, collective=False)
                raise resume.divergence(what, epoch, i, lr, guard.where() if saved else None, self.skip_nonfinite)
            bad_batches += 1

        def interrupted(epoch: int, done: int, saved: bool) -> Exception:
            """The exit after a signal; under torchrun once rank 0 has written (no rank is killed mid-write)."""
            if rt.distributed:
                import torch.distributed as dist

                dist.barrier()
            return resume.interrupted(guard, epoch, done, saved)

        def agree(stop: bool, due: bool) -> tuple[bool, bool]:
            """Every rank stops or saves at the same step."""
            if not rt.distributed:
                return stop, due
            import torch.distributed as dist

            v = torch.tensor([float(stop), float(due)], device=rt.device)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            return bool(v[0]), bool(v[1])

        with progress.bar(rt.is_main) as bars, resume.catch_signals(guard):
            task = bars.add_task(self.label, total=self.epochs * steps_per_epoch, status="",
                                 completed=start_epoch * steps_per_epoch + start_step)
            for epoch in range(start_epoch, self.epochs):
                skip = start_step if epoch == start_epoch else 0
                if cfg.reset_each_epoch and epoch > 0 and skip == 0:
                    opt = make_optimizer(params, cfg)
                loader.set_epoch(cfg.plan_offset + epoch)  # a continued plan also continues the data order
                trainable.train()
                sums: dict[str, torch.Tensor] = dict(sums0) if skip else {}
                seen = seen0 if skip else 0
                t0 = time.perf_counter() - (epoch_time0 if skip else 0.0)
                for i, batch in enumerate(resume.iterate_from(loader, skip), start=skip):
                    lr = cfg.lr * lr_factor(cfg, epoch + i / steps_per_epoch, self.epochs)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    for b, c in zip(bufs, backup):
                        c.copy_(b)
                    with rt.autocast():
                        out = step(batch, epoch)
                    loss = out["loss"]
                    if every_step:
                        bad = not bool(torch.isfinite(loss.detach()))
                        if rt.distributed:  # every rank skips (or stops at) the same step
                            bad = agree(bad, False)[0]
                        if bad:
                            bad_step(_bad_terms(out), epoch, i, sums, seen, t0)
                            continue
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:  # fp16: the scaler itself skips steps with inf/nan gradients
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        if bad_dev is not None:
                            bad_dev += ~torch.isfinite(loss.detach())
                    else:
                        loss.backward()
                        gnorm = _grad_norm(params)
                        if every_step:
                            if not torch.isfinite(gnorm):
                                bad_step(f"non-finite gradient (norm {float(gnorm):.4g}, loss "
                                         f"{float(loss.detach()):.4g})", epoch, i, sums, seen, t0)
                                continue
                        else:
                            bad_dev += ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
                        opt.step()
                    n = int(batch.y.shape[0])
                    seen += n
                    for k, v in out.items():
                        v = v.detach().float() * (1 if k.startswith("_") else n)
                        sums[k] = sums[k] + v if k in sums else v
                    at_log = (i + 1) % self.log_every == 0 or i + 1 == steps_per_epoch
                    stop = guard is not None and guard.stop_signal is not None
                    due = guard is not None and guard.due() and (every_step or at_log)
                    if rt.distributed:
                        stop, due = agree(stop, due) if at_log else (False, False)
                    if bad_dev is not None and (at_log or stop or due):
                        if rt.distributed:  # (at_log on every rank: stop/due are only agreed there)
                            import torch.distributed as dist

                            dist.all_reduce(bad_dev, op=dist.ReduceOp.MAX)
                        n_bad = int(bad_dev)
                        if n_bad:
                            bad_dev.zero_()
                            bad_batches += n_bad
                            if bad_batches > self.skip_nonfinite:
                                last = guard.where() if guard is not None and guard.exists() else None
                                raise resume.divergence(
                                    f"non-finite loss or gradient in {n_bad} of the steps up to here "
                                    f"({_bad_terms(out, brief=True)})", epoch, i, lr, last, self.skip_nonfinite)
                    if at_log:
                        el = time.perf_counter() - t0
                        bars.update(task, completed=epoch * steps_per_epoch + i + 1, status=(
                            f"epoch {epoch + 1}/{self.epochs} loss {float(sums['loss']) / max(seen, 1):.4f} "
                            f"{seen / max(el, 1e-9):.0f} img/s"))
                    if stop or due:
                        saved = save_state(epoch, i + 1, sums, seen, t0)
                        if stop:
                            raise interrupted(epoch, i + 1, saved)
                if rt.device.type == "cuda":
                    torch.cuda.synchronize(rt.device)
                dt = time.perf_counter() - t0
                train_time += dt
                train_images += seen
                row: dict[str, float] = {"epoch": epoch + 1, "lr": lr, "img_per_s": seen / max(dt, 1e-9)}
                row.update(self._reduce(sums, seen))
                if validate is not None:
                    row.update(validate(epoch))
                history.append(row)
                if self.select and self.select in row:
                    v = row[self.select]
                    better = best_val is None or (v > best_val if self.select_mode == "max" else v < best_val)
                    if better:
                        best_val, best_epoch, best_state = v, epoch + 1, _snapshot(keep)
                if on_epoch is not None:
                    on_epoch(epoch, row)
                if rt.is_main and not progress.quiet():
                    progress.console.print(f"{self.label} " + "  ".join(
                        f"{k} {progress.fmt(v)}" for k, v in row.items() if k != "lr"))
                if guard is not None:
                    stop, due = agree(guard.stop_signal is not None, guard.due())
                    if stop or due:
                        saved = save_state(epoch + 1, 0, {}, 0, time.perf_counter())
                        if stop:
                            raise interrupted(epoch + 1, 0, saved)
        if not self.select or best_epoch < 0:
            best_state, best_epoch = _snapshot(keep), self.epochs
        return FitResult(history, best_state, best_epoch, history[-1] if history else {},
                         train_images * rt.world / max(train_time, 1e-9), peak_memory_mb(rt.device),
                         time.perf_counter() - t_start, named_optimizer_state(opt, names))

    def _reduce(self, sums: dict[str, torch.Tensor], seen: int) -> dict[str, float]:
        """Epoch means of the logged terms (all-reduced across ranks)."""
        keys = sorted(sums)
        if not keys:
            return {}
        vec = torch.stack([sums[k].to(self.rt.device) for k in keys] + [torch.tensor(float(seen), device=self.rt.device)])
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(vec)
        total = float(vec[-1])
        out = {}
        for k, v in zip(keys, vec[:-1].tolist()):
            if k.startswith("_correct"):
                out["train_acc"] = v / max(total, 1)
            elif not k.startswith("_"):
                out[f"train_{k}"] = v / max(total, 1)
        return out


def clone_module(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m)
