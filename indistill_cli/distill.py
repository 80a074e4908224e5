"""`indistill distill`: stage-2 knowledge distillation with one or several KD methods plus CE.

loss = ce * CE(student) + sum_m weight_m * method_m(student feats, teacher feats). Each method reads
logits, the embedding, or paired taps, all captured by forward hooks, so any teacher/student pair
(timm and torchvision included) works. The teacher is frozen, eval mode, under inference_mode.
Adapters a method trains (regressors, embedders, CRD memory) are optimised with the student and
saved in a sidecar file, never in the student checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from indistill_cli import losses, progress
from indistill_cli.checkpoint import atomic_write
from indistill_cli.common import check_output, history_entry, resolve_model, write_model
from indistill_cli.engine import SELECT_KEYS, Engine, OptimConfig, resolve_select
from indistill_cli.errors import BadInput
from indistill_cli.evaluation import classify
from indistill_cli.flow import flow_mse, mse
from indistill_cli.losses.base import Feats
from indistill_cli.models import spec_name
from indistill_cli.runtime import barrier, broadcast_state, ddp, maybe_compile, sync_batchnorm
from indistill_cli.session import RunOptions, open_session
from indistill_cli.taps import TapSet, as_vector


@dataclass
class MethodSpec:
    name: str
    weight: float
    hparams: dict[str, float]


def parse_methods(methods: list[str], params: list[str]) -> list[MethodSpec]:
    """'kd', 'pkt:0.5' and '--param kd.temperature=2' into method specs with weights and hparams."""
    if not methods:
        raise BadInput("give at least one --method (" + ", ".join(losses.names()) + ")")
    out: list[MethodSpec] = []
    for m in methods:
        name, _, w = m.partition(":")
        try:
            cls = losses.get(name)
        except KeyError as e:
            raise BadInput(str(e).strip("'\"")) from None
        try:
            weight = float(w) if w else float(cls.default_weight)
        except ValueError:
            raise BadInput(f"--method {m}: the weight after ':' must be a number") from None
        if any(o.name == name for o in out):
            raise BadInput(f"--method {name} given twice")
        out.append(MethodSpec(name, weight, {}))
    for p in params:
        key, eq, val = p.partition("=")
        meth, dot, hp = key.partition(".")
        target = next((o for o in out if o.name == meth), None)
        if not (eq and dot) or target is None:
            raise BadInput(f"--param {p}: expected METHOD.NAME=VALUE for a method given with --method")
        try:
            target.hparams[hp] = float(val)
        except ValueError:
            raise BadInput(f"--param {p}: value must be a number") from None
    return out


def _pairs_for(kind: str, t_spec: dict[str, Any], s_spec: dict[str, Any], tap_pairs: list[str],
               emb_pair: str | None) -> list[tuple[str, str]]:
    if kind == "logits":
        return []
    if kind == "embedding":
        if emb_pair:
            t, _, s = emb_pair.partition(":")
            if not t or not s:
                raise BadInput(f"--embedding-tap {emb_pair}: expected TEACHER_TAP:STUDENT_TAP, e.g. "
                               f"{t_spec['embedding']['name']}:{s_spec['embedding']['name']}")
            return [(t, s)]
        return [(t_spec["embedding"]["name"], s_spec["embedding"]["name"])]
    from indistill_cli.prune import pair_taps

    try:
        return pair_taps(t_spec, s_spec, tap_pairs)
    except BadInput as e:  # pair_taps speaks of prune's --pair; here the option is --tap
        raise BadInput(str(e).replace("--pair", "--tap")) from None


class TeacherOut(NamedTuple):
    """The frozen teacher's logits and tapped features for one batch (inference tensors), and the
    pruned teacher's per-tap targets when the flow is kept (--keep-flow)."""

    logits: torch.Tensor
    taps: dict[str, torch.Tensor]
    flow: list[torch.Tensor] | None = None


@dataclass
class KeepFlow:
    """--keep-flow (ours, not in the InDistill paper): the warmup's per-tap MSE terms stay in the KD
    loss with weight `weight * decay**epoch` (epoch counted from the start of KD), so the alignment
    the warmup built is released gradually instead of being undone in the first KD epoch.

    `shared`: the pruned teacher is the KD teacher itself (a probe-mode pruning of it), so its targets
    are the KD teacher's tapped maps at the kept channels, from the same forward."""

    flow: Any  # flow.FlowPair: the pruned teacher, the student, the paired taps
    weight: float
    decay: float
    shared: bool

    def weight_at(self, epoch: int) -> float:
        return self.weight * self.decay ** epoch

    def targets(self, x: torch.Tensor, taps: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        pairs = self.flow.pairs
        if not self.shared:
            return self.flow.targets(x, len(pairs) - 1)
        return [taps[p.teacher_tap] if p.keep is None else taps[p.teacher_tap].index_select(1, p.keep.to(x.device))
                for p in pairs]


class Distiller(nn.Module):
    """Student + KD methods: one forward gives the total loss and its named terms.

    Under torchrun the Distiller itself (the student plus the methods' trainable adapters, e.g. FitNet
    regressors) is what DDP wraps, so adapter gradients are all-reduced like the student's; the teacher
    is an argument, never a submodule, so it stays outside DDP (frozen, eval mode, inference_mode).
    Tap hooks are registered once, not per step, and their captures are dropped after each use.
    """

    def __init__(self, student: nn.Module, methods: list[MethodSpec], method_pairs: list[list[tuple[str, str]]],
                 losses_: list[nn.Module], ce: float, keep_flow: KeepFlow | None = None) -> None:
        super().__init__()
        self.student = student
        self.losses = nn.ModuleList(losses_)
        self.methods, self.method_pairs, self.ce = methods, method_pairs, ce
        object.__setattr__(self, "keep_flow", keep_flow)  # holds the flow teacher: not a submodule (no DDP, no grads)
        flow_pairs = keep_flow.flow.pairs if keep_flow is not None else []
        self.s_taps = sorted({s for pairs in method_pairs for _, s in pairs} | {p.student_tap for p in flow_pairs})
        self.t_taps = sorted({t for pairs in method_pairs for t, _ in pairs}
                             | ({p.teacher_tap for p in flow_pairs} if keep_flow is not None and keep_flow.shared else set()))
        self._tapsets: dict[int, TapSet] = {}
        object.__setattr__(self, "run_student", None)  # e.g. torch.compile(student); not a registered submodule

    def _taps_on(self, model: nn.Module, names: list[str]) -> TapSet | None:
        if not names:
            return None
        ts = self._tapsets.get(id(model))
        if ts is None or ts.model is not model:
            ts = self._tapsets[id(model)] = TapSet(model, names)
        return ts

    def close(self) -> None:
        """Remove the tap hooks from the teacher and the student."""
        for ts in self._tapsets.values():
            ts.close()
        self._tapsets.clear()

    def teacher_outputs(self, x: torch.Tensor, teacher: nn.Module) -> TeacherOut:
        tt = self._taps_on(teacher, self.t_taps)
        with torch.inference_mode():
            logits = teacher(x)
        taps: dict[str, torch.Tensor] = {}
        if tt is not None:
            taps, tt.out = tt.out, {}
        flow = None
        if self.keep_flow is not None:
            with torch.inference_mode():
                flow = self.keep_flow.targets(x, taps)
            flow = [f.float().clone() for f in flow]  # ordinary tensors: they enter the loss
        return TeacherOut(logits, taps, flow)

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int,
                teacher: nn.Module | TeacherOut, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """`teacher`: the teacher module, or its outputs for this batch (what the step passes when DDP wraps
        the distiller); `net`: what runs the student (default: the student, or run_student when set)."""
        t = teacher if isinstance(teacher, TeacherOut) else self.teacher_outputs(x, teacher)
        t_logits, t_out = t.logits, t.taps
        st = self._taps_on(self.student, self.s_taps)
        if net is None:
            net = self.run_student if self.run_student is not None else self.student
        s_logits = net(x)
        s_out: dict[str, torch.Tensor] = {}
        if st is not None:
            s_out, st.out = st.out, {}
        terms: dict[str, torch.Tensor] = {}
        if self.ce:
            terms["ce"] = F.cross_entropy(s_logits, y)
        with torch.autocast(x.device.type, enabled=False):  # KD terms in fp32 (Gram matrices, softmax at T)
            for m, pairs, loss in zip(self.methods, self.method_pairs, self.losses):
                kind = type(loss).uses
                prep = as_vector if kind == "embedding" else (lambda v: v)
                s_f = Feats(s_logits.float(), [prep(s_out[s]).float() for _, s in pairs])
                t_f = Feats(t_logits.float(), [prep(t_out[t]).float() for t, _ in pairs])
                terms[m.name] = loss(s_f, t_f, y, idx, epoch)
            if t.flow is not None:
                terms["keep_flow"] = sum(mse(s_out[p.student_tap], f) for p, f in zip(self.keep_flow.flow.pairs, t.flow))
        total = (self.ce * terms["ce"] if self.ce else 0) + sum(
            m.weight * terms[m.name] for m in self.methods)
        if t.flow is not None:
            total = total + self.keep_flow.weight_at(epoch) * terms["keep_flow"]
        return {"loss": total, **terms, "_correct": (s_logits.argmax(1) == y).sum()}


def _feature_shapes(model: nn.Module, names: list[str], kind: str, x: torch.Tensor) -> list[tuple[int, ...]]:
    if not names:
        return []
    was = model.training
    model.eval()
    with torch.no_grad(), TapSet(model, names) as taps:
        model(x)
        out = [taps.out[n] for n in names]
    model.train(was)
    return [tuple((as_vector(o) if kind == "embedding" else o).shape[1:]) for o in out]


def save_adapters(path: str, distiller: Distiller) -> None:
    """The methods' trained state (regressors, embedders, memory banks) in a safetensors sidecar."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for m, loss in zip(distiller.methods, distiller.losses):
        for k, v in loss.state_dict().items():
            tensors[f"{m.name}/{k}"] = v.detach().cpu().contiguous()
        for k, v in loss.extra_state_tensors().items():
            tensors[f"{m.name}/@{k}"] = v.detach().cpu().contiguous()
    meta = {"format": "indistill-adapters/1",
            "methods": json.dumps([{"name": m.name, "weight": m.weight, "hparams": m.hparams}
                                   for m in distiller.methods])}
    atomic_write(path, save(tensors, metadata=meta))


def run_distill(teacher_arg: str, student_arg: str, out: str, methods: list[str], params: list[str],
                ce: float | None, tap_pairs: list[str], embedding_pair: str | None, epochs: int | None,
                optim: OptimConfig, opts: RunOptions, adapters: str | None = None,
                force: bool = False, flow_teacher: str | None = None, flow_images: int = 1000,
                select: str = "auto", continue_plan: bool = False, plan: str | None = None,
                keep_flow: float = 0.0, keep_flow_decay: float = 1.0) -> dict[str, Any]:
    """KD from `teacher_arg` into `student_arg`.

    `continue_plan`: take up the optimiser state and lr plan a `warmup --plan-epochs` left in its plan
    sidecar (`plan`, default beside the student), so warmup + KD are one run of one optimiser.
    `keep_flow` > 0 (ours): keep the warmup's per-tap MSE to `flow_teacher` in the loss, decaying."""
    check_output(out, force)
    if epochs is not None and epochs < 1:
        raise BadInput(f"--epochs must be at least 1, got {epochs}")
    optim.validate()  # a bad option must fail before any loading or output
    if ce is not None and not ce >= 0:
        raise BadInput(f"--ce must be >= 0, got {ce}")
    if not (keep_flow >= 0 and 0 < keep_flow_decay <= 1):
        raise BadInput(f"--keep-flow must be >= 0 and --keep-flow-decay in (0, 1], got {keep_flow} and {keep_flow_decay}")
    if keep_flow and not flow_teacher:
        raise BadInput("--keep-flow needs --flow-teacher PRUNED (the pruned teacher whose targets the warmup used)")
    if plan and not continue_plan:
        raise BadInput("--plan is the sidecar --continue-plan reads; add --continue-plan")
    if continue_plan and student_arg == "-" and not plan:
        raise BadInput("--continue-plan with --student -: give the warmup's sidecar with --plan PATH")
    if adapters and adapters != "-" and Path(adapters).exists() and not force:
        raise BadInput(f"--adapters {adapters}: exists; pass --force to overwrite it")
    t0 = time.perf_counter()
    specs = parse_methods(methods, params)
    from indistill_cli.resume import RunState

    state = RunState("distill", out, {"stage": "distill", "teacher": teacher_arg, "student": student_arg,
                                      "methods": methods, "params": params, "ce": ce, "taps": tap_pairs,
                                      "embedding_tap": embedding_pair, "epochs": epochs, "flow_teacher": flow_teacher,
                                      "flow_images": flow_images, "optim": optim.as_dict(), "opts": opts.as_dict(),
                                      "select": select, "continue_plan": continue_plan, "keep_flow": keep_flow,
                                      "keep_flow_decay": keep_flow_decay}, opts, force=force)
    state.check()
    s = open_session(opts)
    rt = s.rt
    teacher_r = resolve_model(teacher_arg, s.ds.info, "teacher", trained=True, role=None)
    if teacher_r.ckpt is not None and teacher_r.ckpt.role not in ("model", "pruned-teacher"):
        raise BadInput(f"{teacher_r.ckpt.source}: a {teacher_r.ckpt.role} checkpoint cannot be a teacher")
    student_r = resolve_model(student_arg, s.ds.info, "student", seed=opts.seed)
    opt_state, optim, epochs = _plan_for(continue_plan, plan, student_r, student_arg, optim, epochs)
    state.add_key("parents", [teacher_r.parent().get("sha256") or teacher_r.name,
                              student_r.parent().get("sha256") or student_r.name])
    state.is_main = rt.is_main
    teacher = teacher_r.model.to(rt.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = sync_batchnorm(student_r.model.to(rt.device), rt, opts.sync_bn)
    if rt.channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    ce_w = ce if ce is not None else min(losses.get(m.name).ce_weight for m in specs)
    if ce_w < 0:
        raise BadInput("--ce must be >= 0")
    method_pairs, loss_mods = _build_methods(specs, teacher_r, student_r, teacher, student, tap_pairs,
                                             embedding_pair, s, rt)
    val_loader = s.eval_loader("val", student_r.spec) if s.val_split else None
    trains_head = ce_w > 0 or any(losses.get(m.name).uses == "logits" for m in specs)
    trains_emb = trains_head or any(losses.get(m.name).uses == "embedding" for m in specs)
    chosen = resolve_select(select, trains_head, trains_emb, val_loader is not None, "this distill run")
    flow, fixed, curves, kf = None, [], {}, None
    if flow_teacher:  # the paper's Figure 4: per-tap MSE to the pruned teacher's targets, every epoch
        flow, fixed, curves, shared = _flow_setup(flow_teacher, teacher_r, student_r, student, s, rt, flow_images)
        if keep_flow:
            kf = KeepFlow(flow, keep_flow, keep_flow_decay, shared)
    distiller = Distiller(student, specs, method_pairs, loss_mods, ce_w, kf).to(rt.device)
    if opts.compile:
        object.__setattr__(distiller, "run_student", maybe_compile(student, True))
    # student + trainable adapters in DDP under torchrun; the teacher stays outside. The methods' buffers
    # (CRD's memory banks) are not broadcast every step: they start equal and get every rank's updates.
    broadcast_state(distiller.losses, rt)
    net = ddp(distiller, rt, [f"losses.{n}" for n, _ in distiller.losses.named_buffers()])
    from_warmup = any(h.get("stage") == "warmup" for h in student_r.history)
    desc = " + ".join([f"{ce_w:g}*ce"] * bool(ce_w) + [f"{m.weight:g}*{m.name}" for m in specs]
                      + ([f"{keep_flow:g}*{keep_flow_decay:g}^epoch*keep_flow (ours)"] if kf else []))
    progress.info(f"distill {teacher_r.name} -> {student_r.name}{' (from InDistill warmup)' if from_warmup else ''} "
                  f"on {s.ds.info.name}: loss = {desc}; keeps the {_select_phrase(chosen)} ({rt.describe()})")
    if continue_plan:
        progress.info(f"continuing the warmup's lr plan: epochs {optim.plan_offset + 1}-{optim.plan_offset + epochs} "
                      f"of {optim.plan_epochs} ({optim.optimizer}, lr {optim.lr:g}, {optim.schedule}), "
                      f"optimiser state carried over for {len(opt_state)} parameter tensors")
    loader = s.train_loader(student_r.spec)

    def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        return net(batch.x, batch.y, batch.idx, epoch, distiller.teacher_outputs(batch.x, teacher))

    state.register("curves", lambda: curves, lambda saved: (curves.clear(), curves.update(saved)))
    emb_tap = student_r.spec["embedding"]["name"] if chosen == "map" else None

    def validate(epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if flow is not None:
            for p, v in zip(flow.pairs, flow_mse(flow, fixed, rt)):
                curves[p.student_tap].append(v)
                out[f"val_mse_{p.student_tap}"] = v
        if val_loader is None:
            return out
        r = classify(student, val_loader, rt, s.ds.info.num_classes, emb_tap)
        return {"val_loss": r["loss"], "val_top1": r["top1"], **({"val_map": r["map"]} if "map" in r else {}), **out}

    engine = Engine(rt, optim, epochs, select=SELECT_KEYS[chosen], label=f"distill {student_r.name}",
                    skip_nonfinite=opts.skip_nonfinite, state=state)
    res = engine.fit(distiller, student, step, loader, validate, opt_state=opt_state)
    wall = time.perf_counter() - t0
    method_rec = [{"name": m.name, "weight": m.weight, "uses": losses.get(m.name).uses,
                   "hparams": {**losses.get(m.name).hparams, **m.hparams},
                   "pairs": [list(p) for p in pairs]} for m, pairs in zip(specs, method_pairs)]
    best = res.history[res.best_epoch - 1] if res.history else {}
    summary = {"stage": "distill", "teacher": teacher_r.name, "student": student_r.name, "output": out,
               "methods": method_rec, "ce": ce_w, "from_warmup": from_warmup, "select": chosen,
               "best_epoch": res.best_epoch, "val_top1": best.get("val_top1"), "val_map": best.get("val_map"),
               "epochs_run": epochs, "plan": {"epochs": optim.plan_epochs or epochs, "offset": optim.plan_offset,
                                              "continued": continue_plan},
               "keep_flow": {"weight": keep_flow, "decay": keep_flow_decay, "note": "ours, not in the paper"}
               if kf else None,
               "images_per_sec": round(res.images_per_sec, 1),
               "peak_memory_mb": round(res.peak_memory_mb, 1), "wall_s": round(wall, 2), "epochs": res.history}
    if curves:
        summary["curves"] = curves
    if rt.is_main:
        has_state = any(len(l.state_dict()) or l.extra_state_tensors() for l in distiller.losses)
        if adapters is None and has_state and out != "-":
            adapters = str(Path(out).with_name(Path(out).name.removesuffix(".safetensors") + ".adapters.safetensors"))
        if adapters and has_state:
            save_adapters(adapters, distiller)
            summary["adapters"] = adapters
        options = {"methods": method_rec, "ce": ce_w, "epochs": epochs, "select": chosen,
                   "continue_plan": continue_plan, "keep_flow": keep_flow, "keep_flow_decay": keep_flow_decay,
                   **optim.as_dict(), **opts.as_dict()}
        metrics = {k: summary[k] for k in ("best_epoch", "val_top1", "val_map", "images_per_sec", "peak_memory_mb")
                   if summary[k] is not None}
        hist = student_r.history + [history_entry(
            "distill", options, [teacher_r.parent(), student_r.parent()], metrics, wall, s.ds.info.name,
            from_warmup=from_warmup, teacher=spec_name(teacher_r.spec), curve=res.history, device=rt.describe())]
        summary["sha256"] = write_model(out, res.best_state, student_r.spec, hist, {"dataset": s.ds.info.as_dict()})
        state.clear()  # the outputs are written: the resume state has done its job
        progress.info(f"wrote {out if out != '-' else 'stdout'} ({_select_phrase(chosen)}: epoch {res.best_epoch}, "
                      f"val top-1 {progress.fmt(summary['val_top1'])}"
                      + (f", val mAP {progress.fmt(summary['val_map'])}" if summary["val_map"] is not None else "") + ")")
    distiller.close()
    barrier(rt)  # no rank leaves before rank 0 has written
    return summary


def _select_phrase(chosen: str) -> str:
    return {"top1": "best epoch by validation top-1", "map": "best epoch by validation retrieval mAP",
            "last": "last epoch"}[chosen]


def _plan_for(continue_plan: bool, plan: str | None, student_r: Any, student_arg: str, optim: OptimConfig,
              epochs: int | None) -> tuple[dict[str, Any] | None, OptimConfig, int]:
    """(optimiser state, optimiser config, epochs) of this run: its own, or the rest of a warmup's plan."""
    if not continue_plan:
        return None, optim, epochs if epochs is not None else 30
    from indistill_cli.plan_state import load_plan, plan_path

    if student_r.ckpt is None:
        raise BadInput("--continue-plan needs the warmup's output checkpoint as --student, not an architecture name")
    path = plan or plan_path(student_r.ckpt.source)
    opt_state, planned, done = load_plan(path, student_r.ckpt.sha256)
    left = planned.plan_epochs - done
    if left < 1:
        raise BadInput(f"{path}: the plan's {planned.plan_epochs} epochs are all done by the warmup; give "
                       f"warmup --plan-epochs more than its own epochs")
    if epochs is not None and epochs != left:
        raise BadInput(f"--epochs {epochs} with --continue-plan: the warmup's plan has {left} epochs left "
                       f"({planned.plan_epochs} planned, {done} done); drop --epochs or pass --epochs {left}")
    planned.plan_offset = done
    return opt_state, planned, left


def _build_methods(specs: list[MethodSpec], teacher_r: Any, student_r: Any, teacher: nn.Module, student: nn.Module,
                   tap_pairs: list[str], embedding_pair: str | None, s: Any, rt: Any) -> tuple[list, list]:
    """Each method's (teacher tap, student tap) pairs and its loss module, sized by one probing forward."""
    probe = torch.zeros(2, teacher_r.spec["in_channels"], *teacher_r.spec["input_size"], device=rt.device)
    method_pairs, loss_mods = [], []
    for m in specs:
        cls = losses.get(m.name)
        pairs = _pairs_for(cls.uses, teacher_r.spec, student_r.spec, tap_pairs, embedding_pair)
        t_shapes = _feature_shapes(teacher, [t for t, _ in pairs], cls.uses, probe)
        s_shapes = _feature_shapes(student, [s_ for _, s_ in pairs], cls.uses, probe)
        try:
            loss_mods.append(cls(s_shapes, t_shapes, s.ds.info.num_classes, len(s.ds.train), **m.hparams))
        except ValueError as e:
            raise BadInput(f"--method {m.name}: {e}") from None
        method_pairs.append(pairs)
    return method_pairs, loss_mods


def _flow_setup(flow_teacher: str, teacher_r: Any, student_r: Any, student: nn.Module, s: Any, rt: Any,
                flow_images: int) -> tuple[Any, list, dict, bool]:
    """The pruned teacher's flow pair, fixed validation batches, the curves' first point, and whether the
    pruned teacher is a probe-mode pruning of the KD teacher itself (then its targets come for free)."""
    from indistill_cli.checkpoint import load_checkpoint
    from indistill_cli.flow import FlowPair, pairs_from_teacher
    from indistill_cli.models import model_from_checkpoint
    from indistill_cli.warmup import fixed_batches

    fck = load_checkpoint(flow_teacher)
    pairs = pairs_from_teacher(fck, student_r.spec)
    tck = teacher_r.ckpt
    shared = (tck is not None and fck.info.get("pruning", {}).get("mode") == "probe" and fck.spec == tck.spec
              and fck.state.keys() == tck.state.keys() and all(torch.equal(fck.state[k], tck.state[k]) for k in tck.state))
    fmodel = model_from_checkpoint(fck).to(rt.device).eval()
    if rt.channels_last:
        fmodel = fmodel.to(memory_format=torch.channels_last)
    flow = FlowPair(fmodel, student, pairs)
    fixed = fixed_batches(s, student_r.spec, flow_images)
    curves = {p.student_tap: [v] for p, v in zip(pairs, flow_mse(flow, fixed, rt))}
    return flow, fixed, curves, shared
