"""`indistill warmup`: the InDistill stage 1b, layer-wise copying of the teacher's feature maps.

Taps are trained shallow to deep on the curriculum S_l = a + b*l; during tap l's epochs the loss is
only MSE(student tap l, teacher target tap l) (plus earlier taps with --cumulative), no CE. The
student's forward stops right after tap l, so layers past it get no gradient and cost nothing.
After each epoch the MSE of every tap on fixed validation batches is recorded: the information-flow
curves of the paper's Figure 2.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.checkpoint import load_checkpoint
from indistill_cli.common import check_output, history_entry, resolve_model, write_model
from indistill_cli.curriculum import epochs_per_tap, phases, tap_of_epoch
from indistill_cli.data import check_compatible
from indistill_cli.errors import BadInput
from indistill_cli.engine import Engine, OptimConfig, resolve_select
from indistill_cli.flow import FlowPair, StudentUpTo, flow_mse, mse, pairs_from_teacher
from indistill_cli.models import model_from_checkpoint, spec_name
from indistill_cli.runtime import barrier, broadcast_state, ddp, maybe_compile, sync_batchnorm
from indistill_cli.session import RunOptions, open_session


def fixed_batches(session: Any, spec: dict[str, Any], max_images: int) -> list[torch.Tensor]:
    """The first `max_images` validation images (test split if no validation), as model-ready batches."""
    split = session.val_split or "test"
    out, n = [], 0
    for b in session.eval_loader(split, spec, shard=False):
        out.append(b.x[: max_images - n])
        n += out[-1].shape[0]
        if n >= max_images:
            break
    return out


def run_warmup(teacher_arg: str, student_arg: str, out: str, optim: OptimConfig, opts: RunOptions,
               a: float = 2.0, b: float = 1.0, explicit: str | None = None, cumulative: bool = False,
               plot: str | None = None, flow_images: int = 1000, force: bool = False, select: str = "auto",
               plan: str | None = None) -> dict[str, Any]:
    """The warmup. `optim.plan_epochs` > 0 makes it the first part of one lr plan over that many student
    epochs: the lr follows the plan, and the optimiser state and plan go to a sidecar (`plan`, default
    OUT.plan.safetensors) that `distill --continue-plan` takes up."""
    check_output(out, force)
    if flow_images < 1:
        raise BadInput(f"--flow-images must be at least 1, got {flow_images}")
    optim.validate()  # a bad option must fail before any loading or output
    # the warmup trains taps only: no loss reaches the embedding or the head, so only the last epoch is meaningful
    resolve_select(select, False, False, True, "the warmup (tap MSE only)")
    if optim.plan_epochs and out == "-" and not plan:
        raise BadInput("--plan-epochs with -o -: give the plan sidecar's path with --plan PATH")
    if plan and not optim.plan_epochs:
        raise BadInput("--plan is where --plan-epochs writes the plan sidecar; add --plan-epochs N")
    from indistill_cli.resume import RunState

    state = RunState("warmup", out, {"stage": "warmup", "teacher": teacher_arg, "student": student_arg, "a": a, "b": b,
                                     "epochs_per_tap": explicit, "cumulative": cumulative, "flow_images": flow_images,
                                     "optim": optim.as_dict(), "opts": opts.as_dict()}, opts, force=force)
    state.check()
    t0 = time.perf_counter()
    teacher_ck = load_checkpoint(teacher_arg)
    if teacher_ck.role not in ("pruned-teacher", "model"):
        raise BadInput(f"{teacher_ck.source}: is a {teacher_ck.role} checkpoint; expected a (pruned) teacher")
    s = open_session(opts)
    check_compatible(s.ds.info, teacher_ck.spec, f"teacher {teacher_ck.source}")
    student = resolve_model(student_arg, s.ds.info, "student", seed=opts.seed)
    state.add_key("parents", [teacher_ck.sha256, student.parent().get("sha256") or student.name])
    state.is_main = s.rt.is_main
    pairs = pairs_from_teacher(teacher_ck, student.spec)
    sched = epochs_per_tap(len(pairs), a, b, explicit)
    if optim.plan_epochs and optim.plan_epochs <= sum(sched):
        raise BadInput(f"--plan-epochs {optim.plan_epochs}: the plan must be longer than the warmup's own "
                       f"{sum(sched)} epochs (it spans warmup + KD)")
    epoch_tap = tap_of_epoch(sched)
    rt = s.rt
    teacher = model_from_checkpoint(teacher_ck).to(rt.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    model = sync_batchnorm(student.model.to(rt.device), rt, opts.sync_bn)
    broadcast_state(model, rt)  # every rank starts from rank 0's student (phases wrap only part of it in DDP)
    if rt.channels_last:
        model, teacher = model.to(memory_format=torch.channels_last), teacher.to(memory_format=torch.channels_last)
    flow = FlowPair(teacher, model, pairs)
    loader = s.train_loader(student.spec)
    fixed = fixed_batches(s, student.spec, flow_images)
    flow.announce_spatial(fixed[0])
    progress.info(f"warmup {student.name} from {spec_name(teacher_ck.spec)} on {s.ds.info.name} ({rt.describe()}): "
                  + ", ".join(f"{p.teacher_tap}->{p.student_tap} {n} ep" for p, n in zip(pairs, sched)))
    names = [p.student_tap for p in pairs]
    curves: dict[str, list[float]] = {n: [v] for n, v in zip(names, flow_mse(flow, fixed, rt))}
    # a resumed run continues the curves it had (the first point is the untrained student's)
    state.register("curves", lambda: curves, lambda saved: (curves.clear(), curves.update(saved)))

    phase_nets: dict[int, Any] = {}

    def phase_net(l: int, x: torch.Tensor) -> Any:
        """What tap l's epochs train: the student up to tap l (StudentUpTo), in DDP under torchrun.

        The forward stops after tap l, so the parameters past it get no gradient in this phase. Plain DDP
        (find_unused_parameters=False) would wait for them forever, and find_unused_parameters=True
        would walk the autograd graph every step of every stage to find what a phase change already
        tells us. So DDP is rebuilt once per curriculum phase, over the module that phase runs, with the
        parameters (and their modules' buffers) no gradient reaches excluded: a probe backward finds
        them, identically on every rank. Each rebuild broadcasts rank 0's state, which all ranks already
        share (broadcast at the start, then identical all-reduced updates).
        """
        if l not in phase_nets:
            phase_nets.clear()
            gc.collect()  # the previous phase's DDP (its gradient hooks) must be gone before the next one
            m = StudentUpTo(flow, 0 if cumulative else l, l)
            ignore = m.unused_state(torch.zeros_like(x[:2])) if rt.distributed else []
            phase_nets[l] = maybe_compile(ddp(m, rt, ignore), opts.compile)
        return phase_nets[l]

    def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        l = epoch_tap[epoch]
        first = 0 if cumulative else l
        targets = flow.targets(batch.x, l)
        maps = phase_net(l, batch.x)(batch.x)  # taps first..l
        terms = {f"mse_{names[i]}": mse(maps[i - first], targets[i]) for i in range(first, l + 1)}
        return {"loss": sum(terms.values()), **terms}

    def validate(epoch: int) -> dict[str, float]:
        vals = flow_mse(flow, fixed, rt)
        for n, v in zip(names, vals):
            curves[n].append(v)
        return {"active_tap": epoch_tap[epoch] + 1, **{f"val_mse_{n}": v for n, v in zip(names, vals)}}

    engine = Engine(rt, optim, len(epoch_tap), label=f"warmup {student.name}", skip_nonfinite=opts.skip_nonfinite,
                    state=state)
    res = engine.fit(model, model, step, loader, validate)
    wall = time.perf_counter() - t0
    initial = {n: c[0] for n, c in curves.items()}
    final = {n: c[-1] for n, c in curves.items()}
    spans = [(f"{names[t]}", lo, hi) for t, lo, hi in phases(sched)]
    if plot and rt.is_main:
        from indistill_cli.plots import plot_flow

        plot_flow(curves, plot, f"InDistill warmup: {spec_name(teacher_ck.spec)} -> {student.name}", spans)
    warm_info = {"teacher": {"path": teacher_ck.source, "sha256": teacher_ck.sha256},
                 "pairs": [{"teacher_tap": p.teacher_tap, "student_tap": p.student_tap, "epochs": n}
                           for p, n in zip(pairs, sched)],
                 "epochs_per_tap": sched, "cumulative": cumulative, "initial_mse": initial, "final_mse": final,
                 "plan_epochs": optim.plan_epochs or sum(sched)}
    summary = {"stage": "warmup", "student": student.name, "teacher": spec_name(teacher_ck.spec), "output": out,
               **warm_info, "curves": curves, "epochs": res.history, "images_per_sec": round(res.images_per_sec, 1),
               "peak_memory_mb": round(res.peak_memory_mb, 1), "wall_s": round(wall, 2)}
    if rt.is_main:
        options = {"a": a, "b": b, "epochs_per_tap": sched, "cumulative": cumulative, "flow_images": flow_images,
                   **optim.as_dict(), **opts.as_dict()}
        metrics = {"final_mse": final, "initial_mse": initial, "images_per_sec": summary["images_per_sec"]}
        hist = student.history + [history_entry(
            "warmup", options, [{"path": teacher_ck.source, "sha256": teacher_ck.sha256}, student.parent()],
            metrics, wall, s.ds.info.name, warmup=warm_info, curves=curves, device=rt.describe())]
        summary["sha256"] = write_model(out, res.best_state, student.spec, hist, {"dataset": s.ds.info.as_dict(),
                                                                                   "warmup": warm_info})
        if optim.plan_epochs:
            from indistill_cli.plan_state import plan_path, save_plan

            summary["plan"] = plan or plan_path(out)
            save_plan(summary["plan"], res.optimizer_state, optim, sum(sched), summary["sha256"])
            progress.info(f"wrote the lr plan ({sum(sched)} of {optim.plan_epochs} epochs done) and optimiser state "
                          f"to {summary['plan']}: continue with `distill --continue-plan`")
        state.clear()  # the outputs are written: the resume state has done its job
        progress.table("information flow (validation MSE per tap)", ["tap", "before", "after", "epochs"],
                       [[n, initial[n], final[n], k] for n, k in zip(names, sched)])
    phase_nets.clear()
    barrier(rt)  # no rank leaves before rank 0 has written
    return summary
