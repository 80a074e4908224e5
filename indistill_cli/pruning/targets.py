"""The pruned teacher's targets for a student: paired taps, the teacher's maps at the kept channels.

Shared by `warmup` (the training targets and the per-epoch curves), `distill --flow-teacher` and
`evaluate --teacher` (the information-flow view; its MSE is `metrics.flow`). Teacher targets are the
real eval-mode teacher activations at each paired tap, restricted to the channels pruning kept (probe
mode) or taken from a structurally pruned teacher (chained mode); they are computed under
inference_mode and never require grad.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint
from indistill_cli.models.taps import TapSet


@dataclass
class Pair:
    teacher_tap: str
    student_tap: str
    keep: torch.Tensor | None  # teacher channels to keep (probe mode); None = all


def pairs_from_teacher(teacher: Checkpoint, student_spec: dict[str, Any]) -> list[Pair]:
    """The paired taps a pruned-teacher checkpoint records, checked against the student's widths."""
    pruning = teacher.info.get("pruning")
    s_taps = {t["name"]: t for t in student_spec["taps"]}
    t_taps = {t["name"]: t for t in teacher.spec["taps"]}
    if pruning is None:
        # an unpruned teacher works only where widths already agree (e.g. an auxiliary of the same widths)
        if len(t_taps) != len(s_taps):
            raise BadInput(f"{teacher.source}: not a pruned teacher and its taps do not pair one-to-one with the "
                           f"student's; run `indistill prune {teacher.source} --like STUDENT` first")
        out = []
        for t, s in zip(teacher.spec["taps"], student_spec["taps"]):
            if t["channels"] != s["channels"]:
                raise BadInput(f"{teacher.source}: tap {t['name']} has {t['channels']} channels, the student's "
                               f"{s['name']} {s['channels']}; run `indistill prune {teacher.source} --like STUDENT`")
            out.append(Pair(t["name"], s["name"], None))
        return out
    out = []
    for p in pruning["pairs"]:
        st = p["student_tap"]
        if st not in s_taps:
            raise BadInput(f"{teacher.source} was pruned for student tap '{st}', which this student lacks "
                           f"(pruned like {pruning.get('student')}); prune again with --like this student")
        if s_taps[st]["channels"] != p["kept"]:
            raise BadInput(f"{teacher.source} keeps {p['kept']} channels at {p['teacher_tap']} but the student's "
                           f"{st} has {s_taps[st]['channels']}; prune again with --like this student")
        keep = teacher.extras.get(f"keep/{p['teacher_tap']}")
        chained = pruning.get("mode") == "chained" or t_taps[p["teacher_tap"]]["channels"] == p["kept"]
        out.append(Pair(p["teacher_tap"], st, None if chained else keep.long()))
    return out


class FlowPair:
    """Runs the teacher and student up to a tap and yields (student map, teacher target) pairs.

    The kept-channel indices move to the teacher's device here, once: copied from the host every step,
    each copy would make a CUDA step wait (a pageable host-to-device copy synchronises)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: list[Pair]) -> None:
        dev = next((t.device for t in (*teacher.parameters(), *teacher.buffers())), torch.device("cpu"))
        self.teacher, self.student = teacher, student
        self.pairs = [p if p.keep is None else replace(p, keep=p.keep.to(dev)) for p in pairs]
        self._announced = False

    @torch.inference_mode()
    def _teacher_maps(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        names = [p.teacher_tap for p in self.pairs[: upto + 1]]
        with TapSet(self.teacher, names, stop_after=names[-1]) as taps:
            taps.forward(x)
            outs = [taps.out[n] for n in names]
        return [o if p.keep is None else o.index_select(1, p.keep) for o, p in zip(outs, self.pairs)]

    def targets(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Teacher targets for taps 0..upto, as ordinary (non-inference) tensors without grad."""
        return [t.float().clone() for t in self._teacher_maps(x, upto)]

    def student_maps(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Student maps at taps 0..upto; the forward stops after tap `upto` (later layers get no grad)."""
        names = [p.student_tap for p in self.pairs[: upto + 1]]
        with TapSet(self.student, names, stop_after=names[-1]) as t:
            t.forward(x)
            return [t.out[n] for n in names]

    def announce_spatial(self, x: torch.Tensor) -> None:
        """Say once (stderr) where student and teacher maps differ in size and will be pooled."""
        if self._announced:
            return
        self._announced = True
        last = len(self.pairs) - 1
        t = self._teacher_maps(x[:2], last)
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            s = self.student_maps(x[:2], last)
        self.student.train(was)
        for p, sm, tm in zip(self.pairs, s, t):
            if sm.shape[-2:] != tm.shape[-2:]:
                progress.warn(f"tap {p.student_tap} is {tuple(sm.shape[-2:])} but teacher {p.teacher_tap} is "
                              f"{tuple(tm.shape[-2:])}: the larger is adaptive-average-pooled to the smaller")


class StudentUpTo(nn.Module):
    """The student's forward up to tap `upto`, returning the maps of taps `first..upto`.

    What one warmup phase trains, as a module of its own so that DDP (under torchrun) can wrap it: the
    early stop happens inside this forward, so DDP sees an ordinary forward that returns tensors.
    """

    def __init__(self, flow: FlowPair, first: int, upto: int) -> None:
        super().__init__()
        self.student = flow.student
        self.names = [p.student_tap for p in flow.pairs[: upto + 1]]
        self.first = first

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with TapSet(self.student, self.names, stop_after=self.names[-1]) as t:
            t.forward(x)
            return [t.out[n] for n in self.names[self.first :]]
