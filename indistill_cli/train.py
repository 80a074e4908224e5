"""`indistill train`: cross-entropy training of any registered model (teachers, baselines)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from indistill_cli import progress
from indistill_cli.common import check_output, history_entry, resolve_model, write_model
from indistill_cli.engine import SELECT_KEYS, Engine, FitResult, OptimConfig, resolve_select
from indistill_cli.errors import BadInput
from indistill_cli.evaluation import classify
from indistill_cli.models.coverage import describe
from indistill_cli.runtime import barrier
from indistill_cli.session import RunOptions, Session, open_session


def last_path(out: str) -> str | None:
    """Where the last-epoch checkpoint goes beside the best one (none when streaming to stdout)."""
    if out == "-":
        return None
    p = Path(out)
    return str(p.with_name(p.name.removesuffix(".safetensors") + ".last.safetensors"))


def fit_ce(model: torch.nn.Module, spec: dict[str, Any], s: Session, epochs: int, optim: OptimConfig,
           label: str, state: Any = None, select: str = "auto") -> FitResult:
    """Cross-entropy training with best-on-validation selection (used by `train` and `prune --finetune`).

    `state` (a resume.RunState) makes the run interruptible and resumable. `select`: auto/top1 keep the
    best validation top-1 epoch, map the best validation retrieval mAP, last the last epoch."""
    from indistill_cli.runtime import ddp, maybe_compile, sync_batchnorm

    model = sync_batchnorm(model, s.rt, s.opts.sync_bn)  # in place: the caller's model is converted too
    net = maybe_compile(ddp(model, s.rt), s.opts.compile)  # DDP under torchrun, then --compile
    loader = s.train_loader(spec)
    val_loader = s.eval_loader("val", spec) if s.val_split else None

    def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        logits = net(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "_correct": (logits.argmax(1) == batch.y).sum()}

    chosen = resolve_select(select, True, True, val_loader is not None, "CE training")
    emb_tap = spec["embedding"]["name"] if chosen == "map" else None

    def validate(epoch: int) -> dict[str, float]:
        if val_loader is None:
            return {}
        r = classify(model, val_loader, s.rt, s.ds.info.num_classes, emb_tap)
        return {"val_loss": r["loss"], "val_top1": r["top1"], **({"val_map": r["map"]} if "map" in r else {})}

    engine = Engine(s.rt, optim, epochs, select=SELECT_KEYS[chosen], label=label,
                    skip_nonfinite=s.opts.skip_nonfinite, state=state)
    return engine.fit(model, model, step, loader, validate)


def run_train(model_arg: str, out: str, epochs: int, optim: OptimConfig, opts: RunOptions,
              pretrained: bool = False, force: bool = False, save_last: bool = True,
              select: str = "auto") -> dict[str, Any]:
    check_output(out, force)
    if epochs < 1:  # options first: a typo must not cost a dataset load and a model build
        raise BadInput(f"--epochs must be at least 1, got {epochs}")
    optim.validate()
    resolve_select(select, True, True, opts.val_fraction > 0, "CE training")
    from indistill_cli.resume import RunState

    state = RunState("train", out, {"stage": "train", "model": model_arg, "epochs": epochs, "optim": optim.as_dict(),
                                    "opts": opts.as_dict(), "pretrained": pretrained}, opts, force=force)
    state.check()
    t0 = time.perf_counter()
    s = open_session(opts)
    m = resolve_model(model_arg, s.ds.info, "model", pretrained=pretrained, seed=opts.seed)
    state.add_key("parent", m.parent().get("sha256") or m.name)
    state.is_main = s.rt.is_main
    model = m.model.to(s.rt.device)
    if s.rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    progress.info(f"train {m.name} on {s.ds.info.name} ({len(s.ds.train)} train / "
                  f"{len(s.ds.val) if s.ds.val is not None else 0} val) on {s.rt.describe()}")
    progress.info(f"{m.name} sees {s.ds.info.serving()}: " + describe(m.model, m.spec, s.ds.info.stored_size)["text"])
    res = fit_ce(model, m.spec, s, epochs, optim, f"train {m.name}", state=state, select=select)
    wall = time.perf_counter() - t0
    options = {"arch": m.name, "epochs": epochs, **optim.as_dict(), **opts.as_dict(), "pretrained": pretrained,
               "select": select}
    best = res.history[res.best_epoch - 1] if res.history else {}
    summary = {"stage": "train", "model": m.name, "output": out, "best_epoch": res.best_epoch,
               "val_top1": best.get("val_top1"), "val_map": best.get("val_map"),
               "final_train_loss": res.final_metrics.get("train_loss"),
               "images_per_sec": round(res.images_per_sec, 1), "peak_memory_mb": round(res.peak_memory_mb, 1),
               "wall_s": round(wall, 2), "epochs": res.history}
    if s.rt.is_main:
        metrics = {k: summary[k] for k in ("best_epoch", "val_top1", "val_map", "images_per_sec", "peak_memory_mb")
                   if summary[k] is not None}
        spec = dict(m.spec)
        hist = m.history + [history_entry("train", options, [m.parent()], metrics, wall, s.ds.info.name,
                                          curve=res.history, device=s.rt.describe())]
        info = {"dataset": s.ds.info.as_dict()}
        summary["sha256"] = write_model(out, res.best_state, spec, hist, info)
        lp = last_path(out) if save_last else None
        if lp:
            write_model(lp, {k: v.detach() for k, v in model.state_dict().items()}, spec,
                        m.history + [history_entry("train", options, [m.parent()], res.final_metrics, wall,
                                                   s.ds.info.name, note="last epoch", device=s.rt.describe())], info)
            summary["last_output"] = lp
        state.clear()  # the outputs are written: the resume state has done its job
        progress.info(f"wrote {out if out != '-' else 'stdout'} (best epoch {res.best_epoch}, "
                      f"val top-1 {summary['val_top1'] if summary['val_top1'] is not None else 'n/a'})")
    barrier(s.rt)  # no rank leaves before rank 0 has written
    return summary
