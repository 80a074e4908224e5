"""How much memory is free, and the one check every size a user can type goes through before anything of
that size is allocated (synthetic sets, decoded image folders, batches at an image size).

A request that cannot fit is one line and exit 2 naming the size and the option that sets it, instead of
a MemoryError or an allocator's traceback minutes into a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from indistill_cli.errors import BadInput


def _cgroup_free() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def host_available() -> int | None:
    """Bytes of RAM a new allocation can take now (MemAvailable, capped by a cgroup limit); None if unknown."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    cg = _cgroup_free()
    return min(v for v in (free, cg) if v is not None) if (free, cg) != (None, None) else None


def available(device: Any = "cpu") -> int | None:
    """Free bytes where tensors for `device` live: host RAM, or the GPU's free memory."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    return host_available()


def gib(n: float) -> str:
    """Bytes as a short human figure (GiB above 1 GiB, else MiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_fits(nbytes: float, what: str, fix: str, device: Any = "cpu") -> None:
    """Refuse (BadInput) before allocating `nbytes` for `what` when they exceed the free memory; `fix` says
    which option to change. Unknown free memory passes."""
    free = available(device)
    if free is not None and nbytes > free:
        where = "GPU memory" if str(device).startswith("cuda") else "memory"
        raise BadInput(f"{what} would take {gib(nbytes)}, more than the {gib(free)} of {where} free here; {fix}")
