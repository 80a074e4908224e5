"""What a study's protocol records of its data: the size of each split and one sha256 over their contents, so
a run on another copy, another split or another `--train-fraction` cannot pass for the registered one."""

from __future__ import annotations

import hashlib
from typing import Any

from indistill_cli.data.base import Dataset


def _update(h: Any, split: Any) -> None:
    if hasattr(split, "images"):  # tensors: the stored pixels and labels
        h.update(split.images.contiguous().numpy().tobytes())
        h.update(split.labels.numpy().tobytes())
    else:  # an image folder: each file's path, size and label (reading every image would cost minutes)
        import os

        for path, label in split.items:
            h.update(f"{path}|{os.path.getsize(path)}|{label}\n".encode())


def fingerprint(ds: Dataset) -> dict[str, Any]:
    """{train, val, test: image counts; sha256: of the three splits in order}."""
    h = hashlib.sha256()
    counts = {}
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        counts[name] = 0 if split is None else len(split)
        h.update(f"{name}:{counts[name]}\n".encode())
        if split is not None:
            _update(h, split)
    return {**counts, "sha256": h.hexdigest()}
