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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.engine.loop import Engine
from indistill_cli.engine.resume import RunState
from indistill_cli.engine.runtime import Runtime, ddp
from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.losses.base import Phase
from indistill_cli.pruning.targets import with_orphan_buffers
from indistill_cli.stages.distiller import Distiller


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
            step = _phase_step(distiller, teacher, run, rt)
            engine = Engine(rt, phase_optim(optim), run.phase.epochs, label=f"distill {run.part}",
                            skip_nonfinite=skip_nonfinite, state=state)
            res = engine.fit(distiller, distiller.student, step, loader)
        log.append({"part": run.part, "method": run.method, "phase": run.phase.name, "epochs": run.phase.epochs,
                    "history": res.history})
    if state is not None and runs:
        state.begin_part("main")


def _phase_step(distiller: Distiller, teacher: nn.Module, run: PhaseRun, rt: Runtime) -> Callable[[Any, int], Any]:
    """The phase's step; under torchrun DDP is built at the first batch, told which of the parameters the
    phase trains its loss does not reach (AB trains the student, but not its head), so it waits for none."""
    nets: list[Any] = []

    def step(batch: Any, epoch: int) -> Any:
        if not nets:
            ignore = [f"losses.{n}" for n, _ in distiller.losses.named_buffers()]
            nets.append(ddp(distiller, rt, ignore + (unreached(distiller, run, teacher, batch) if rt.distributed
                                                     else [])))
        return nets[0](batch.x, batch.y, batch.idx, epoch, distiller.teacher_outputs(batch.x, teacher),
                       phase=(run.index, run.phase))

    return step


def unreached(distiller: Distiller, run: PhaseRun, teacher: nn.Module, batch: Any) -> list[str]:
    """State-dict names of the trainable parameters no gradient of the phase's loss reaches, and the buffers
    of modules owning only such parameters: one probing backward in eval mode on two images (no running
    statistics change, no .grad written), the same on every rank."""
    was = distiller.training
    distiller.eval()
    named = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad]
    x = batch.x[:2]
    with torch.enable_grad():
        out = distiller(x, batch.y[:2], batch.idx[:2], 0, distiller.teacher_outputs(x, teacher),
                        phase=(run.index, run.phase))
        grads = torch.autograd.grad(out["loss"], [p for _, p in named], allow_unused=True)
    distiller.train(was)
    return with_orphan_buffers(distiller, {n for (n, _), g in zip(named, grads) if g is None})
