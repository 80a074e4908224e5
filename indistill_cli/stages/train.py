"""`indistill train`: cross-entropy training of any registered model (teachers, baselines)."""

from __future__ import annotations

from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.engine.schedule import OptimConfig, check_epochs, resolve_select
from indistill_cli.io.history import history_entry, write_model
from indistill_cli.io.paths import sibling
from indistill_cli.models.coverage import describe
from indistill_cli.stages.base import Stage
from indistill_cli.stages.ce import fit_ce
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.resolve import resolve_model
from indistill_cli.stages.session import Session

SUMMARY_METRICS = ("best_epoch", "val_top1", "val_map", "images_per_sec", "peak_memory_mb")


def last_path(out: str) -> str | None:
    """Where the last-epoch checkpoint goes beside the best one (none when streaming to stdout)."""
    return None if out == "-" else sibling(out, ".last.safetensors")


class Train(Stage):
    name = "train"
    compiles = True

    def __init__(self, model_arg: str, out: str, epochs: int, optim: OptimConfig, opts: RunOptions,
                 pretrained: bool = False, force: bool = False, save_last: bool = True, select: str = "auto") -> None:
        super().__init__(out, opts, force)
        self.model_arg, self.epochs, self.optim = model_arg, epochs, optim
        self.pretrained, self.save_last, self.select = pretrained, save_last, select

    def check(self) -> None:
        check_epochs(self.epochs)
        self.optim.validate()
        resolve_select(self.select, True, True, self.opts.val_fraction > 0, "CE training")

    def key(self) -> dict[str, Any]:
        return {"stage": "train", "model": self.model_arg, "epochs": self.epochs, "optim": self.optim.as_dict(),
                "opts": self.opts.as_dict(), "pretrained": self.pretrained}

    def execute(self, s: Session) -> dict[str, Any]:
        m = self.m = resolve_model(self.model_arg, s.ds.info, "model", pretrained=self.pretrained, seed=self.opts.seed)
        self.bind_state(s, parent=m.parent().get("sha256") or m.name)
        model = self.model = m.model.to(s.rt.device)
        if s.rt.channels_last:
            model = self.model = model.to(memory_format=torch.channels_last)
        progress.info(f"train {m.name} on {s.ds.info.name} ({len(s.ds.train)} train / "
                      f"{len(s.ds.val) if s.ds.val is not None else 0} val) on {s.rt.describe()}")
        sees = describe(m.model, m.spec, s.ds.info.stored_size)["text"]
        progress.info(f"{m.name} sees {s.ds.info.serving()}: {sees}")
        res = self.res = fit_ce(model, m.spec, s, self.epochs, self.optim, f"train {m.name}", state=self.state,
                                select=self.select)
        self.wall_s = self.wall()
        best = res.history[res.best_epoch - 1] if res.history else {}
        return {"stage": "train", "model": m.name, "output": self.out, "best_epoch": res.best_epoch,
                "val_top1": best.get("val_top1"), "val_map": best.get("val_map"),
                "final_train_loss": res.final_metrics.get("train_loss"),
                **res.figures(),
                "wall_s": round(self.wall_s, 2), "epochs": res.history}

    def write(self, s: Session, summary: dict[str, Any]) -> None:
        m, res, wall = self.m, self.res, self.wall_s
        options = {"arch": m.name, "epochs": self.epochs, **self.optim.as_dict(), **self.opts.as_dict(),
                   "pretrained": self.pretrained, "select": self.select}
        metrics = {k: summary[k] for k in SUMMARY_METRICS if summary[k] is not None}
        info = {"dataset": s.ds.info.as_dict()}
        hist = m.history + [history_entry("train", options, [m.parent()], metrics, wall, s.ds.info.name,
                                          curve=res.history, device=s.rt.describe())]
        summary["sha256"] = write_model(self.out, res.best_state, m.spec, hist, info)
        lp = last_path(self.out) if self.save_last else None
        if lp:
            last = {k: v.detach() for k, v in self.model.state_dict().items()}
            write_model(lp, last, m.spec, m.history + [history_entry(
                "train", options, [m.parent()], res.final_metrics, wall, s.ds.info.name, note="last epoch",
                device=s.rt.describe())], info)
            summary["last_output"] = lp

    def report(self, summary: dict[str, Any]) -> None:
        progress.info(f"wrote {self.out if self.out != '-' else 'stdout'} (best epoch {summary['best_epoch']}, "
                      f"val top-1 {summary['val_top1'] if summary['val_top1'] is not None else 'n/a'})")


def run_train(model_arg: str, out: str, epochs: int, optim: OptimConfig, opts: RunOptions,
              pretrained: bool = False, force: bool = False, save_last: bool = True,
              select: str = "auto") -> dict[str, Any]:
    """Train `model_arg` (an architecture name, or a checkpoint to keep training) with cross-entropy."""
    return Train(model_arg, out, epochs, optim, opts, pretrained, force, save_last, select).run()
