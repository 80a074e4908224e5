"""The one tap mechanism: forward hooks that capture named module outputs (or inputs).

`name` taps a module's output, `name:in` its first input (e.g. the classifier's input = the
embedding of a hub model), `name:pre` the pre-activation of a declared tap: the value its final ReLU
receives (OFD, AB and ReviewKD read it). A model family declares where that value is with a
`preact_taps` attribute, {tap: module name or "module:in"}, at the tap's resolution; a model that
declares none (timm, torchvision) cannot give `:pre` taps and says so in one line. Pre-activations are
cloned when captured: the ReLU that follows may work in place. Shared by prune, warmup, distill,
evaluate and retrieve. A TapSet can also stop the forward pass right after a given tap, so warmup
phases never compute layers past the active tap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.models.pooling import adaptive_avg_pool2d


class _StopForward(Exception):
    pass


PRE = ":pre"


def preact_name(model: nn.Module, name: str) -> str:
    """Where the model keeps tap `name`'s pre-activation (a module name, or "module:in")."""
    declared = getattr(model, "preact_taps", None) or {}
    if name not in declared:
        arch = type(model).__name__
        have = f"; it declares them for {', '.join(declared)}" if declared else (
            "; the native families (cifar resnets, wrn, vgg, cnn3, preact_resnet18) do")
        raise BadInput(f"tap '{name}{PRE}': {arch} declares no pre-activation (pre-ReLU) value for '{name}', which "
                       f"OFD, AB and ReviewKD read{have}")
    return declared[name]


def resolve(model: nn.Module, name: str) -> tuple[nn.Module, bool, bool]:
    """(module, is_input, clone) for a tap name; unknown names are a clear BadInput."""
    mod_name, _, suffix = name.partition(":")
    if suffix not in ("", "in", "pre"):
        raise BadInput(f"tap '{name}': the suffixes are ':in' (the module's input) and ':pre' (the pre-activation)")
    if suffix == "pre":
        module, is_input, _ = resolve(model, preact_name(model, mod_name))
        return module, is_input, True
    mods = dict(model.named_modules())
    if mod_name not in mods or not mod_name:
        raise BadInput(f"unknown tap '{name}'{did_you_mean(mod_name, [n for n in mods if n])}")
    return mods[mod_name], suffix == "in", False


class TapSet:
    """Capture named activations during forward passes.

    Use as a context manager (hooks removed on exit) or keep it open for a whole training run and
    read `.out` after each forward. `stop_after` ends the forward once that tap has been captured.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], stop_after: str | None = None) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.out: dict[str, torch.Tensor] = {}
        self.stop_after = stop_after
        self._handles: list[Any] = []
        for name in self.names:
            mod, is_input, clone = resolve(model, name)
            if is_input:
                self._handles.append(mod.register_forward_pre_hook(self._pre_hook(name, clone)))
            else:
                self._handles.append(mod.register_forward_hook(self._hook(name, clone)))

    def _store(self, name: str, value: Any, clone: bool) -> None:
        """Keep the value (a module called twice in one forward, like a block's shared ReLU, leaves its
        last call's)."""
        if isinstance(value, (tuple, list)):
            value = value[0]
        self.out[name] = value.clone() if clone else value
        if self.stop_after == name:
            raise _StopForward

    def _hook(self, name: str, clone: bool = False):
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            self._store(name, out, clone)

        return hook

    def _pre_hook(self, name: str, clone: bool = False):
        def hook(_m: nn.Module, inp: Any) -> None:
            self._store(name, inp, clone)

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """Run the model; returns its output, or None when stopped early at `stop_after`."""
        self.out = {}
        try:
            return self.model(x)
        except _StopForward:
            return None

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> TapSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def as_vector(t: torch.Tensor) -> torch.Tensor:
    """Pool a feature map (or any N-D activation) to (N, D) vectors."""
    if t.dim() == 4:
        return F.adaptive_avg_pool2d(t, 1).flatten(1)
    return t.flatten(1) if t.dim() > 2 else t


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two feature maps to the smaller's spatial size (deterministically
    under --deterministic: `pooling`)."""
    if a.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    if a.shape[-2:] != (h, w):
        a = adaptive_avg_pool2d(a, (h, w))
    if b.shape[-2:] != (h, w):
        b = adaptive_avg_pool2d(b, (h, w))
    return a, b
