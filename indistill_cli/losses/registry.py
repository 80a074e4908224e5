"""The distillation losses by the name used on the CLI (`--method kd`).

Each method module decorates its class with :func:`register`; importing the package imports them all,
so :func:`names` is complete.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from indistill_cli.losses.base import PREACT, USES, DistillLoss

_REGISTRY: dict[str, type[DistillLoss]] = {}


def register(name: str, *, uses: str, default_weight: float, ce_weight: float, preact: str = "", embedding: bool = False,
             cite: str = "", note: str = "") -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    """Class decorator: make ``cls`` available as ``get(name)`` with its paper's recipe: what it reads
    (``uses``: logits, embedding or taps; ``preact``: taps before their final ReLU, of the teacher or of
    both; ``embedding``: a taps method that also reads the embedding), its default weight and the CE
    weight that goes with it, a short citation and what differs from the paper (``note``)."""

    def deco(cls: type[DistillLoss]) -> type[DistillLoss]:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise TypeError(f"{cls!r} is not a DistillLoss subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss name {name!r} already registered by {_REGISTRY[name]!r}")
        if uses not in USES:
            raise ValueError(f"{cls.__name__}: uses must be one of {USES}, got {uses!r}")
        if preact not in PREACT or ((preact or embedding) and uses != "taps"):
            raise ValueError(f"{cls.__name__}: preact ({PREACT}) and embedding apply to taps methods only")
        cls.name, cls.uses, cls.default_weight, cls.ce_weight = name, uses, default_weight, ce_weight
        cls.preact, cls.with_embedding, cls.cite, cls.note = preact, embedding, cite, note
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str) -> type[DistillLoss]:
    """The loss class registered as ``name``; unknown names raise KeyError with a hint."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown distillation loss {name!r}{hint} (available: {', '.join(names())})"
        ) from None


def names() -> list[str]:
    """All registered loss names, sorted."""
    return sorted(_REGISTRY)
