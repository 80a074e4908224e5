"""JSON read from files a user hands us (checkpoint metadata, sidecars, manifests), bounded in depth.

`json.loads` raises RecursionError on a document nested a few thousand levels deep, and a value nested
hundreds deep would break whatever walks it later (the checksum's `json.dumps`, printing); indistill
writes nothing deeper than a handful of levels, so anything past `MAX_DEPTH` is refused as corrupt.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    """A JSON document nested deeper than MAX_DEPTH."""


def loads(text: str | bytes) -> Any:
    """`json.loads`, but a document nested deeper than MAX_DEPTH raises TooDeep (a ValueError), never
    RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(f"nested more than {MAX_DEPTH} levels deep") from None
    stack = [(value, 1)]  # iterative: checking the depth must not recurse either
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise TooDeep(f"nested more than {MAX_DEPTH} levels deep")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return value
