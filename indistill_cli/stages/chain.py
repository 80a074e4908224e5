"""The one InDistill chain, teacher -> [auxiliary] -> prune -> warmup -> distill, as links that `pipeline` and
`study` both run.

A link is one standalone command's settings (`stages.commands`) bound to its inputs and output: they are
what it runs, and what identifies it (pipeline's --resume compares their `key()`). `Chain` says where the
models come from and how the reference models (teacher, auxiliary) are trained; the student's links take
their lr plan from `planned`, so a warmup and the KD that continues it are one plan of one optimiser (the
reference) in every caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.io.checkpoint import looks_like_checkpoint
from indistill_cli.metrics.scores import Scores
from indistill_cli.stages.commands import (DistillSettings, EvaluateSettings, PruneSettings, RetrieveSettings,
                                           TrainSettings, WarmupSettings, reference_student_optim)
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.registry import stage_for
from indistill_cli.stages.settings import StageSettings

__all__ = ["KD", "Chain", "Curriculum", "Link", "distill_link", "planned", "reference_links",
           "reference_student_optim", "score_on_test", "train_link", "warmup_link", "with_milestone"]


def with_milestone(optim: OptimConfig, total: int) -> OptimConfig:
    """A multistep plan given no milestones gets the reference's: lr x gamma for the last seventh."""
    if optim.schedule != "multistep" or optim.milestones:
        return optim
    return OptimConfig(**{**optim.as_dict(), "milestones": [total - max(1, round(total / 7))]})


def planned(optim: OptimConfig, total: int) -> OptimConfig:
    """The warmup's optimiser as the first part of one lr plan over `total` student epochs (warmup + KD)."""
    return OptimConfig(**{**with_milestone(optim, total).as_dict(), "plan_epochs": total})


@dataclass
class Link:
    """One step of the chain: a standalone command's settings bound to its inputs and output (what it runs,
    and, by their `key()`, what identifies it for pipeline's --resume)."""

    name: str
    output: str  # file name (pipeline: inside its folder)
    epochs: int
    settings: StageSettings
    parents: list[str]  # the files it reads

    def stage(self, tracker: Any = None) -> Any:
        """The stage that runs it (`tracker`: a pipeline's child run)."""
        return stage_for(self.settings, tracker)

    def run(self) -> dict[str, Any]:
        return self.stage().run()


@dataclass(frozen=True)
class Chain:
    """Where the chain's models come from and how the reference models are trained. `teacher`: a checkpoint,
    or an architecture trained here (`teacher_epochs`, `teacher_optim`); `aux`: the auxiliary teacher (the
    student's topology, wider), trained with CE (`aux_ce_optim`, default the teacher's) then PKT from the
    teacher (`aux_pkt_optim`), each keeping the epoch `aux_select` picks. File names are relative to `folder`."""

    teacher: str
    student: str
    folder: str
    teacher_epochs: int = 30
    teacher_optim: OptimConfig = field(default_factory=OptimConfig)
    keep_last: bool = True  # also write the reference models' last-epoch checkpoints (train's default)
    aux: str | None = None
    aux_epochs: int = 20
    aux_ce_optim: OptimConfig | None = None
    aux_pkt_optim: OptimConfig = field(default_factory=lambda: OptimConfig("adam", 1e-3, weight_decay=0.0,
                                                                          schedule="none"))
    aux_select: str = "auto"
    criterion: str = "l1"
    prune_mode: str = "probe"
    names: tuple[tuple[str, str], ...] = (("teacher", "teacher.safetensors"), ("aux-ce", "aux_ce.safetensors"),
                                          ("aux", "aux.safetensors"), ("pruned", "teacher_pruned.safetensors"))

    def file(self, what: str) -> str:
        """The path of one of the chain's own models: teacher, aux-ce, aux or pruned."""
        return str(Path(self.folder) / dict(self.names)[what])

    @property
    def trains_teacher(self) -> bool:
        return not looks_like_checkpoint(self.teacher)

    @property
    def teacher_path(self) -> str:
        return self.file("teacher") if self.trains_teacher else self.teacher

    @property
    def source(self) -> str:
        """The model the student learns from: the auxiliary when there is one, else the teacher."""
        return self.file("aux") if self.aux else self.teacher_path


def train_link(name: str, arch: str, dest: str, epochs: int, optim: OptimConfig, opts: RunOptions,
               keep_last: bool = True, select: str = "auto", output: str | None = None) -> Link:
    """CE training of `arch` (a teacher, an auxiliary, a CE-only student)."""
    return Link(name, output or Path(dest).name, epochs, TrainSettings(
        model=arch, output=dest, epochs=epochs, optim=optim, opts=opts, force=True, last=keep_last, select=select), [])


def reference_links(c: Chain, opts: RunOptions, prune: bool = True, aux_name: str = "aux-train") -> list[Link]:
    """The teacher (when trained here), the auxiliary (CE, then PKT from the teacher) and the pruned source."""
    links = []
    if c.trains_teacher:
        links.append(train_link("teacher", c.teacher, c.file("teacher"), c.teacher_epochs, c.teacher_optim, opts,
                                c.keep_last))
    if c.aux:
        ce_optim = c.aux_ce_optim or c.teacher_optim
        links.append(train_link(aux_name, c.aux, c.file("aux-ce"), c.aux_epochs, ce_optim, opts, c.keep_last,
                                c.aux_select))
        teacher, aux_ce, aux, pkt = c.teacher_path, c.file("aux-ce"), c.file("aux"), c.aux_pkt_optim
        links.append(Link("aux-pkt", Path(aux).name, c.aux_epochs, DistillSettings(
            teacher=teacher, student=aux_ce, output=aux, method=["pkt"], ce=0.0, epochs=c.aux_epochs, optim=pkt,
            opts=opts, force=True, select=c.aux_select), [teacher, aux_ce]))
    if prune:
        source, pruned = c.source, c.file("pruned")
        links.append(Link("prune", Path(pruned).name, 0, PruneSettings(
            teacher=source, like=c.student, output=pruned, data=opts.data, criterion=c.criterion, mode=c.prune_mode,
            opts=opts, force=True), [source]))
    return links


@dataclass(frozen=True)
class Curriculum:
    """The warmup's epochs per tap: `explicit` ('3,4,5'), or a + b*l for tap l; `cumulative` keeps the earlier
    taps' MSE terms in the loss."""

    a: float = 2.0
    b: float = 1.0
    explicit: str | None = None
    cumulative: bool = False


def warmup_link(c: Chain, opts: RunOptions, dest: str, optim: OptimConfig, epochs: int, cur: Curriculum,
                plot: str | None = None) -> Link:
    """The InDistill warmup of a fresh student on the pruned source's targets (`optim`: see `planned`)."""
    pruned = c.file("pruned")
    return Link("warmup", Path(dest).name, epochs, WarmupSettings(
        teacher=pruned, student=c.student, output=dest, optim=optim, opts=opts, a=cur.a, b=cur.b,
        epochs_per_tap=cur.explicit, cumulative=cur.cumulative, plot=plot, force=True), [pruned])


@dataclass(frozen=True)
class KD:
    """The KD stage of one student: methods, their parameters, the CE weight (None: the recipe's), which
    epoch to keep, and whether the per-tap flow to the pruned source is recorded (and kept in the loss)."""

    methods: tuple[str, ...]
    params: tuple[str, ...] = ()
    ce: float | None = None
    select: str = "auto"
    flow: bool = True
    keep_flow: float = 0.0
    keep_flow_decay: float = 1.0


def distill_link(c: Chain, opts: RunOptions, student_in: str, dest: str, kd: KD, epochs: int, optim: OptimConfig,
                 continue_plan: bool) -> Link:
    """KD from the source into `student_in` (a fresh student, or a warmup's output continuing its plan)."""
    source, flow = c.source, c.file("pruned") if kd.flow else None
    return Link("distill", Path(dest).name, epochs, DistillSettings(
        teacher=source, student=student_in, output=dest, method=list(kd.methods), param=list(kd.params), ce=kd.ce,
        epochs=None if continue_plan else epochs, optim=optim, opts=opts, force=True, flow_teacher=flow,
        select=kd.select, continue_plan=continue_plan, keep_flow=kd.keep_flow, keep_flow_decay=kd.keep_flow_decay),
        [source, student_in])


def score_on_test(ckpt: str, opts: RunOptions) -> Scores:
    """The paper's endpoints on the test split: top-1 (evaluate) and retrieval (retrieve; the whole training
    split, with test-time transforms, as the database, whatever `--train-fraction` trained on)."""
    batch = opts.eval_batch_size
    ev = stage_for(EvaluateSettings(model=ckpt, split="test", per_class=False, batch_size=batch,
                                    opts=dataclasses.replace(opts, augment=False))).run()
    rt = stage_for(RetrieveSettings(model=ckpt, batch_size=batch, opts=dataclasses.replace(
        opts, val_fraction=0.0, train_fraction=1.0))).run()
    return Scores.from_stages(ev, rt)
