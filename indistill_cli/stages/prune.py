"""`indistill prune`: rank a teacher's channels at each tap and keep as many as the student has.

Stage 1a of InDistill (see docs/method.md); the algorithm lives in `pruning`, this is the command:
options, the teacher and the student, accuracies before and after, the optional fine-tuning of a
chained teacher, and the pruned-teacher checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.engine.schedule import resolve_select
from indistill_cli.errors import BadInput, RunFailure
from indistill_cli.io.checkpoint import load_checkpoint, looks_like_checkpoint
from indistill_cli.io.spec import ModelSpec
from indistill_cli.metrics import classify
from indistill_cli.pruning.pairing import check_pairs, pair_taps, parse_pair
from indistill_cli.pruning.plan import (KEEP_PREFIX, TapPlan, chained_model, check_method, plan_pruning,
                                        reconcile_shared_groups)
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.ce import fit_ce
from indistill_cli.stages.commands import PruneSettings
from indistill_cli.stages.resolve import resolve_model
from indistill_cli.stages.session import Session

ACTIVATION_BATCHES = 4  # validation batches averaged for the `activation` criterion


def _accuracy(model: nn.Module, spec: ModelSpec, s: Session) -> float | None:
    if s.val_split is None:
        return None
    return float(classify(model, s.eval_loader("val", spec, shard=False), s.rt, s.ds.info.num_classes)["top1"])


def _fmt_acc(v: float | None) -> str:
    return "n/a (no validation split)" if v is None else f"{100 * v:.2f}%"


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class Prune(Stage):
    """Prune a trained teacher to a student's widths and write a pruned-teacher checkpoint.

    The dataset is --data when given, otherwise the teacher's own (from its checkpoint)."""

    name = "prune"
    compiles = True
    s: PruneSettings

    def check(self) -> None:
        c = self.s
        check_method(c.criterion, c.mode)
        if c.finetune < 0:
            raise BadInput(f"--finetune must be >= 0 epochs, got {c.finetune}")
        if c.finetune and c.mode != "chained":
            raise BadInput("--finetune needs --mode chained: a probe-mode checkpoint keeps the full, unchanged teacher")
        if c.finetune:
            c.optim.validate()
            resolve_select(c.select, True, True, self.opts.val_fraction > 0, "fine-tuning")
        self.pair_args = [parse_pair(p) for p in c.pair]

    def key(self) -> dict[str, Any] | None:
        return self.s.key() if self.s.finetune else None  # only fine-tuning trains: resumable like `train`

    def prepare(self) -> None:
        """The dataset is the teacher's own unless --data is given; the student must share its labels."""
        c = self.s
        if not looks_like_checkpoint(c.teacher):
            resolve_model(c.teacher, None, "teacher", trained=True)  # type: ignore[arg-type]  # raises
        tckpt = load_checkpoint(c.teacher, role="model")
        if c.data is None:
            name = tckpt.info.get("dataset", {}).get("name")
            if not name:
                raise BadInput(f"{tckpt.source}: records no dataset; pass --data")
            self.opts.data = name
        if self.opts.image_size is None and str(self.opts.data).startswith("imagefolder:"):
            self.opts.image_size = int(tckpt.spec.input_size[0])
        if looks_like_checkpoint(c.like):
            sck = load_checkpoint(c.like, role="model")
            if sck.spec.num_classes != tckpt.spec.num_classes:
                raise BadInput(f"student {sck.source} has {sck.spec.num_classes} classes but teacher "
                               f"{tckpt.source} has {tckpt.spec.num_classes}: prune against a student for the "
                               f"same labels")

    def execute(self, s: Session) -> Result:
        c = self.s
        t = self.t = resolve_model(c.teacher, s.ds.info, "teacher", trained=True)
        st = self.st = resolve_model(c.like, s.ds.info, "student")
        pairs = pair_taps(t.spec, st.spec, [f"{a}:{b}" for a, b in self.pair_args])
        check_pairs(t.spec, st.spec, pairs)
        teacher = t.model.to(s.rt.device)
        progress.info(f"prune {t.name} like {st.name} ({c.criterion}, {c.mode}) on {s.ds.info.name}, "
                      f"{s.rt.describe()}")
        batches = None
        if c.criterion == "activation":
            split = "val" if s.val_split else "train"
            loader = s.eval_loader(split, t.spec, shard=False)
            batches = [b for _, b in zip(range(ACTIVATION_BATCHES), loader)]
        plans = self.plans = plan_pruning(teacher, t.spec, st.spec, pairs, c.criterion, c.mode, batches)
        self.show(plans)
        self.acc: dict[str, Any] = {"split": "val", "teacher": _accuracy(teacher, t.spec, s)}
        progress.info(f"val top-1 of the teacher (before pruning): {_fmt_acc(self.acc['teacher'])}")
        self.fit = None
        weights, spec = self.probe(teacher, s) if c.mode == "probe" else self.chained(teacher, s)
        records = [p.record() for p in plans]
        summary = {"stage": "prune", "teacher": t.name, "student": st.name, "output": self.out,
                   "criterion": c.criterion, "mode": c.mode, "pairs": [{**r, "after": r["kept"]} for r in records],
                   "accuracy": self.acc, "finetune_epochs": c.finetune, "wall_s": round(self.wall(), 2)}
        return self.result(s, summary, weights, spec, records)

    def result(self, s: Session, summary: dict[str, Any], weights: dict[str, torch.Tensor], spec: ModelSpec,
               records: list[dict[str, Any]]) -> Result:
        """The pruned-teacher checkpoint: weights, kept channels, the pruning record and the history entry."""
        c, t, st, acc, fit = self.s, self.t, self.st, self.acc, self.fit
        options = {"pair": [f"{a}:{b}" for a, b in self.pair_args]}
        metrics = {"top1_before": acc["teacher"], "top1_after": acc["pruned_checkpoint"], "top1_chained": acc["chained"]}
        extra: dict[str, Any] = {"pairs": records}
        if fit is not None:
            metrics["finetune_best_epoch"] = fit.best_epoch
            extra["curve"] = fit.history
        pruning = {"criterion": c.criterion, "mode": c.mode, "student": st.name, "student_spec": st.spec.to_dict(),
                   "pairs": records}
        extras = {KEEP_PREFIX + p.teacher_tap: p.keep.to(torch.int64).cpu() for p in self.plans}
        return Result(summary, weights, spec, t.history, self.entry(s, options, [t.parent(), st.parent()], metrics,
                                                                    **extra),
                      {"dataset": s.ds.info.as_dict(), "pruning": pruning}, role="pruned-teacher", extras=extras)

    def show(self, plans: list[TapPlan]) -> None:
        size = lambda v: "x".join(map(str, v))  # noqa: E731
        progress.table(f"pruning {self.t.name} to {self.st.name}'s widths ({self.s.criterion})",
                       ["teacher tap", "student tap", "channels", "kept", "teacher size", "student size"],
                       [[p.teacher_tap, p.student_tap, p.before, p.kept, size(p.teacher_size), size(p.student_size)]
                        for p in plans])
        for p in plans:
            if p.teacher_size != p.student_size:
                progress.info(f"  {p.teacher_tap} ({size(p.teacher_size)}) and {p.student_tap} "
                              f"({size(p.student_size)}) differ in size: warmup pools the larger to the smaller")

    def probe(self, teacher: nn.Module, s: Session) -> tuple[dict[str, torch.Tensor], ModelSpec]:
        """The full teacher plus kept indices; a chained version's accuracy is reported for information."""
        acc, t = self.acc, self.t
        acc["pruned_checkpoint"] = acc["teacher"]
        try:  # for information only: what a structurally pruned teacher would score
            cplans = copy.deepcopy(self.plans)
            reconcile_shared_groups(cplans, warn=False)
            cmodel, cspec = chained_model(teacher, t.spec, cplans)
            acc["chained"] = _accuracy(cmodel.to(s.rt.device), cspec, s)
            progress.info(f"val top-1 of a chained (structurally pruned, not fine-tuned) version, for information: "
                          f"{_fmt_acc(acc['chained'])}; the probe checkpoint itself runs as the full teacher "
                          f"({_fmt_acc(acc['teacher'])})")
        except Exception as e:  # noqa: BLE001 - informational; the probe checkpoint does not depend on it
            acc["chained"] = None
            progress.info(f"(no chained-equivalent accuracy for this teacher: {_first_line(e)})")
        return {k: v.detach().cpu() for k, v in teacher.state_dict().items()}, t.spec

    def chained(self, teacher: nn.Module, s: Session) -> tuple[dict[str, torch.Tensor], ModelSpec]:
        """A structurally pruned teacher, fine-tuned with --finetune."""
        acc, t = self.acc, self.t
        try:
            pruned, pspec = chained_model(teacher, t.spec, self.plans)
        except (BadInput, RunFailure):
            raise
        except Exception as e:  # noqa: BLE001 - torch-pruning rejecting the graph is about this architecture
            raise BadInput(f"chained pruning of {t.name} failed ({_first_line(e)}); use --mode probe") from None
        pruned = pruned.to(s.rt.device)
        acc["chained"] = _accuracy(pruned, pspec, s)
        progress.info(f"val top-1 of the chained pruned teacher (after pruning): {_fmt_acc(acc['chained'])}")
        if self.s.finetune:
            self.bind_state(s, parents=[t.parent().get("sha256"), self.st.parent().get("sha256") or self.st.name])
            self.fit = fit_ce(pruned, pspec, s, self.s.finetune, self.s.optim, f"finetune pruned {t.name}",
                              state=self.state, select=self.s.select)
            pruned.load_state_dict(self.fit.best_state)
            acc["finetuned"] = _accuracy(pruned, pspec, s)
            progress.info(f"val top-1 after {self.s.finetune} epoch(s) of fine-tuning: {_fmt_acc(acc['finetuned'])}")
        acc["pruned_checkpoint"] = acc.get("finetuned", acc["chained"])
        return {k: v.detach().cpu() for k, v in pruned.state_dict().items()}, pspec

    def report(self, r: Result) -> None:
        progress.info(f"wrote {self.out if self.out != '-' else 'stdout'} ({self.s.mode} pruned-teacher, "
                      + ", ".join(f"{p.teacher_tap} {p.before}->{p.kept}" for p in self.plans) + ")")


def run_prune(settings: PruneSettings) -> dict[str, Any]:
    """Prune `settings.teacher` to the widths of the student `settings.like` (see `Prune`)."""
    return Prune(settings).run()
