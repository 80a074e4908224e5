"""Atomic file writes: temp file beside the target, fsync, rename, so no reader ever sees half a file.

Every file indistill writes (checkpoints, sidecars, resume states, JSON, PNG) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from indistill_cli.errors import RunFailure


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RunFailure(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, quota, I/O error: one line, exit 1, nothing left behind
            raise RunFailure(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    try:  # make the rename durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
