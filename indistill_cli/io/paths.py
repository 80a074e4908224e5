"""Names of the files a stage writes beside its output (`m.safetensors` -> `m.last.safetensors`, ...)."""

from __future__ import annotations

from pathlib import Path


def sibling(out: str | Path, suffix: str) -> str:
    """`out` with `.safetensors` replaced by `suffix` (e.g. '.plan.safetensors', '.resume')."""
    p = Path(out)
    return str(p.with_name(p.name.removesuffix(".safetensors") + suffix))
