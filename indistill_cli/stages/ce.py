"""Cross-entropy training with best-on-validation selection: `train`'s body, and `prune --finetune`'s."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from indistill_cli.engine.determinism import blank_batch, check_kernels
from indistill_cli.engine.loop import Engine, FitResult
from indistill_cli.engine.runtime import ddp, maybe_compile, sync_batchnorm
from indistill_cli.engine.schedule import SELECT_KEYS, OptimConfig, resolve_select
from indistill_cli.io.spec import ModelSpec
from indistill_cli.metrics import classify
from indistill_cli.stages.session import Session


def val_metrics(model: torch.nn.Module, loader: Any, s: Session, emb_tap: str | None) -> dict[str, float]:
    """The validation columns of an epoch's row: loss, top-1, and retrieval mAP when selecting on it."""
    r = classify(model, loader, s.rt, s.ds.info.num_classes, emb_tap)
    return {"val_loss": r["loss"], "val_top1": r["top1"], **({"val_map": r["map"]} if "map" in r else {})}


def fit_ce(model: torch.nn.Module, spec: ModelSpec, s: Session, epochs: int, optim: OptimConfig,
           label: str, state: Any = None, select: str = "auto") -> FitResult:
    """Cross-entropy training with best-on-validation selection (used by `train` and `prune --finetune`).

    `state` (a resume.RunState) makes the run interruptible and resumable. `select`: auto/top1 keep the
    best validation top-1 epoch, map the best validation retrieval mAP, last the last epoch."""
    model = sync_batchnorm(model, s.rt, s.opts.sync_bn)  # in place: the caller's model is converted too
    net = maybe_compile(ddp(model, s.rt), s.opts.compile)  # DDP under torchrun, then --compile
    loader = s.train_loader(spec)
    val_loader = s.eval_loader("val", spec) if s.val_split else None

    def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        logits = net(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "_correct": (logits.argmax(1) == batch.y).sum()}

    chosen = resolve_select(select, True, True, val_loader is not None, "CE training")
    emb_tap = spec.embedding.name if chosen == "map" else None

    def validate(epoch: int) -> dict[str, float]:
        return val_metrics(model, val_loader, s, emb_tap) if val_loader is not None else {}

    def probe() -> torch.Tensor:  # --deterministic on CUDA: the step's ops, checked before it runs
        x = blank_batch(spec, s.rt)
        return F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long, device=x.device))

    check_kernels(s.rt, model, probe, label)
    engine = Engine(s.rt, optim, epochs, select=SELECT_KEYS[chosen], label=label,
                    skip_nonfinite=s.opts.skip_nonfinite, state=state)
    return engine.fit(model, model, step, loader, validate, on_epoch=s.on_epoch)
