"""`indistill warmup`: the InDistill stage 1b, layer-wise copying of the teacher's feature maps.

Taps are trained shallow to deep on the curriculum S_l = a + b*l; during tap l's epochs the loss is
only MSE(student tap l, teacher target tap l) (plus earlier taps with --cumulative), no CE. The
student's forward stops right after tap l, so layers past it get no gradient and cost nothing.
After each epoch the MSE of every tap on fixed validation batches is recorded: the information-flow
curves of the paper's Figure 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.data import check_compatible
from indistill_cli.engine.determinism import blank_batch, check_kernels
from indistill_cli.engine.loop import Engine
from indistill_cli.engine.runtime import Runtime, broadcast_state, ddp, maybe_compile, sync_batchnorm
from indistill_cli.engine.schedule import resolve_select
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.metrics.flow import flow_mse, mse
from indistill_cli.models import create_model
from indistill_cli.pruning.targets import FlowPair, StudentUpTo, pairs_from_teacher
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import WarmupSettings
from indistill_cli.stages.curriculum import epochs_per_tap, phases, tap_of_epoch
from indistill_cli.stages.resolve import fed_by, frozen, resolve_model
from indistill_cli.stages.session import Session


class PhaseNets:
    """What tap l's epochs train: the student up to tap l (StudentUpTo), in DDP under torchrun.

    The forward stops after tap l, so the parameters past it get no gradient in this phase. Plain DDP
    (find_unused_parameters=False) would wait for them forever, and find_unused_parameters=True
    would walk the autograd graph every step of every stage to find what a phase change already
    tells us. So DDP is rebuilt once per curriculum phase, over the module that phase runs, with the
    parameters (and their modules' buffers) no gradient reaches excluded: a probe backward finds
    them, identically on every rank. Each rebuild broadcasts rank 0's state, which all ranks already
    share (broadcast at the start, then identical all-reduced updates).
    """

    def __init__(self, flow: FlowPair, rt: Runtime, cumulative: bool, compile_: bool) -> None:
        self.flow, self.rt, self.cumulative, self.compile = flow, rt, cumulative, compile_
        self.nets: dict[int, Any] = {}

    def __call__(self, l: int, x: torch.Tensor) -> Any:
        if l not in self.nets:
            self.nets.clear()  # the previous phase's DDP (its gradient hooks) goes before the next is built
            m = StudentUpTo(self.flow, 0 if self.cumulative else l, l)
            probe = torch.zeros_like(x[:2])
            self.nets[l] = maybe_compile(ddp(m, self.rt, probe=lambda: sum(o.float().sum() for o in m(probe))),
                                         self.compile)
        return self.nets[l]


class Warmup(Stage):
    """The warmup. `optim.plan_epochs` > 0 makes it the first part of one lr plan over that many student
    epochs: the lr follows the plan, and the optimiser state and plan go to a sidecar (`plan`, default
    OUT.plan.safetensors) that `distill --continue-plan` takes up."""

    name = "warmup"
    resumable = True
    compiles = True
    s: WarmupSettings

    def check(self) -> None:
        c = self.s
        if c.flow_images < 1:
            raise BadInput(f"--flow-images must be at least 1, got {c.flow_images}")
        c.optim.validate()
        # the warmup trains taps only: no loss reaches the embedding or the head, so only the last epoch is meaningful
        resolve_select(c.select, False, False, True, "the warmup (tap MSE only)")
        if c.optim.plan_epochs and self.out == "-" and not c.plan:
            raise BadInput("--plan-epochs with -o -: give the plan sidecar's path with --plan PATH")
        if c.plan and not c.optim.plan_epochs:
            raise BadInput("--plan is where --plan-epochs writes the plan sidecar; add --plan-epochs N")

    def prepare(self) -> None:
        ck = self.teacher_ck = load_checkpoint(self.s.teacher)
        if ck.role not in ("pruned-teacher", "model"):
            raise BadInput(f"{ck.source}: is a {ck.role} checkpoint; expected a (pruned) teacher")

    def execute(self, s: Session) -> Result:
        rt, ck, c = s.rt, self.teacher_ck, self.s
        check_compatible(s.ds.info, ck.spec, f"teacher {ck.source}")
        student = self.student = resolve_model(c.student, s.ds.info, "student", seed=self.opts.seed)
        self.bind_state(s, parents=[ck.sha256, student.parent().get("sha256") or student.name])
        pairs = pairs_from_teacher(ck, student.spec)
        sched = self.sched = epochs_per_tap(len(pairs), c.a, c.b, c.epochs_per_tap)
        if c.optim.plan_epochs and c.optim.plan_epochs <= sum(sched):
            raise BadInput(f"--plan-epochs {c.optim.plan_epochs}: the plan must be longer than the warmup's own "
                           f"{sum(sched)} epochs (it spans warmup + KD)")
        teacher = fed_by(frozen(create_model(ck).model, rt.device), ck.spec, student.spec, s.ds.info)
        model = sync_batchnorm(student.model.to(rt.device), rt, self.opts.sync_bn)
        broadcast_state(model, rt)  # every rank starts from rank 0's student (phases wrap only part of it in DDP)
        if rt.channels_last:
            model, teacher = model.to(memory_format=torch.channels_last), teacher.to(memory_format=torch.channels_last)
        flow = FlowPair(teacher, model, pairs)
        fixed = s.first_images(s.val_split or "test", student.spec, c.flow_images)
        flow.announce_spatial(fixed[0])
        progress.info(f"warmup {student.name} from {ck.spec.name} on {s.ds.info.name} ({rt.describe()}): "
                      + ", ".join(f"{p.teacher_tap}->{p.student_tap} {n} ep" for p, n in zip(pairs, sched)))
        self.names = [p.student_tap for p in pairs]
        curves = self.curves = {n: [v] for n, v in zip(self.names, flow_mse(flow, fixed, rt))}
        # a resumed run continues the curves it had (the first point is the untrained student's)
        if self.state is not None:
            self.state.register("curves", lambda: curves, lambda saved: (curves.clear(), curves.update(saved)))
        res = self.fit(s, flow, fixed, model)
        return self.summarise(s, res, pairs)

    def fit(self, s: Session, flow: FlowPair, fixed: list[torch.Tensor], model: torch.nn.Module) -> Any:
        """The curriculum: epoch e trains tap epoch_tap[e] (and earlier ones with --cumulative) on MSE only."""
        epoch_tap, names, cumulative = tap_of_epoch(self.sched), self.names, self.s.cumulative
        nets = self.nets = PhaseNets(flow, s.rt, cumulative, self.opts.compile)

        def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
            l = epoch_tap[epoch]
            first = 0 if cumulative else l
            targets = flow.targets(batch.x, l)
            maps = nets(l, batch.x)(batch.x)  # taps first..l
            terms = {f"mse_{names[i]}": mse(maps[i - first], targets[i]) for i in range(first, l + 1)}
            return {"loss": sum(terms.values()), **terms}

        def validate(epoch: int) -> dict[str, float]:
            vals = flow_mse(flow, fixed, s.rt)
            for n, v in zip(names, vals):
                self.curves[n].append(v)
            return {"active_tap": epoch_tap[epoch] + 1, **{f"val_mse_{n}": v for n, v in zip(names, vals)}}

        def probe() -> torch.Tensor:  # every phase's ops: the forward to the last tap, every tap's MSE
            x, last = blank_batch(self.student.spec, s.rt), len(names) - 1
            return sum(mse(m, t) for m, t in zip(StudentUpTo(flow, 0, last)(x), flow.targets(x, last)))

        check_kernels(s.rt, model, probe, f"warmup {self.student.name}")
        engine = Engine(s.rt, self.s.optim, len(epoch_tap), label=f"warmup {self.student.name}",
                        skip_nonfinite=self.opts.skip_nonfinite, state=self.state)
        return engine.fit(model, model, step, s.train_loader(self.student.spec), validate, on_epoch=s.on_epoch)

    def summarise(self, s: Session, res: Any, pairs: list[Any]) -> Result:
        ck, sched, curves, student, c = self.teacher_ck, self.sched, self.curves, self.student, self.s
        initial = {n: v[0] for n, v in curves.items()}
        final = {n: v[-1] for n, v in curves.items()}
        warm_info = {"teacher": {"path": ck.source, "sha256": ck.sha256},
                     "pairs": [{"teacher_tap": p.teacher_tap, "student_tap": p.student_tap, "epochs": n}
                               for p, n in zip(pairs, sched)],
                     "epochs_per_tap": sched, "cumulative": c.cumulative, "initial_mse": initial,
                     "final_mse": final, "plan_epochs": c.optim.plan_epochs or sum(sched)}
        summary = {"stage": "warmup", "student": student.name, "teacher": ck.spec.name, "output": self.out,
                   **warm_info, "curves": curves, "epochs": res.history,
                   **res.figures(),
                   "wall_s": round(self.wall(), 2)}
        metrics = {"final_mse": final, "initial_mse": initial, "images_per_sec": summary["images_per_sec"]}
        entry = self.entry(s, {"epochs_per_tap": sched}, [{"path": ck.source, "sha256": ck.sha256}, student.parent()],
                           metrics, warmup=warm_info, curves=curves)
        return WarmupResult(summary, res.best_state, student.spec, student.history, entry,
                            {"dataset": s.ds.info.as_dict(), "warmup": warm_info},
                            artifacts=[c.plot] if c.plot else [], optimizer_state=res.optimizer_state)

    def write_more(self, s: Session, r: Result) -> None:
        assert isinstance(r, WarmupResult)
        c, sched = self.s, self.sched
        if c.plot:
            from indistill_cli.io.plots import plot_flow

            spans = [(f"{self.names[t]}", lo, hi) for t, lo, hi in phases(sched)]
            plot_flow(self.curves, c.plot, f"InDistill warmup: {self.teacher_ck.spec.name} -> "
                                           f"{self.student.name}", spans)
        if c.optim.plan_epochs:
            from indistill_cli.io.plan_state import plan_path, save_plan

            r.summary["plan"] = c.plan or plan_path(self.out)
            save_plan(r.summary["plan"], r.optimizer_state, c.optim.as_dict(), sum(sched), r.summary["sha256"])
            progress.info(f"wrote the lr plan ({sum(sched)} of {c.optim.plan_epochs} epochs done) and optimiser "
                          f"state to {r.summary['plan']}: continue with `distill --continue-plan`")

    def report(self, r: Result) -> None:
        initial, final = r.summary["initial_mse"], r.summary["final_mse"]
        progress.table("information flow (validation MSE per tap)", ["tap", "before", "after", "epochs"],
                       [[n, initial[n], final[n], k] for n, k in zip(self.names, self.sched)])

    def finish(self) -> None:
        if hasattr(self, "nets"):
            self.nets.nets.clear()


@dataclass
class WarmupResult(Result):
    optimizer_state: dict[str, Any] = field(default_factory=dict)  # for the plan sidecar (--plan-epochs)


def run_warmup(settings: WarmupSettings) -> dict[str, Any]:
    """The InDistill warmup of `settings.student` on the targets of the pruned teacher `settings.teacher`."""
    return Warmup(settings).run()
