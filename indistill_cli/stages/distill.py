"""`indistill distill`: stage-2 knowledge distillation with one or several KD methods plus CE.

The objective is `distiller.Distiller`; this module is the stage around it: options, the teacher and
student, the warmup's lr plan when continued, the flow curves (--flow-teacher), fitting and writing.
Adapters a method trains (regressors, embedders, CRD memory) are optimised with the student and saved
in a sidecar file, never in the student checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import losses, progress
from indistill_cli.engine import determinism
from indistill_cli.engine.loop import Engine, FitResult
from indistill_cli.engine.runtime import broadcast_state, maybe_compile, sync_batchnorm
from indistill_cli.engine.schedule import SELECT_KEYS, SELECT_PHRASES, OptimConfig, check_epochs, resolve_select
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.io.paths import sibling
from indistill_cli.losses.base import NON_NEGATIVE
from indistill_cli.metrics.flow import flow_mse
from indistill_cli.models import create_model
from indistill_cli.pruning.targets import FlowPair, pairs_from_teacher
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import DistillSettings
from indistill_cli.stages.ce import val_metrics
from indistill_cli.stages.distiller import (Distiller, KeepFlow, MethodSpec, distiller_step, feature_shapes,
                                            method_pairs, parse_methods, save_adapters, vector_flags)
from indistill_cli.stages.phases import method_phases, run_phases
from indistill_cli.stages.resolve import Resolved, fed_by, frozen, resolve_model
from indistill_cli.stages.session import Session

SUMMARY_METRICS = ("best_epoch", "val_top1", "val_map", "images_per_sec", "peak_memory_mb")
CALIBRATION_IMAGES = 512  # fixed training images a method may derive constants from (OFD's margins)


class Distill(Stage):
    """KD from `teacher_arg` into `student_arg`.

    `continue_plan`: take up the optimiser state and lr plan a `warmup --plan-epochs` left in its plan
    sidecar (`plan`, default beside the student), so warmup + KD are one run of one optimiser.
    `keep_flow` > 0 (ours): keep the warmup's per-tap MSE to `flow_teacher` in the loss, decaying."""

    name = "distill"
    resumable = True
    compiles = True
    s: DistillSettings

    def check(self) -> None:
        if self.s.epochs is not None:
            check_epochs(self.s.epochs)
        self.s.optim.validate()  # a bad option must fail before any loading or output
        check_weights(self.s.ce, self.s.keep_flow, self.s.keep_flow_decay)
        if self.s.keep_flow and not self.s.flow_teacher:
            raise BadInput("--keep-flow needs --flow-teacher PRUNED (the pruned teacher whose targets the warmup used)")
        if self.s.plan and not self.s.continue_plan:
            raise BadInput("--plan is the sidecar --continue-plan reads; add --continue-plan")
        if self.s.continue_plan and self.s.student == "-" and not self.s.plan:
            raise BadInput("--continue-plan with --student -: give the warmup's sidecar with --plan PATH")
        if self.s.adapters and self.s.adapters != "-" and Path(self.s.adapters).exists() and not self.force:
            raise BadInput(f"--adapters {self.s.adapters}: exists; pass --force to overwrite it")
        self.specs = parse_methods(self.s.method, self.s.param)

    def execute(self, s: Session) -> Result:
        rt = s.rt
        t = self.teacher_r = resolve_model(self.s.teacher, s.ds.info, "teacher", trained=True, role=None)
        if t.ckpt is not None and t.ckpt.role not in ("model", "pruned-teacher"):
            raise BadInput(f"{t.ckpt.source}: a {t.ckpt.role} checkpoint cannot be a teacher")
        st = self.student_r = resolve_model(self.s.student, s.ds.info, "student", seed=self.opts.seed)
        self.opt_state, self.optim, self.epochs = self.plan_for(st)  # what this run uses (a warmup's plan's rest)
        self.bind_state(s, parents=[t.parent().get("sha256") or t.name, st.parent().get("sha256") or st.name])
        teacher = fed_by(frozen(t.model, rt.device, rt.channels_last), t.spec, st.spec, s.ds.info)
        student = self.student = sync_batchnorm(st.model.to(rt.device), rt, self.opts.sync_bn)
        if rt.channels_last:
            student = self.student = student.to(memory_format=torch.channels_last)
        specs = self.specs
        ce = self.s.ce if self.s.ce is not None else min(losses.get(m.name).ce_weight for m in specs)
        if ce < 0:
            raise BadInput("--ce must be >= 0")
        self.ce_w = ce
        self.pairs, loss_mods = build_methods(specs, t, st, teacher, student, self.s.tap, self.s.embedding_tap, s)
        val_loader = s.eval_loader("val", st.spec) if s.val_split else None
        trains_head = ce > 0 or any(losses.get(m.name).uses == "logits" for m in specs)
        trains_emb = trains_head or any(losses.get(m.name).uses == "embedding" for m in specs)
        self.chosen = resolve_select(self.s.select, trains_head, trains_emb, val_loader is not None, "this distill run")
        self.curves: dict[str, list[float]] = {}
        self.phase_log: list[dict[str, Any]] = []
        flow, fixed, kf = None, [], None
        if self.s.flow_teacher:  # the paper's Figure 4: per-tap MSE to the pruned teacher's targets, every epoch
            flow, fixed, shared = self.flow_setup(s, student)
            if self.s.keep_flow:
                kf = KeepFlow(flow, self.s.keep_flow, self.s.keep_flow_decay, shared)
        self.distiller = Distiller(student, specs, self.pairs, loss_mods, ce, kf).to(rt.device)
        self.distiller.calibrate(lambda: s.first_images("train", st.spec, CALIBRATION_IMAGES), teacher)
        self.announce(s, kf is not None)
        res = self.res = self.fit(s, teacher, val_loader, flow, fixed)
        return self.summarise(s, res, kf is not None)

    def plan_for(self, st: Resolved) -> tuple[dict[str, Any] | None, OptimConfig, int]:
        """(optimiser state, optimiser config, epochs) of this run: its own, or the rest of a warmup's plan."""
        if not self.s.continue_plan:
            return None, self.s.optim, self.s.epochs if self.s.epochs is not None else 30
        from indistill_cli.io.plan_state import load_plan, plan_path

        if st.ckpt is None:
            raise BadInput("--continue-plan needs the warmup's output checkpoint as --student, not an architecture "
                           "name")
        path = self.s.plan or plan_path(st.ckpt.source)
        opt_state, options, done = load_plan(path, st.ckpt.sha256)
        try:
            planned = OptimConfig(**options)
        except TypeError as e:
            raise BadInput(f"{path}: not a readable plan sidecar ({e})") from None
        left = planned.plan_epochs - done
        if left < 1:
            raise BadInput(f"{path}: the plan's {planned.plan_epochs} epochs are all done by the warmup; give "
                           f"warmup --plan-epochs more than its own epochs")
        if self.s.epochs is not None and self.s.epochs != left:
            raise BadInput(f"--epochs {self.s.epochs} with --continue-plan: the warmup's plan has {left} epochs left "
                           f"({planned.plan_epochs} planned, {done} done); drop --epochs or pass --epochs {left}")
        planned.plan_offset = done
        return opt_state, planned, left

    def flow_setup(self, s: Session, student: nn.Module) -> tuple[FlowPair, list[torch.Tensor], bool]:
        """The pruned teacher's flow pair, fixed validation batches, the curves' first point, and whether the
        pruned teacher is a probe-mode pruning of the KD teacher itself (then its targets come for free)."""
        fck, tck = load_checkpoint(self.s.flow_teacher), self.teacher_r.ckpt
        pairs = pairs_from_teacher(fck, self.student_r.spec)
        shared = (tck is not None and fck.info.get("pruning", {}).get("mode") == "probe" and fck.spec == tck.spec
                  and fck.state.keys() == tck.state.keys()
                  and all(torch.equal(fck.state[k], tck.state[k]) for k in tck.state))
        fteacher = fed_by(frozen(create_model(fck).model, s.rt.device, s.rt.channels_last), fck.spec,
                          self.student_r.spec, s.ds.info)
        flow = FlowPair(fteacher, student, pairs)
        fixed = s.first_images(s.val_split or "test", self.student_r.spec, self.s.flow_images)
        self.curves.update({p.student_tap: [v] for p, v in zip(pairs, flow_mse(flow, fixed, s.rt))})
        return flow, fixed, shared

    def announce(self, s: Session, kept: bool) -> None:
        t, st, optim, ce = self.teacher_r, self.student_r, self.optim, self.ce_w
        self.from_warmup = any(h.get("stage") == "warmup" for h in st.history)
        desc = " + ".join([f"{ce:g}*ce"] * bool(ce) + [f"{m.weight:g}*{m.name}" for m in self.specs]
                          + ([f"{self.s.keep_flow:g}*{self.s.keep_flow_decay:g}^epoch*keep_flow (ours)"] if kept else []))
        progress.info(f"distill {t.name} -> {st.name}{' (from InDistill warmup)' if self.from_warmup else ''} on "
                      f"{s.ds.info.name}: loss = {desc}; keeps the {SELECT_PHRASES[self.chosen]} ({s.rt.describe()})")
        if self.s.continue_plan:
            progress.info(f"continuing the warmup's lr plan: epochs {optim.plan_offset + 1}-"
                          f"{optim.plan_offset + self.epochs} of {optim.plan_epochs} ({optim.optimizer}, lr "
                          f"{optim.lr:g}, {optim.schedule}), optimiser state carried over for "
                          f"{len(self.opt_state)} parameter tensors")

    def fit(self, s: Session, teacher: nn.Module, val_loader: Any, flow: FlowPair | None,
            fixed: list[torch.Tensor]) -> FitResult:
        rt, distiller, student, curves = s.rt, self.distiller, self.student, self.curves
        if self.opts.compile:
            object.__setattr__(distiller, "run_student", maybe_compile(student, True))
        # student + trainable adapters in DDP under torchrun (distiller_step); the teacher stays outside
        broadcast_state(distiller.losses, rt)
        check_deterministic(distiller, teacher, rt, self.student_r.spec)
        loader = s.train_loader(self.student_r.spec)
        log = self.phase_log
        if self.state is not None:
            self.state.register("curves", lambda: curves, lambda saved: (curves.clear(), curves.update(saved)))
            self.state.register("phases", lambda: log, lambda saved: (log.clear(), log.extend(saved)))
        run_phases(method_phases(distiller), distiller, teacher, loader, rt, self.optim, self.state,
                   self.opts.skip_nonfinite, log)
        step = distiller_step(distiller, teacher, rt)
        emb_tap = self.student_r.spec.embedding.name if self.chosen == "map" else None

        def validate(epoch: int) -> dict[str, float]:
            out: dict[str, float] = {}
            if flow is not None:
                for p, v in zip(flow.pairs, flow_mse(flow, fixed, rt)):
                    curves[p.student_tap].append(v)
                    out[f"val_mse_{p.student_tap}"] = v
            return out if val_loader is None else {**val_metrics(student, val_loader, s, emb_tap), **out}

        engine = Engine(rt, self.optim, self.epochs, select=SELECT_KEYS[self.chosen],
                        label=f"distill {self.student_r.name}", skip_nonfinite=self.opts.skip_nonfinite,
                        state=self.state)
        return engine.fit(distiller, student, step, loader, validate, on_epoch=s.on_epoch, opt_state=self.opt_state)

    def summarise(self, s: Session, res: FitResult, kept: bool) -> Result:
        optim, t, st = self.optim, self.teacher_r, self.student_r
        method_rec = [{"name": m.name, "weight": m.weight, "uses": losses.get(m.name).uses,
                       "hparams": losses.get(m.name).recorded_hparams(m.hparams),
                       "pairs": [list(p) for p in pairs]} for m, pairs in zip(self.specs, self.pairs)]
        best = res.history[res.best_epoch - 1] if res.history else {}
        summary = {"stage": "distill", "teacher": t.name, "student": st.name,
                   "output": self.out, "methods": method_rec, "ce": self.ce_w, "from_warmup": self.from_warmup,
                   "select": self.chosen, "best_epoch": res.best_epoch, "val_top1": best.get("val_top1"),
                   "val_map": best.get("val_map"), "epochs_run": self.epochs,
                   "plan": {"epochs": optim.plan_epochs or self.epochs, "offset": optim.plan_offset,
                            "continued": self.s.continue_plan},
                   "keep_flow": {"weight": self.s.keep_flow, "decay": self.s.keep_flow_decay,
                                 "note": "ours, not in the paper"} if kept else None,
                   **res.figures(),
                   "wall_s": round(self.wall(), 2), "epochs": res.history}
        if self.curves:
            summary["curves"] = self.curves
        if self.phase_log:
            summary["phases"] = self.phase_log
        options = {"methods": method_rec, "ce": self.ce_w, "epochs": self.epochs, "select": self.chosen,
                   **self.optim.as_dict()}
        metrics = {k: summary[k] for k in SUMMARY_METRICS if summary[k] is not None}
        entry = self.entry(s, options, [t.parent(), st.parent()], metrics, from_warmup=self.from_warmup,
                           teacher=t.spec.name, curve=res.history,
                           **({"curves": self.curves} if self.curves else {}),
                           **({"phases": self.phase_log} if self.phase_log else {}))
        return Result(summary, res.best_state, st.spec, st.history, entry, {"dataset": s.ds.info.as_dict()})

    def write_more(self, s: Session, r: Result) -> None:
        distiller = self.distiller
        has_state = any(len(l.state_dict()) or l.extra_state_tensors() for l in distiller.losses)
        adapters = self.s.adapters
        if adapters is None and has_state and self.out != "-":
            adapters = sibling(self.out, ".adapters.safetensors")
        if adapters and has_state:
            save_adapters(adapters, distiller)
            r.summary["adapters"] = adapters

    def report(self, r: Result) -> None:
        summary = r.summary
        progress.info(f"wrote {self.out if self.out != '-' else 'stdout'} ({SELECT_PHRASES[self.chosen]}: epoch "
                      f"{self.res.best_epoch}, val top-1 {progress.fmt(summary['val_top1'])}"
                      + (f", val mAP {progress.fmt(summary['val_map'])}" if summary["val_map"] is not None else "")
                      + ")")

    def finish(self) -> None:
        if hasattr(self, "distiller"):
            self.distiller.close()


def check_weights(ce: float | None, keep_flow: float, keep_flow_decay: float) -> None:
    """--ce and --keep-flow are weights (finite, >= 0), --keep-flow-decay a factor in (0, 1]."""
    if ce is not None and ce not in NON_NEGATIVE:
        raise BadInput(f"--ce must be {NON_NEGATIVE}, got {ce:g}")
    if keep_flow not in NON_NEGATIVE or not 0 < keep_flow_decay <= 1:
        raise BadInput(f"--keep-flow must be {NON_NEGATIVE} and --keep-flow-decay in (0, 1], got {keep_flow:g} and "
                       f"{keep_flow_decay:g}")


def build_methods(specs: list[MethodSpec], teacher_r: Resolved, student_r: Resolved, teacher: nn.Module,
                  student: nn.Module, tap_pairs: list[str], embedding_pair: str | None,
                  s: Session) -> tuple[list[list[tuple[str, str]]], list[nn.Module]]:
    """Each method's (teacher tap, student tap) pairs and its loss module, sized by one probing forward."""
    probe = torch.zeros(2, student_r.spec.in_channels, *student_r.spec.input_size, device=s.rt.device)  # a batch
    pairs_all, loss_mods = [], []
    for m in specs:
        cls = losses.get(m.name)
        pairs = method_pairs(cls.uses, teacher_r.spec, student_r.spec, tap_pairs, embedding_pair, cls.preact,
                             cls.with_embedding)
        vec = vector_flags(cls, len(pairs))
        t_shapes = feature_shapes(teacher, [t for t, _ in pairs], vec, probe)
        s_shapes = feature_shapes(student, [s_ for _, s_ in pairs], vec, probe)
        try:
            loss_mods.append(cls(s_shapes, t_shapes, s.ds.info.num_classes, len(s.ds.train), **m.hparams))
        except ValueError as e:
            raise BadInput(f"--method {m.name}: {e}") from None
        pairs_all.append(pairs)
    return pairs_all, loss_mods


def check_deterministic(distiller: Distiller, teacher: nn.Module, rt: Any, spec: dict[str, Any]) -> None:
    """--deterministic on CUDA: the KD step and each method phase probed (`engine.determinism`) before any of
    them trains; the methods' extra state (CRD's negatives generator) is left as it was."""
    if not determinism.needs_check(rt):
        return
    x = determinism.blank_batch(spec, rt)
    y, idx = torch.zeros(x.shape[0], dtype=torch.long, device=rt.device), torch.arange(x.shape[0], device=rt.device)
    saved = [loss.extra_state_tensors() for loss in distiller.losses]
    try:
        for run in [None, *method_phases(distiller)]:
            phase = None if run is None else (run.index, run.phase)
            what = f"distill ({'the KD step' if run is None else run.part})"
            determinism.check_kernels(rt, distiller, lambda p=phase: distiller(x, y, idx, 0, teacher, phase=p)["loss"],
                                      what)
    finally:
        for loss, state in zip(distiller.losses, saved):
            loss.load_extra_state_tensors(state)


def run_distill(settings: DistillSettings) -> dict[str, Any]:
    """KD from `settings.teacher` into `settings.student` (see `Distill`)."""
    return Distill(settings).run()
