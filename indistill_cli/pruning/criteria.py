"""Channel importance: the filters that produce a tap's channels (coupled groups) and how they rank.

Importance is computed over a channel's *coupled group* (torch-pruning's DependencyGraph): in a
residual stage one channel index is written by the stem conv, by every block's last conv and by the
downsample; all of those filters produce it, so all of them count. Only out-channel producers are
summed (convs/linears whose output filters are the channel), never the consumers' input weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput
from indistill_cli.io.spec import ModelSpec
from indistill_cli.models.structural import build_graph, example_input, out_channels, tap_group  # noqa: F401

CRITERIA = ("l1", "l2", "bn-scale", "activation")


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd)


def find_producers(model: nn.Module, spec: ModelSpec, taps: Sequence[str]) -> dict[str, str]:
    """For each tap, the last conv (or, in a token model, linear layer) run at or before the tap's output with as
    many output channels.

    One eval-mode forward with hooks records the order in which convs finish and the position of
    each tap's (last) output; the tap's channels come from a conv at or before that position.
    Taps without such a conv are absent from the result.
    """
    from indistill_cli.models.taps import resolve

    order: list[str] = []
    marks: dict[str, tuple[int, int]] = {}
    layouts = getattr(model, "tap_layouts", None) or {}
    handles = []
    for name, m in model.named_modules():  # a token model's channels also come from linear layers
        if _is_conv(m) or (layouts and isinstance(m, nn.Linear)):
            handles.append(m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    for tap in taps:
        mod, is_input, _ = resolve(model, tap)

        def mark(_m: nn.Module, _i: Any, out: Any = None, tap: str = tap, is_input: bool = is_input) -> None:
            t = _i if is_input else out
            if isinstance(t, (tuple, list)):
                t = t[0]
            if tap in layouts:  # a token or channels-last tap: its channels are those of its feature map
                t = layouts[tap](t)
            marks[tap] = (len(order), int(t.shape[1]))

        if is_input:
            handles.append(mod.register_forward_pre_hook(lambda m, i, f=mark: f(m, i)))
        else:
            handles.append(mod.register_forward_hook(mark))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, spec))
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
            if out_channels(mods[name]) == channels:
                found[tap] = name
                break
    return found


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
    from indistill_cli.models.taps import TapSet

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
