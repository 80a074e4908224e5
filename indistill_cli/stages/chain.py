"""The one InDistill chain, teacher -> [auxiliary] -> prune -> warmup -> distill, as links that `pipeline` and
`study` both run.

A link is one standalone command's function bound to its inputs and output, with the options that identify
it (pipeline's --resume compares them). `Chain` says where the models come from and how the reference
models (teacher, auxiliary) are trained; the student's links take their lr plan from `student_plan`, so a
warmup and the KD that continues it are one plan of one optimiser (the reference) in every caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.io.checkpoint import looks_like_checkpoint
from indistill_cli.metrics.scores import Scores
from indistill_cli.stages.distill import run_distill
from indistill_cli.stages.evaluate import run_evaluate
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.prune import run_prune
from indistill_cli.stages.retrieve import run_retrieve
from indistill_cli.stages.train import run_train
from indistill_cli.stages.warmup import run_warmup


def reference_student_optim() -> OptimConfig:
    """The reference's student schedule: Adam 1e-3 without weight decay, 10x lower for the last seventh
    (its 70 CIFAR epochs: 60 at 1e-3, 10 at 1e-4); the milestone is placed on the whole plan."""
    return OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="multistep", milestones=[])


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
    """One step of the chain: a standalone command's function bound to its inputs and output."""

    name: str
    output: str  # file name (pipeline: inside its folder)
    epochs: int
    options: dict[str, Any]  # what identifies the step (pipeline's --resume compares them)
    parents: list[str]  # the files it reads
    run: Callable[[], dict[str, Any]]


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
    return Link(name, output or Path(dest).name, epochs, {"arch": arch, "epochs": epochs, **optim.as_dict()}, [],
                lambda: run_train(arch, dest, epochs, optim, opts, force=True, save_last=keep_last, select=select))


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
        links.append(Link("aux-pkt", Path(aux).name, c.aux_epochs,
                          {"method": "pkt", "ce": 0.0, "epochs": c.aux_epochs, **pkt.as_dict()}, [teacher, aux_ce],
                          lambda: run_distill(teacher, aux_ce, aux, ["pkt"], [], 0.0, [], None, c.aux_epochs, pkt,
                                              opts, force=True, select=c.aux_select)))
    if prune:
        source, pruned = c.source, c.file("pruned")
        links.append(Link("prune", Path(pruned).name, 0,
                          {"like": c.student, "criterion": c.criterion, "mode": c.prune_mode}, [source],
                          lambda: run_prune(source, c.student, pruned, opts, c.criterion, c.prune_mode,
                                            data_given=True, force=True)))
    return links


@dataclass(frozen=True)
class Curriculum:
    """The warmup's epochs per tap: `explicit` ('3,4,5'), or a + b*l for tap l; `cumulative` keeps the earlier
    taps' MSE terms in the loss."""

    a: float = 2.0
    b: float = 1.0
    explicit: str | None = None
    cumulative: bool = False

    def options(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "epochs_per_tap": self.explicit,
                **({"cumulative": True} if self.cumulative else {})}


def warmup_link(c: Chain, opts: RunOptions, dest: str, optim: OptimConfig, epochs: int, cur: Curriculum,
                plot: str | None = None) -> Link:
    """The InDistill warmup of a fresh student on the pruned source's targets (`optim`: see `planned`)."""
    pruned = c.file("pruned")
    return Link("warmup", Path(dest).name, epochs, {"student": c.student, **cur.options(), **optim.as_dict()},
                [pruned], lambda: run_warmup(pruned, c.student, dest, optim, opts, cur.a, cur.b, cur.explicit,
                                             cur.cumulative, plot=plot, force=True))


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
    options = {"student": c.student, "methods": list(kd.methods), "params": list(kd.params), "ce": kd.ce,
               "epochs": epochs, "continue_plan": continue_plan, "select": kd.select, "keep_flow": kd.keep_flow,
               "keep_flow_decay": kd.keep_flow_decay, **optim.as_dict()}
    return Link("distill", Path(dest).name, epochs, options, [source, student_in],
                lambda: run_distill(source, student_in, dest, list(kd.methods), list(kd.params), kd.ce, [], None,
                                    None if continue_plan else epochs, optim, opts, force=True, flow_teacher=flow,
                                    select=kd.select, continue_plan=continue_plan, keep_flow=kd.keep_flow,
                                    keep_flow_decay=kd.keep_flow_decay))


def score_on_test(ckpt: str, opts: RunOptions) -> Scores:
    """The paper's endpoints on the test split: top-1 (evaluate) and retrieval (retrieve; the whole training
    split, with test-time transforms, as the database, whatever `--train-fraction` trained on)."""
    import dataclasses

    ev = run_evaluate(ckpt, "test", dataclasses.replace(opts, augment=False), per_class=False)
    rt = run_retrieve(ckpt, dataclasses.replace(opts, val_fraction=0.0, train_fraction=1.0), None, "train", "test",
                      "both", "exact", [100], None, None, None, 10, None)
    return Scores.from_stages(ev, rt)
