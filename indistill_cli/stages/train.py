"""`indistill train`: cross-entropy training of any registered model (teachers, baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.engine.schedule import check_epochs, resolve_select
from indistill_cli.io.history import write_model
from indistill_cli.io.paths import sibling
from indistill_cli.models.coverage import describe
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.ce import fit_ce
from indistill_cli.stages.commands import TrainSettings
from indistill_cli.stages.resolve import resolve_model
from indistill_cli.stages.session import Session

SUMMARY_METRICS = ("best_epoch", "val_top1", "val_map", "images_per_sec", "peak_memory_mb")


def last_path(out: str) -> str | None:
    """Where the last-epoch checkpoint goes beside the best one (none when streaming to stdout)."""
    return None if out == "-" else sibling(out, ".last.safetensors")


class Train(Stage):
    name = "train"
    resumable = True
    compiles = True
    s: TrainSettings

    def check(self) -> None:
        check_epochs(self.s.epochs)
        self.s.optim.validate()
        resolve_select(self.s.select, True, True, self.opts.val_fraction > 0, "CE training")

    def execute(self, s: Session) -> Result:
        st = self.s
        m = resolve_model(st.model, s.ds.info, "model", pretrained=st.pretrained, seed=self.opts.seed)
        self.bind_state(s, parent=m.parent().get("sha256") or m.name)
        model = m.model.to(s.rt.device)
        if s.rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        progress.info(f"train {m.name} on {s.ds.info.name} ({len(s.ds.train)} train / "
                      f"{len(s.ds.val) if s.ds.val is not None else 0} val) on {s.rt.describe()}")
        sees = describe(m.model, m.spec, s.ds.info.stored_size)["text"]
        progress.info(f"{m.name} sees {s.ds.info.serving()}: {sees}")
        res = fit_ce(model, m.spec, s, st.epochs, st.optim, f"train {m.name}", state=self.state, select=st.select)
        best = res.history[res.best_epoch - 1] if res.history else {}
        summary = {"stage": "train", "model": m.name, "output": self.out, "best_epoch": res.best_epoch,
                   "val_top1": best.get("val_top1"), "val_map": best.get("val_map"),
                   "final_train_loss": res.final_metrics.get("train_loss"),
                   **res.figures(),
                   "wall_s": round(self.wall(), 2), "epochs": res.history}
        options = {"arch": m.name}
        metrics = {k: summary[k] for k in SUMMARY_METRICS if summary[k] is not None}
        last = {k: v.detach() for k, v in model.state_dict().items()}
        return TrainResult(summary, res.best_state, m.spec, m.history,
                           self.entry(s, options, [m.parent()], metrics, curve=res.history),
                           {"dataset": s.ds.info.as_dict()}, last_state=last,
                           last_entry=self.entry(s, options, [m.parent()], res.final_metrics, note="last epoch"))

    def write_more(self, s: Session, r: Result) -> None:
        assert isinstance(r, TrainResult)
        lp = last_path(self.out) if self.s.last else None
        if lp:
            write_model(lp, r.last_state, r.spec, r.history + [{**r.last_entry, "command": self.s.record()}], r.info)
            r.summary["last_output"] = lp

    def report(self, r: Result) -> None:
        summary = r.summary
        progress.info(f"wrote {self.out if self.out != '-' else 'stdout'} (best epoch {summary['best_epoch']}, "
                      f"val top-1 {summary['val_top1'] if summary['val_top1'] is not None else 'n/a'})")


@dataclass
class TrainResult(Result):
    last_state: dict[str, Any] = field(default_factory=dict)  # the last epoch's weights (OUT.last.safetensors)
    last_entry: dict[str, Any] = field(default_factory=dict)


def run_train(settings: TrainSettings) -> dict[str, Any]:
    """Train `settings.model` (an architecture name, or a checkpoint to keep training) with cross-entropy."""
    return Train(settings).run()
