"""`indistill prune`: rank a teacher's channels at each tap and keep as many as the student has.

Stage 1a of InDistill (see METHOD.md). Taps of the teacher and the student are paired (k-th with
k-th, or proportionally when the counts differ, or as `--pair` says). At each pair the teacher's
channels are ranked by an importance criterion and the C_S best are kept, in their original order.

Importance is computed over a channel's *coupled group* (torch-pruning's DependencyGraph): in a
residual stage one channel index is written by the stem conv, by every block's last conv and by the
downsample; all of those filters produce it, so all of them count. Only out-channel producers are
summed (convs/linears whose output filters are the channel), never the consumers' input weights.

Two modes:
* `probe` (the reference behaviour): the checkpoint holds the FULL teacher plus the kept indices
  (`keep/<tap>` extras); warmup targets are the real eval-mode teacher activations restricted to the
  kept channels (computed by `flow.FlowPair.targets`).
* `chained`: a structurally pruned teacher that runs on its own. The spec carries a replayable plan
  (`structural_prune`), so `models.build_model(spec)` rebuilds the original architecture and prunes
  it again with the same indices (`apply_structural_plan`); the pruned state dict then loads strictly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.errors import BadInput, RunFailure, did_you_mean

CRITERIA = ("l1", "l2", "bn-scale", "activation")
MODES = ("probe", "chained")
ACTIVATION_BATCHES = 4  # validation batches averaged for the `activation` criterion
KEEP_PREFIX = "keep/"


# ----------------------------------------------------------------------------- pairing

def _tap_table(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in spec.get("taps", [])}


def _proportional(n_long: int, n_short: int) -> list[int]:
    """For each of the `n_short` taps j, the index round((j+1)*n_long/n_short)-1 (half up) among the long side."""
    return [int(math.floor((j + 1) * n_long / n_short + 0.5)) - 1 for j in range(n_short)]


def parse_pair(text: str | tuple[str, str]) -> tuple[str, str]:
    """'TEACHER_TAP:STUDENT_TAP' -> (teacher_tap, student_tap)."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise BadInput(f"--pair expects TEACHER_TAP:STUDENT_TAP, got {text!r}")
        return str(text[0]), str(text[1])
    t, sep, s = text.partition(":")
    if not sep or not t or not s:
        raise BadInput(f"--pair expects TEACHER_TAP:STUDENT_TAP (e.g. layer2:block2), got '{text}'")
    return t, s


def pair_taps(teacher_spec: dict[str, Any], student_spec: dict[str, Any],
              overrides: Iterable[str | tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Ordered (teacher_tap, student_tap) pairs, shallow to deep by student tap.

    Equal tap counts pair k-th with k-th. Different counts pair every tap of the side with fewer taps
    with a proportionally placed tap of the other side (student tap j of S gets teacher tap
    round((j+1)*T/S)-1, strictly increasing; symmetric when the student has more taps), and the
    pairing is printed on stderr. `overrides` ('T:S' strings) replace the default pairing entirely.
    Embedding/logit layers are not taps and are never paired.
    """
    t_taps = [t["name"] for t in teacher_spec.get("taps", [])]
    s_taps = [t["name"] for t in student_spec.get("taps", [])]
    if not t_taps or not s_taps:
        raise BadInput("the teacher or the student declares no taps; nothing to pair")
    overrides = list(overrides or [])
    if overrides:
        pairs = [parse_pair(o) for o in overrides]
        for t, s in pairs:
            for name, side, taps, spec in ((t, "teacher", t_taps, teacher_spec), (s, "student", s_taps, student_spec)):
                if name not in taps:
                    emb = spec.get("embedding", {}).get("name")
                    if name == emb:
                        raise BadInput(f"--pair {t}:{s}: '{name}' is the {side}'s embedding, not a feature-map tap; "
                                       f"InDistill pairs only the taps ({', '.join(taps)})")
                    raise BadInput(f"--pair {t}:{s}: unknown {side} tap '{name}'{did_you_mean(name, taps)}; "
                                   f"{side} taps: {', '.join(taps)}")
        for side, names in (("teacher", [p[0] for p in pairs]), ("student", [p[1] for p in pairs])):
            dup = [n for n in names if names.count(n) > 1]
            if dup:
                raise BadInput(f"--pair: {side} tap '{dup[0]}' is paired more than once")
        return sorted(pairs, key=lambda p: s_taps.index(p[1]))
    T, S = len(t_taps), len(s_taps)
    if T == S:
        return list(zip(t_taps, s_taps))
    if S < T:
        pairs = [(t_taps[i], s_taps[j]) for j, i in enumerate(_proportional(T, S))]
    else:
        pairs = [(t_taps[i], s_taps[j]) for i, j in enumerate(_proportional(S, T))]
    progress.info(f"teacher has {T} taps, student {S}: pairing proportionally "
                  + ", ".join(f"{t}->{s}" for t, s in pairs) + " (override with --pair TEACHER_TAP:STUDENT_TAP)")
    return pairs


def check_pairs(teacher_spec: dict[str, Any], student_spec: dict[str, Any], pairs: Sequence[tuple[str, str]]) -> None:
    """Reject what pruning cannot reconcile: fewer teacher channels, or incompatible spatial grids."""
    if int(teacher_spec["num_classes"]) != int(student_spec["num_classes"]):
        raise BadInput(f"the student has {student_spec['num_classes']} classes but the teacher has "
                       f"{teacher_spec['num_classes']}: they must be trained on the same labels")
    tt, st = _tap_table(teacher_spec), _tap_table(student_spec)
    for t, s in pairs:
        ct, cs = int(tt[t]["channels"]), int(st[s]["channels"])
        if ct < cs:
            raise BadInput(f"teacher tap '{t}' has {ct} channels, fewer than student tap '{s}' ({cs}): pruning "
                           f"cannot widen a layer; use a wider teacher or pair differently with --pair")
        ht, wt = tt[t].get("size", [1, 1])
        hs, ws = st[s].get("size", [1, 1])
        if min(ht, wt, hs, ws) <= 0:
            raise BadInput(f"tap pair {t}:{s} has an empty feature map ({ht}x{wt} vs {hs}x{ws})")
        if ht * ws != hs * wt:
            raise BadInput(f"tap pair {t}:{s}: feature maps {ht}x{wt} (teacher) and {hs}x{ws} (student) have "
                           f"different aspect ratios and cannot be pooled to one size; pair other taps with --pair")


# ----------------------------------------------------------------------------- producers and groups

def _example_input(model: nn.Module, spec: dict[str, Any]) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    return torch.zeros(1, int(spec["in_channels"]), *[int(v) for v in spec["input_size"]], device=dev)


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd)


def find_producers(model: nn.Module, spec: dict[str, Any], taps: Sequence[str]) -> dict[str, str]:
    """For each tap, the last conv run at or before the tap's output with as many output channels.

    One eval-mode forward with hooks records the order in which convs finish and the position of
    each tap's (last) output; the tap's channels come from a conv at or before that position.
    Taps without such a conv are absent from the result.
    """
    from indistill_cli.taps import resolve

    order: list[str] = []
    marks: dict[str, tuple[int, int]] = {}
    handles = []
    for name, m in model.named_modules():
        if _is_conv(m):
            handles.append(m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    for tap in taps:
        mod, is_input = resolve(model, tap)

        def mark(_m: nn.Module, _i: Any, out: Any = None, tap: str = tap, is_input: bool = is_input) -> None:
            t = _i if is_input else out
            if isinstance(t, (tuple, list)):
                t = t[0]
            marks[tap] = (len(order), int(t.shape[1]))

        if is_input:
            handles.append(mod.register_forward_pre_hook(lambda m, i, f=mark: f(m, i)))
        else:
            handles.append(mod.register_forward_hook(mark))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_example_input(model, spec))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    mods = dict(model.named_modules())
    found: dict[str, str] = {}
    for tap in taps:
        if tap not in marks:
            raise BadInput(f"tap '{tap}' never runs in the model's forward pass")
        pos, channels = marks[tap]
        for name in reversed(order[:pos]):
            m = mods[name]
            if int(m.out_channels) == channels:
                found[tap] = name
                break
    return found


def build_graph(model: nn.Module, spec: dict[str, Any]) -> Any:
    """torch-pruning's DependencyGraph of a model, traced in eval mode (BN statistics untouched)."""
    import torch_pruning as tp

    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=_example_input(model, spec),
                                                         verbose=False)
    finally:
        model.train(was)


def _out_channels(m: nn.Module) -> int:
    return int(m.out_features) if isinstance(m, nn.Linear) else int(m.out_channels)


def tap_group(dg: Any, model: nn.Module, producer: str, idxs: Sequence[int] | None = None) -> Any:
    """The coupled group of a producer's output channels (all of them unless `idxs`)."""
    m = model.get_submodule(producer)
    pruner = dg.get_pruner_of_module(m)
    if pruner is None:
        raise BadInput(f"layer '{producer}' ({type(m).__name__}) cannot be pruned by torch-pruning")
    idxs = list(range(_out_channels(m))) if idxs is None else list(idxs)
    return dg.get_pruning_group(m, pruner.prune_out_channels, idxs)


def _producer_items(dg: Any, group: Any) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(module, channel idxs in that module, root idxs) for every out-channel pruning op of a group."""
    items = []
    for item in group:
        if not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        items.append((item.dep.target.module, list(item.idxs), list(item.root_idxs)))
    return items


def group_producers(dg: Any, group: Any, model: nn.Module) -> list[str]:
    """Names of the convs/linears whose output filters produce a group's channels."""
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m, _, _ in _producer_items(dg, group)
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m in names]


def group_importance(dg: Any, group: Any, channels: int, criterion: str) -> torch.Tensor:
    """Per-channel importance summed over a group's producers (l1/l2: filter norms; bn-scale: |gamma|)."""
    imp = torch.zeros(channels, dtype=torch.float64)
    used = 0
    for m, idxs, root in _producer_items(dg, group):
        if criterion in ("l1", "l2") and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            w = m.weight.detach()
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                w = w.transpose(0, 1)
            rows = w[idxs].flatten(1).double().cpu()
            norms = rows.abs().sum(1) if criterion == "l1" else rows.pow(2).sum(1).sqrt()
        elif criterion == "bn-scale" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            norms = m.weight.detach()[idxs].abs().double().cpu()
        else:
            continue
        imp.index_add_(0, torch.tensor(root, dtype=torch.long), norms)
        used += 1
    if used == 0:
        what = "BatchNorm with a scale" if criterion == "bn-scale" else "convolution or linear layer"
        raise BadInput(f"criterion {criterion}: no {what} produces these channels; try --criterion "
                       f"{'l1' if criterion == 'bn-scale' else 'activation'}")
    return imp


@torch.no_grad()
def activation_importance(model: nn.Module, taps: Sequence[str], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Mean |activation| per channel at each tap over the given batches (model in eval mode)."""
    from indistill_cli.taps import TapSet

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    was = model.training
    model.eval()
    try:
        with TapSet(model, taps) as ts:
            for batch in batches:
                x = batch.x if hasattr(batch, "x") else batch
                ts.forward(x)
                for t in taps:
                    a = ts.out[t].detach().float()
                    per = a.abs().transpose(0, 1).reshape(a.shape[1], -1)
                    sums[t] = sums.get(t, 0) + per.sum(1).double().cpu()
                    counts[t] = counts.get(t, 0) + per.shape[1]
    finally:
        model.train(was)
    if not counts:
        raise BadInput("criterion activation needs data: the split used for it is empty")
    return {t: sums[t] / counts[t] for t in taps}


def select_channels(importance: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k most important channels (ties: lower index first), in original order (int64)."""
    n = int(importance.shape[0])
    if not 0 < k <= n:
        raise BadInput(f"cannot keep {k} of {n} channels")
    order = torch.sort(importance.double(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values.to(torch.int64)


# ----------------------------------------------------------------------------- planning

@dataclass
class TapPlan:
    """What pruning decided at one pair of taps."""

    teacher_tap: str
    student_tap: str
    before: int  # C_T
    kept: int  # C_S
    teacher_size: list[int]
    student_size: list[int]
    keep: torch.Tensor  # int64 kept channel indices, ascending
    importance: torch.Tensor
    producer: str | None = None  # the conv whose group carries the tap's channels
    group_producers: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"teacher_tap": self.teacher_tap, "student_tap": self.student_tap, "before": self.before,
                "kept": self.kept, "teacher_size": list(self.teacher_size), "student_size": list(self.student_size)}


def plan_pruning(model: nn.Module, teacher_spec: dict[str, Any], student_spec: dict[str, Any],
                 pairs: Sequence[tuple[str, str]], criterion: str = "l1", mode: str = "probe",
                 batches: Iterable[Any] | None = None) -> list[TapPlan]:
    """Rank the teacher's channels at each paired tap and choose the student's width of them."""
    if criterion not in CRITERIA:
        raise BadInput(f"--criterion must be one of {', '.join(CRITERIA)}, got '{criterion}'{did_you_mean(criterion, CRITERIA)}")
    if mode not in MODES:
        raise BadInput(f"--mode must be probe or chained, got '{mode}'{did_you_mean(mode, MODES)}")
    check_pairs(teacher_spec, student_spec, pairs)
    tt, st = _tap_table(teacher_spec), _tap_table(student_spec)
    t_names = [t for t, _ in pairs]
    need_groups = criterion != "activation" or mode == "chained"
    try:  # with activation + probe the groups only serve the optional chained-equivalent evaluation
        producers = find_producers(model, teacher_spec, t_names)
        dg = build_graph(model, teacher_spec)
    except Exception:
        if need_groups:
            raise
        producers, dg = {}, None
    acts = None
    if criterion == "activation":
        if batches is None:
            raise BadInput("criterion activation needs data batches")
        acts = activation_importance(model, t_names, batches)
    plans: list[TapPlan] = []
    for t, s in pairs:
        ct, cs = int(tt[t]["channels"]), int(st[s]["channels"])
        prod, members, group = producers.get(t), [], None
        if need_groups and prod is None:
            raise BadInput(f"teacher tap '{t}': no convolution with {ct} output channels runs before it, so "
                           f"its channels cannot be traced to the filters that produce them"
                           + ("; use --criterion activation with --mode probe" if criterion != "activation" else
                              "; use --mode probe"))
        if prod is not None and dg is not None:
            try:
                group = tap_group(dg, model, prod)
                members = group_producers(dg, group, model)
            except Exception:
                if need_groups:
                    raise
                prod = None
        if criterion == "activation":
            imp = acts[t]
        else:
            imp = group_importance(dg, group, ct, criterion)
        if imp.shape[0] != ct:
            raise RunFailure(f"tap '{t}': importance has {imp.shape[0]} entries for {ct} channels")
        plans.append(TapPlan(t, s, ct, cs, list(tt[t].get("size", [])), list(st[s].get("size", [])),
                             select_channels(imp, cs), imp, prod, members))
    if mode == "chained":
        _reconcile_shared_groups(plans)
    return plans


def _reconcile_shared_groups(plans: list[TapPlan], warn: bool = True) -> None:
    """Taps whose channels are one coupled group must keep the same channels in a chained network."""
    for i, p in enumerate(plans):
        if p.producer is None:
            continue
        for q in plans[:i]:
            if p.producer in q.group_producers:
                if p.kept != q.kept:
                    raise BadInput(f"teacher taps '{q.teacher_tap}' and '{p.teacher_tap}' carry the same coupled "
                                   f"channels (a residual connection), so a chained teacher keeps one set for both, "
                                   f"but their students need {q.kept} and {p.kept}: use --mode probe or --pair")
                if not torch.equal(p.keep, q.keep) and warn:
                    progress.warn(f"teacher taps '{q.teacher_tap}' and '{p.teacher_tap}' share coupled channels; "
                                  f"'{p.teacher_tap}' keeps the channels chosen for '{q.teacher_tap}'")
                if not torch.equal(p.keep, q.keep):
                    p.keep = q.keep.clone()
                p.producer = None  # pruned once, through the first tap of the group
                break


def structural_plan(plans: Sequence[TapPlan]) -> list[dict[str, Any]]:
    """The replayable plan a chained spec carries: one entry per pruned coupled group."""
    return [{"module": p.producer, "keep": [int(i) for i in p.keep], "channels": p.before}
            for p in plans if p.producer is not None and p.kept < p.before]


def apply_structural_plan(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Prune `model` in place as `spec["structural_prune"]` says (called by `models.build_model`).

    Each entry names the conv producing a tap's channels, its original width and the channels to
    keep; torch-pruning removes the others from the whole coupled group (residual adds, BNs, the
    consumers' inputs). Replaying the same plan on the same architecture gives the same network.
    """
    plan = spec.get("structural_prune") or []
    if not isinstance(plan, list):
        raise BadInput("spec 'structural_prune' must be a list")
    if not plan:
        return model
    dg = build_graph(model, spec)
    mods = dict(model.named_modules())
    for step in plan:
        try:
            name, keep, channels = step["module"], [int(i) for i in step["keep"]], int(step["channels"])
        except (TypeError, KeyError, ValueError):
            raise BadInput(f"structural_prune entry {step!r} needs 'module', 'keep' and 'channels'") from None
        m = mods.get(name)
        if m is None or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            raise BadInput(f"structural_prune: '{name}' is not a convolution or linear layer of {spec.get('arch')}")
        if _out_channels(m) != channels:
            raise BadInput(f"structural_prune: '{name}' has {_out_channels(m)} output channels, the plan expects "
                           f"{channels} (was another entry applied to the same coupled channels?)")
        if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= channels:
            raise BadInput(f"structural_prune: keep list of '{name}' must be ascending, unique and within 0..{channels - 1}")
        drop = sorted(set(range(channels)) - set(keep))
        if drop:
            tap_group(dg, model, name, drop).prune(record_history=False)
    return model


def chained_model(model: nn.Module, spec: dict[str, Any], plans: Sequence[TapPlan]) -> tuple[nn.Module, dict[str, Any]]:
    """A structurally pruned copy of the teacher and its spec (plan + re-probed taps/embedding)."""
    from indistill_cli.models.registry import probe_taps

    new_spec = copy.deepcopy(spec)
    new_spec["structural_prune"] = structural_plan(plans)
    pruned = copy.deepcopy(model)
    apply_structural_plan(pruned, new_spec)
    new_spec["taps"], new_spec["embedding"] = probe_taps(pruned, int(spec["in_channels"]),
                                                         tuple(int(v) for v in spec["input_size"]))
    got = {t["name"]: t["channels"] for t in new_spec["taps"]}
    for p in plans:
        if got.get(p.teacher_tap) != p.kept:
            raise RunFailure(f"structural pruning left {got.get(p.teacher_tap)} channels at tap '{p.teacher_tap}', "
                             f"expected {p.kept}; use --mode probe for this architecture")
    return pruned, new_spec


# ----------------------------------------------------------------------------- what warmup calls

def pruned_pairs(pruning_info: dict[str, Any]) -> list[tuple[str, str]]:
    """(teacher_tap, student_tap) pairs of a pruned-teacher checkpoint (ckpt.info["pruning"])."""
    return [(p["teacher_tap"], p["student_tap"]) for p in pruning_info["pairs"]]


# ----------------------------------------------------------------------------- the command

def _accuracy(model: nn.Module, spec: dict[str, Any], s: Any) -> float | None:
    from indistill_cli.evaluation import classify

    if s.val_split is None:
        return None
    return float(classify(model, s.eval_loader("val", spec, shard=False), s.rt, s.ds.info.num_classes)["top1"])


def _fmt_acc(v: float | None) -> str:
    return "n/a (no validation split)" if v is None else f"{100 * v:.2f}%"


def run_prune(teacher_arg: str, like: str, out: str, opts: Any, criterion: str = "l1", mode: str = "probe",
              pairs: Sequence[str] | None = None, finetune: int = 0, optim: Any = None, data_given: bool = False,
              force: bool = False, select: str = "auto") -> dict[str, Any]:
    """Prune a trained teacher to a student's widths and write a pruned-teacher checkpoint.

    `opts.data` is used when `data_given`; otherwise the teacher's own dataset (from its checkpoint).
    """
    from indistill_cli.checkpoint import load_checkpoint, looks_like_checkpoint
    from indistill_cli.common import check_output, history_entry, resolve_model, write_model
    from indistill_cli.session import open_session

    t0 = time.perf_counter()
    if criterion not in CRITERIA:
        raise BadInput(f"--criterion must be one of {', '.join(CRITERIA)}, got '{criterion}'{did_you_mean(criterion, CRITERIA)}")
    if mode not in MODES:
        raise BadInput(f"--mode must be probe or chained, got '{mode}'{did_you_mean(mode, MODES)}")
    if finetune < 0:
        raise BadInput(f"--finetune must be >= 0 epochs, got {finetune}")
    if finetune and mode != "chained":
        raise BadInput("--finetune needs --mode chained: a probe-mode checkpoint keeps the full, unchanged teacher")
    if finetune and optim is not None:
        optim.validate()
    if finetune:
        from indistill_cli.engine import resolve_select

        resolve_select(select, True, True, opts.val_fraction > 0, "fine-tuning")
    pair_args = [parse_pair(p) for p in (pairs or [])]
    check_output(out, force)
    run_state = None
    if finetune:  # fine-tuning is training: interruptible and resumable like `train`
        from indistill_cli.resume import RunState

        key = {"stage": "prune", "teacher": teacher_arg, "like": like, "criterion": criterion, "mode": mode,
               "pairs": list(pairs or []), "finetune": finetune,
               "optim": optim.as_dict() if optim is not None else None, "opts": opts.as_dict()}
        run_state = RunState("prune", out, key, opts, force=force)
        run_state.check()
    if not looks_like_checkpoint(teacher_arg):
        resolve_model(teacher_arg, None, "teacher", trained=True)  # type: ignore[arg-type]  # raises: needs weights
    tckpt = load_checkpoint(teacher_arg, role="model")
    if not data_given:
        name = tckpt.info.get("dataset", {}).get("name")
        if not name:
            raise BadInput(f"{tckpt.source}: records no dataset; pass --data")
        opts.data = name
    if opts.image_size is None and str(opts.data).startswith("imagefolder:"):
        opts.image_size = int(tckpt.spec["input_size"][0])
    if looks_like_checkpoint(like):
        sck = load_checkpoint(like, role="model")
        if int(sck.spec.get("num_classes", -1)) != int(tckpt.spec["num_classes"]):
            raise BadInput(f"student {sck.source} has {sck.spec.get('num_classes')} classes but teacher "
                           f"{tckpt.source} has {tckpt.spec['num_classes']}: prune against a student for the same labels")
    s = open_session(opts)
    t = resolve_model(teacher_arg, s.ds.info, "teacher", trained=True)
    st = resolve_model(like, s.ds.info, "student")
    pairs_ = pair_taps(t.spec, st.spec, [f"{a}:{b}" for a, b in pair_args])
    check_pairs(t.spec, st.spec, pairs_)
    teacher = t.model.to(s.rt.device)
    progress.info(f"prune {t.name} like {st.name} ({criterion}, {mode}) on {s.ds.info.name}, {s.rt.describe()}")

    batches = None
    if criterion == "activation":
        split = "val" if s.val_split else "train"
        loader = s.eval_loader(split, t.spec, shard=False)
        batches = [b for _, b in zip(range(ACTIVATION_BATCHES), loader)]
    plans = plan_pruning(teacher, t.spec, st.spec, pairs_, criterion, mode, batches)
    progress.table(f"pruning {t.name} to {st.name}'s widths ({criterion})",
                   ["teacher tap", "student tap", "channels", "kept", "teacher size", "student size"],
                   [[p.teacher_tap, p.student_tap, p.before, p.kept, "x".join(map(str, p.teacher_size)),
                     "x".join(map(str, p.student_size))] for p in plans])
    for p in plans:
        if p.teacher_size != p.student_size:
            progress.info(f"  {p.teacher_tap} ({'x'.join(map(str, p.teacher_size))}) and {p.student_tap} "
                          f"({'x'.join(map(str, p.student_size))}) differ in size: warmup pools the larger to the smaller")

    acc: dict[str, Any] = {"split": "val", "teacher": _accuracy(teacher, t.spec, s)}
    progress.info(f"val top-1 of the teacher (before pruning): {_fmt_acc(acc['teacher'])}")
    fit = None
    if mode == "probe":
        acc["pruned_checkpoint"] = acc["teacher"]
        try:  # for information only: what a structurally pruned teacher would score
            cplans = copy.deepcopy(plans)
            _reconcile_shared_groups(cplans, warn=False)
            cmodel, cspec = chained_model(teacher, t.spec, cplans)
            acc["chained"] = _accuracy(cmodel.to(s.rt.device), cspec, s)
            progress.info(f"val top-1 of a chained (structurally pruned, not fine-tuned) version, for information: "
                          f"{_fmt_acc(acc['chained'])}; the probe checkpoint itself runs as the full teacher "
                          f"({_fmt_acc(acc['teacher'])})")
        except Exception as e:  # noqa: BLE001 - informational; the probe checkpoint does not depend on it
            acc["chained"] = None
            progress.info(f"(no chained-equivalent accuracy for this teacher: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
        state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
        spec = dict(t.spec)
    else:
        try:
            pruned, pspec = chained_model(teacher, t.spec, plans)
        except (BadInput, RunFailure):
            raise
        except Exception as e:  # noqa: BLE001 - torch-pruning rejecting the graph is about this architecture
            raise BadInput(f"chained pruning of {t.name} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                           f"use --mode probe") from None
        pruned = pruned.to(s.rt.device)
        acc["chained"] = _accuracy(pruned, pspec, s)
        progress.info(f"val top-1 of the chained pruned teacher (after pruning): {_fmt_acc(acc['chained'])}")
        spec = pspec
        if finetune:
            from indistill_cli.train import fit_ce

            run_state.add_key("parents", [t.parent().get("sha256"), st.parent().get("sha256") or st.name])
            run_state.is_main = s.rt.is_main
            fit = fit_ce(pruned, pspec, s, finetune, optim, f"finetune pruned {t.name}", state=run_state, select=select)
            pruned.load_state_dict(fit.best_state)
            acc["finetuned"] = _accuracy(pruned, pspec, s)
            progress.info(f"val top-1 after {finetune} epoch(s) of fine-tuning: {_fmt_acc(acc['finetuned'])}")
        acc["pruned_checkpoint"] = acc.get("finetuned", acc["chained"])
        state = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
    wall = time.perf_counter() - t0
    records = [p.record() for p in plans]
    pruning = {"criterion": criterion, "mode": mode, "student": st.name, "student_spec": st.spec, "pairs": records}
    extras = {KEEP_PREFIX + p.teacher_tap: p.keep.to(torch.int64).cpu() for p in plans}
    summary: dict[str, Any] = {
        "stage": "prune", "teacher": t.name, "student": st.name, "output": out, "criterion": criterion, "mode": mode,
        "pairs": [{**r, "after": r["kept"]} for r in records], "accuracy": acc, "finetune_epochs": finetune,
        "wall_s": round(wall, 2)}
    if s.rt.is_main:
        options = {"teacher": teacher_arg, "like": like, "criterion": criterion, "mode": mode,
                   "pairs": [f"{a}:{b}" for a, b in pair_args], "finetune": finetune, **opts.as_dict()}
        if finetune and optim is not None:
            options.update(optim.as_dict())
        metrics = {"top1_before": acc["teacher"], "top1_after": acc["pruned_checkpoint"], "top1_chained": acc["chained"]}
        if fit is not None:
            metrics["finetune_best_epoch"] = fit.best_epoch
        parents = [t.parent(), st.parent()]
        extra: dict[str, Any] = {"pairs": records, "device": s.rt.describe()}
        if fit is not None:
            extra["curve"] = fit.history
        hist = t.history + [history_entry("prune", options, parents, metrics, wall, s.ds.info.name, **extra)]
        info = {"dataset": s.ds.info.as_dict(), "pruning": pruning}
        summary["sha256"] = write_model(out, state, spec, hist, info, role="pruned-teacher", extras=extras)
        if run_state is not None:
            run_state.clear()  # the output is written: the resume state has done its job
        progress.info(f"wrote {out if out != '-' else 'stdout'} ({mode} pruned-teacher, "
                      + ", ".join(f"{p.teacher_tap} {p.before}->{p.kept}" for p in plans) + ")")
    from indistill_cli.runtime import barrier

    barrier(s.rt)  # under torchrun no rank goes on (e.g. to the next pipeline stage) before rank 0 has written
    return summary
