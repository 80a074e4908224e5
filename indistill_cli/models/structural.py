"""A structurally pruned model, rebuilt: the replay of the plan a chained pruned teacher's spec carries.

`prune --mode chained` decides which channels each coupled group keeps (`pruning.plan`); the spec records
that decision as `structural_prune` steps ({module, keep, channels}). Turning that spec back into a module
is part of building it, so it lives here, beside the builders, and every reader of a checkpoint gets the
pruned network from `create_model` without knowing that pruning exists. torch-pruning's dependency graph
removes the dropped channels from the whole coupled group (residual adds, BNs, the consumers' inputs);
replaying the same plan on the same architecture gives the same network, so the state dict loads strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput
from indistill_cli.io.spec import ModelSpec


def example_input(model: nn.Module, spec: ModelSpec) -> torch.Tensor:
    """One zero image of the spec's shape on the model's device (graph tracing, producer search)."""
    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    return torch.zeros(1, spec.in_channels, *spec.input_size, device=dev)


def build_graph(model: nn.Module, spec: ModelSpec) -> Any:
    """torch-pruning's DependencyGraph of a model, traced in eval mode (BN statistics untouched)."""
    import torch_pruning as tp

    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model, spec),
                                                         verbose=False)
    finally:
        model.train(was)


def out_channels(m: nn.Module) -> int:
    return int(m.out_features) if isinstance(m, nn.Linear) else int(m.out_channels)


def tap_group(dg: Any, model: nn.Module, producer: str, idxs: Sequence[int] | None = None) -> Any:
    """The coupled group of a producer's output channels (all of them unless `idxs`)."""
    m = model.get_submodule(producer)
    pruner = dg.get_pruner_of_module(m)
    if pruner is None:
        raise BadInput(f"layer '{producer}' ({type(m).__name__}) cannot be pruned by torch-pruning")
    idxs = list(range(out_channels(m))) if idxs is None else list(idxs)
    return dg.get_pruning_group(m, pruner.prune_out_channels, idxs)


def _step(step: Any) -> tuple[str, list[int], int]:
    try:
        return step["module"], [int(i) for i in step["keep"]], int(step["channels"])
    except (TypeError, KeyError, ValueError):
        raise BadInput(f"structural_prune entry {step!r} needs 'module', 'keep' and 'channels'") from None


def replay_plan(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Prune `model` in place as `spec.structural_prune` says (nothing when the spec carries no plan)."""
    plan = spec.structural_prune or []
    if not plan:
        return model
    dg = build_graph(model, spec)
    mods = dict(model.named_modules())
    for step in plan:
        name, keep, channels = _step(step)
        m = mods.get(name)
        if m is None or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            raise BadInput(f"structural_prune: '{name}' is not a convolution or linear layer of {spec.arch}")
        if out_channels(m) != channels:
            raise BadInput(f"structural_prune: '{name}' has {out_channels(m)} output channels, the plan expects "
                           f"{channels} (was another entry applied to the same coupled channels?)")
        if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= channels:
            raise BadInput(f"structural_prune: keep list of '{name}' must be ascending, unique and within 0..{channels - 1}")
        drop = sorted(set(range(channels)) - set(keep))
        if drop:
            tap_group(dg, model, name, drop).prune(record_history=False)
    return model
