"""The optimiser a run trains with, and its per-parameter state carried between stages by name."""

from __future__ import annotations

import torch
import torch.nn as nn

from indistill_cli.engine.schedule import OptimConfig


ParamGroup = tuple[list[nn.Parameter], float]  # parameters and their lr multiplier


def trainable_groups(trainable: nn.Module) -> list[ParamGroup]:
    """The parameters a run trains (those that require grad), grouped by lr multiplier.

    A module may declare `param_groups() -> [(params, lr_multiplier), ...]` (the distiller does: a KD
    method's temperature or adapters may have their own lr, as its paper says); otherwise every
    parameter runs at the base lr. Empty groups are dropped; the order is the optimiser's."""
    declared = getattr(trainable, "param_groups", None)
    groups = declared() if callable(declared) else [(list(trainable.parameters()), 1.0)]
    out = [([p for p in params if p.requires_grad], float(mult)) for params, mult in groups]
    return [(params, mult) for params, mult in out if params]


def make_optimizer(groups: list[ParamGroup], cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The run's optimiser; each group keeps its lr multiplier as `lr_mult` (the loop sets lr = base x it).

    `fused`: torch's fused kernels (CPU and CUDA), which take a device `found_inf` flag and then change
    nothing (the guard's deferred mode skips a bad step that way, without a host sync; GradScaler uses
    the same contract without its per-step `.item()`). Off by default: the CPU path keeps the for-each
    kernels whose numerics the bitwise references record."""
    torch_groups = [{"params": params, "lr": cfg.lr * mult, "lr_mult": mult} for params, mult in groups]
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(torch_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.nesterov and cfg.momentum > 0, **kw)
        if fused and cfg.momentum:
            zero_momentum(opt)
        return opt
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(torch_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


def zero_momentum(opt: torch.optim.Optimizer) -> None:
    """Give every parameter a zero SGD momentum buffer up front. Fused SGD's first step allocates the
    buffers with `empty_like` and fills them in the kernel, so a first step skipped by `found_inf`
    would leave them uninitialised. From zero, buf = 0 * momentum + (1 - dampening) * grad is the
    gradient itself (dampening is always 0 here), the same numbers as a first step."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))


def param_names(keep: nn.Module, params: list[nn.Parameter]) -> list[str | None]:
    """Each trained parameter's name in `keep` (the model whose state a run returns); None for the
    parameters outside it (KD adapters), which carry no optimiser state between stages."""
    by_id = {id(p): n for n, p in keep.named_parameters()}
    return [by_id.get(id(p)) for p in params]


def named_optimizer_state(opt: torch.optim.Optimizer, names: list[str | None]) -> dict[str, dict[str, torch.Tensor]]:
    """The optimiser's per-parameter state (Adam moments and step, SGD momentum) keyed by parameter name."""
    state = opt.state_dict()["state"]
    return {n: {k: v.detach().cpu().clone() for k, v in state[i].items() if torch.is_tensor(v)}
            for i, n in enumerate(names) if n is not None and i in state}


def load_named_optimizer_state(opt: torch.optim.Optimizer, names: list[str | None],
                               named: dict[str, dict[str, torch.Tensor]]) -> int:
    """Give the optimiser the per-parameter state of an earlier stage, by name; returns how many matched."""
    sd = opt.state_dict()
    hits = 0
    for i, n in enumerate(names):
        if n is not None and n in named:
            sd["state"][i] = {k: v.clone() for k, v in named[n].items()}
            hits += 1
    opt.load_state_dict(sd)
    return hits


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Total gradient 2-norm as a device tensor (no host sync); non-finite if any gradient is."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.nn.utils.get_total_norm(grads)
