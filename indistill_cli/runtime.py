"""Where and how a run executes: device, precision, seeding, process group, peak memory.

Kept apart from the training loop so `evaluate`/`retrieve` share the same device and seeding rules.
"""

from __future__ import annotations

import os
import random
import resource
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from indistill_cli.errors import BadInput


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
        extra = f", {self.world} ranks" if self.world > 1 else ""
        return f"{name}, {self.precision}{', channels_last' if self.channels_last else ''}{extra}"


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto") -> Runtime:
    """Pick the device and numerics: bf16 + channels_last on CUDA by default, plain fp32 on CPU."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BadInput(f"--device must be auto, cpu or cuda[:N], got '{device}'")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA device is available here (use --device cpu)")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise BadInput(f"--precision must be fp32, bf16 or fp16, got '{precision}'")
    if dev.type == "cpu" and precision == "fp16":
        raise BadInput("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    cl = {"auto": dev.type == "cuda", "on": True, "off": False}.get(channels_last)
    if cl is None:
        raise BadInput("--channels-last must be auto, on or off")
    rt = Runtime(dev, precision, cl, rank, world, local)
    if world > 1:
        init_distributed(rt)
    return rt


def init_distributed(rt: Runtime) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if rt.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=rt.device if rt.device.type == "cuda" else None)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, torch (CPU and CUDA). CPU runs are bitwise repeatable with the same seed."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def environment() -> dict[str, str]:
    """Versions and device, recorded in every checkpoint's history."""
    import platform

    import torchvision

    try:
        import timm

        timm_v = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        timm_v = "missing"
    from indistill_cli import __version__

    return {"indistill": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm_v, "python": platform.python_version()}
