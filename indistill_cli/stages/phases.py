"""The KD methods' own stages that `distill` runs before its main loop: FT's paraphraser, AB's and FSP's
initialisation (a method declares them with `DistillLoss.phases()`).

Each phase is a fit of the same engine over the same data: its step computes the phase's loss alone,
only what the phase trains has `requires_grad` on (the method's modules, and the student when the
phase says so), and it has its own optimiser of the run's kind and base lr at a constant lr (the
reference implementations' initialisation stages use a constant lr and their own optimiser), so a
`--continue-plan` run hands the warmup's optimiser state to the main loop untouched.

Resume: a run with phases is a multi-part run (`RunState.begin_part`). A state records which part it
was saved in; `--resume` skips the parts before it (their results are in the state: the student and
the methods' modules, and the phases' history rows), resumes that part where it stopped (bitwise, as
any fit), and runs the later parts from their start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from indistill_cli.engine.loop import Engine
from indistill_cli.engine.resume import RunState
from indistill_cli.engine.runtime import Runtime
from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.losses.base import Phase
from indistill_cli.stages.distiller import Distiller, distiller_step


@dataclass
class PhaseRun:
    index: int  # the method's position in --method
    method: str
    phase: Phase

    @property
    def part(self) -> str:
        return f"{self.method}.{self.phase.name}"


def method_phases(distiller: Distiller) -> list[PhaseRun]:
    """Every method's phases with at least one epoch, in --method order."""
    return [PhaseRun(i, m.name, ph) for i, (m, loss) in enumerate(zip(distiller.methods, distiller.losses))
            for ph in loss.phases() if ph.epochs > 0]


def phase_optim(optim: OptimConfig) -> OptimConfig:
    """A phase's optimiser: the run's kind, base lr and weight decay, constant, outside any lr plan."""
    return OptimConfig(**{**optim.as_dict(), "schedule": "none", "milestones": [], "warmup_epochs": 0,
                          "plan_epochs": 0, "plan_offset": 0, "reset_each_epoch": False})


@contextmanager
def training_only(distiller: Distiller, phase: Phase) -> Iterator[None]:
    """`requires_grad` on exactly what the phase trains, restored afterwards."""
    params = list(distiller.parameters())
    saved = [p.requires_grad for p in params]
    distiller.requires_grad_(False)
    if phase.trains_student:
        distiller.student.requires_grad_(True)
    for m in phase.trains:
        m.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def run_phases(runs: list[PhaseRun], distiller: Distiller, teacher: nn.Module, loader: Any, rt: Runtime,
               optim: OptimConfig, state: RunState | None, skip_nonfinite: int,
               log: list[dict[str, Any]]) -> None:
    """Run the phases not yet done (see the module doc on resume), appending each one's record to `log`."""
    done = {r["part"] for r in log}
    saved = state.saved_part() if state is not None else None
    parts = [r.part for r in runs]
    start = parts.index(saved) if saved in parts else (len(parts) if saved == "main" else 0)
    for run in runs[start:]:
        if run.part in done:
            continue
        if state is not None:
            state.begin_part(run.part)
        with training_only(distiller, run.phase):
            step = distiller_step(distiller, teacher, rt, (run.index, run.phase))
            engine = Engine(rt, phase_optim(optim), run.phase.epochs, label=f"distill {run.part}",
                            skip_nonfinite=skip_nonfinite, state=state)
            res = engine.fit(distiller, distiller.student, step, loader)
        log.append({"part": run.part, "method": run.method, "phase": run.phase.name, "epochs": run.phase.epochs,
                    "history": res.history})
    if state is not None and runs:
        state.begin_part("main")
