"""The native families' registry: every architecture indistill defines itself, by the name a user types.

Each family module registers its names with `register` in plain lines (`register("resnet20", ...)`), so a
name can be found with grep. A builder takes (width, in_channels, num_classes, input_size) and returns a
module that declares its own taps (`tap_names`, `embedding_name`, `preact_taps`): the native source's
declaration is the model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.io.spec import ModelSpec
from indistill_cli.models.source import Source


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    summary: str
    build: Callable[..., Any]  # (width, in_channels, num_classes, input_size) -> nn.Module


REGISTRY: dict[str, Entry] = {}


def register(name: str, family: str, summary: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"model {name} registered twice")
        REGISTRY[name] = Entry(name, family, summary, fn)
        return fn

    return deco


def scaled(widths: list[int], width: float) -> list[int]:
    """Channel widths times a multiplier, at least 1 each."""
    return [max(1, int(round(w * width))) for w in widths]


def list_models() -> list[Entry]:
    return sorted(REGISTRY.values(), key=lambda e: (e.family, e.name))


class NativeSource(Source):
    """resnet20, cnn3-w0.5, ...: built here, taps declared by each family's module."""

    prefix = ""

    def check(self, arch: str, width: float, args: dict[str, Any] | None) -> None:
        if arch not in REGISTRY:
            raise BadInput(f"unknown architecture '{arch}'{did_you_mean(arch, REGISTRY)}; `indistill models` lists "
                           f"them, or use timm:NAME / tv:NAME")
        if not 0 < width <= 16:
            raise BadInput(f"model '{arch}-w{width:g}': width multiplier must be in (0, 16]")
        if args:
            raise BadInput(f"model '{arch}': native families take no constructor arguments (got "
                           f"{', '.join(args)}); a width multiplier is -wX, e.g. {arch}-w0.5")

    def build(self, spec: ModelSpec, pretrained: bool) -> Any:
        if pretrained:
            raise BadInput(f"--pretrained: {spec.arch} is a native family, which ships no weights; train it, or "
                           f"use a timm:NAME / tv:NAME model")
        self.check(spec.arch, spec.width, spec.args)
        return REGISTRY[spec.arch].build(spec.width, spec.in_channels, spec.num_classes, spec.input_size[0])
