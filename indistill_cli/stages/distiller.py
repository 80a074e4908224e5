"""The KD objective of `distill`: the methods given with --method, CE, and (ours) the kept flow terms.

loss = ce * CE(student) + sum_m weight_m * method_m(KDBatch) [+ keep_flow weight * per-tap MSE]. Each
method reads logits, the embedding, or paired taps, all captured by forward hooks, so any
teacher/student pair (timm and torchvision included) works. The teacher is frozen, eval mode, under
inference_mode; it is an argument, never a submodule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from indistill_cli import losses
from indistill_cli.engine.runtime import Runtime, ddp
from indistill_cli.errors import BadInput
from indistill_cli.losses.base import NON_NEGATIVE, DistillLoss, Feats, KDBatch, Phase
from indistill_cli.metrics.flow import mse
from indistill_cli.io.atomic import atomic_write
from indistill_cli.models.taps import PRE, TapSet, as_vector
from indistill_cli.pruning.pairing import pair_taps


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
        if weight not in NON_NEGATIVE:
            raise BadInput(f"--method {m}: the weight must be {NON_NEGATIVE}, got {weight:g}")
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
    for o in out:  # each value in its method's declared range, before any loading (`indistill methods` lists them)
        try:
            losses.get(o.name).check_hparams(o.hparams)
        except ValueError as e:
            raise BadInput(f"--param {o.name}.{e}") from None
    return out


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
        return [taps[p.teacher_tap] if p.keep is None else taps[p.teacher_tap].index_select(1, p.keep)
                for p in pairs]  # (the indices are on the device already: see FlowPair)


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

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The student at the base lr, then each method's parameters by the lr multiplier it declares."""
        return [(list(self.student.parameters()), 1.0)] + [g for loss in self.losses for g in loss.param_groups()]

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
                teacher: nn.Module | TeacherOut, net: nn.Module | None = None,
                phase: tuple[int, Phase] | None = None) -> dict[str, torch.Tensor]:
        """`teacher`: the teacher module, or its outputs for this batch (what the step passes when DDP wraps
        the distiller); `net`: what runs the student (default: the student, or run_student when set);
        `phase`: (method index, phase) to compute that method's phase loss alone instead of the KD loss."""
        t = teacher if isinstance(teacher, TeacherOut) else self.teacher_outputs(x, teacher)
        if phase is not None and not phase[1].needs_student:
            s_logits, s_out = x.new_zeros((0,)), {}
        else:
            s_logits, s_out = self.student_outputs(x, net)
        if phase is not None:
            i, ph = phase
            with torch.autocast(x.device.type, enabled=False):  # a phase's loss in fp32, like the KD terms
                term = ph.loss(self.batch(i, s_logits, s_out, t, y, idx, epoch))
            return {"loss": term, f"{self.methods[i].name}.{ph.name}": term}
        terms: dict[str, torch.Tensor] = {}
        if self.ce:
            terms["ce"] = F.cross_entropy(s_logits, y)
        with torch.autocast(x.device.type, enabled=False):  # KD terms in fp32 (Gram matrices, softmax at T)
            for i, (m, loss) in enumerate(zip(self.methods, self.losses)):
                terms[m.name] = loss(self.batch(i, s_logits, s_out, t, y, idx, epoch))
            if t.flow is not None:
                terms["keep_flow"] = sum(mse(s_out[p.student_tap], f) for p, f in zip(self.keep_flow.flow.pairs, t.flow))
        total = (self.ce * terms["ce"] if self.ce else 0) + sum(
            m.weight * terms[m.name] for m in self.methods)
        if t.flow is not None:
            total = total + self.keep_flow.weight_at(epoch) * terms["keep_flow"]
        return {"loss": total, **terms, "_correct": (s_logits.argmax(1) == y).sum()}

    def student_outputs(self, x: torch.Tensor, net: nn.Module | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        st = self._taps_on(self.student, self.s_taps)
        if net is None:
            net = self.run_student if self.run_student is not None else self.student
        s_logits = net(x)
        s_out: dict[str, torch.Tensor] = {}
        if st is not None:
            s_out, st.out = st.out, {}
        return s_logits, s_out

    def batch(self, i: int, s_logits: torch.Tensor, s_out: dict[str, torch.Tensor], t: TeacherOut, y: torch.Tensor,
              idx: torch.Tensor, epoch: int) -> KDBatch:
        """What method i reads: logits and its paired features (embeddings pooled to vectors), in fp32."""
        pairs, vec = self.method_pairs[i], vector_flags(type(self.losses[i]), len(self.method_pairs[i]))
        s_f = Feats(s_logits.float(), [_prep(s_out[s], v).float() for (_, s), v in zip(pairs, vec)] if s_out else [])
        t_f = Feats(t.logits.float(), [_prep(t.taps[a], v).float() for (a, _), v in zip(pairs, vec)])
        return KDBatch(s_f, t_f, y, idx, epoch)

    @torch.no_grad()
    def calibrate(self, images: Callable[[], list[torch.Tensor]], teacher: nn.Module) -> None:
        """Give the methods that derive something from the teacher (OFD's margins) its features on the
        fixed batches `images()` returns (read only when a method needs them)."""
        for i, loss in enumerate(self.losses):
            if type(loss).calibrate is DistillLoss.calibrate:
                continue
            outs = [self.teacher_outputs(x, teacher) for x in images()]
            feats = [self.batch(i, o.logits, {}, o, o.logits.new_zeros(0), None, 0).teacher for o in outs]
            loss.calibrate(Feats(torch.cat([f.logits for f in feats]),
                                 [torch.cat(parts) for parts in zip(*[f.feats for f in feats])]))


def distiller_step(distiller: Distiller, teacher: nn.Module, rt: Runtime,
                   phase: tuple[int, Phase] | None = None) -> Callable[[Any, int], dict[str, torch.Tensor]]:
    """The engine's step over `distiller`: the KD loss, or with `phase` that method's phase loss alone.

    Under torchrun DDP wraps the distiller at the first batch, told which trainable parameters this loss
    leaves without gradient (and the methods' buffers, which DDP must not broadcast every step: CRD's banks
    start equal and get every rank's updates). What a loss leaves out depends on the run: the student's
    head with --ce 0 and an embedding or tap method (PKT, SP, RKD, CRD, FitNet, AT, ...), the layers
    past the last tap, a phase's untrained parts. One probing backward on the first batch finds them
    (`runtime.unreached`), through the plain student (a --compile'd one would compile for the probe's
    shapes); the methods' extra state (CRD's sampling generator) is restored after it."""
    nets: list[Any] = []

    def probe_loss(batch: Any, epoch: int) -> Callable[[], torch.Tensor]:
        def loss() -> torch.Tensor:
            saved = [m.extra_state_tensors() for m in distiller.losses]
            x = batch.x[:2]
            try:
                return distiller(x, batch.y[:2], batch.idx[:2], epoch, distiller.teacher_outputs(x, teacher),
                                 net=distiller.student, phase=phase)["loss"]  # not run_student: no --compile
            finally:
                for m, st in zip(distiller.losses, saved):
                    m.load_extra_state_tensors(st)
        return loss

    def step(batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        if not nets:
            nets.append(ddp(distiller, rt, [f"losses.{n}" for n, _ in distiller.losses.named_buffers()],
                            probe=probe_loss(batch, epoch)))
        return nets[0](batch.x, batch.y, batch.idx, epoch, distiller.teacher_outputs(batch.x, teacher), phase=phase)

    return step


def _prep(v: torch.Tensor, vector: bool) -> torch.Tensor:
    return as_vector(v) if vector else v


def vector_flags(cls: type, n: int) -> list[bool]:
    """Which of a method's n paired features are embeddings, read as (N, D) vectors."""
    if cls.uses == "embedding":
        return [True] * n
    return [False] * (n - 1) + [True] if getattr(cls, "with_embedding", False) and n else [False] * n


def method_pairs(kind: str, t_spec: dict[str, Any], s_spec: dict[str, Any], tap_pairs: list[str],
                 emb_pair: str | None, preact: str = "", embedding: bool = False) -> list[tuple[str, str]]:
    """The (teacher tap, student tap) pairs a method of this `kind` reads: none for logits, the embeddings
    (or --embedding-tap), or the paired taps (default pairing, or --tap), read before their final ReLU
    (`:pre`) on the teacher's side or both with `preact`, then the embeddings with `embedding`."""
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
    pairs = pair_taps(t_spec, s_spec, tap_pairs, option="--tap")
    pairs = [(t + PRE if preact else t, s + PRE if preact == "both" else s) for t, s in pairs]
    return pairs + (method_pairs("embedding", t_spec, s_spec, [], emb_pair) if embedding else [])


def feature_shapes(model: nn.Module, names: list[str], kind: str | list[bool],
                   x: torch.Tensor) -> list[tuple[int, ...]]:
    """Per-sample shapes of the named activations (pooled to vectors for embedding methods, or where
    `kind` is a list of per-name flags)."""
    if not names:
        return []
    vec = [kind == "embedding"] * len(names) if isinstance(kind, str) else kind
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), TapSet(model, names) as taps:
            model(x)
            out = [taps.out[n] for n in names]
    finally:
        model.train(was)
    return [tuple(_prep(o, v).shape[1:]) for o, v in zip(out, vec)]


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
