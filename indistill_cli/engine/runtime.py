"""Where and how a run executes: device, precision, seeding, process group, peak memory.

Kept apart from the training loop so `evaluate`/`retrieve` share the same device and seeding rules.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import sys
from collections.abc import Callable
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

    def device_name(self) -> str:
        """The device alone: the GPU's name and index, or the CPU with its thread count."""
        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name(self.device)} ({self.device})"
        return f"cpu x{torch.get_num_threads()}"

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
        extra = f", {self.world} ranks" if self.world > 1 else ""
        return f"{name}, {self.precision}{', channels_last' if self.channels_last else ''}{extra}"


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto") -> Runtime:
    """Pick the device and numerics: bf16 + channels_last on CUDA by default, fp32 + channels_last on CPU.

    channels_last on CPU: oneDNN's NHWC convolutions measured 30% faster for a resnet20 training step
    and 20% for resnet56 inference than NCHW (benchmarks/results/throughput-cpu.md); without oneDNN
    (`torch.backends.mkldnn.is_available()` false) auto stays NCHW.
    """
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
    auto_cl = dev.type == "cuda" or torch.backends.mkldnn.is_available()
    cl = {"auto": auto_cl, "on": True, "off": False}.get(channels_last)
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
        import atexit

        atexit.register(shutdown)


def shutdown() -> None:
    """Tear the process group down while the interpreter is whole: collect the stage's DDP wrappers first
    (their reducers hold the group and its gloo worker threads), then destroy it. Left to interpreter
    finalisation, a worker thread still joinable aborts the rank ("terminate called without an active
    exception"). Called when a command ends, and at exit as a fallback; idempotent."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    """Wait for every rank (a no-op on one process). Each stage ends with it, so no rank exits (or starts
    the next pipeline stage) before rank 0 has written the outputs."""
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()


def agree(rt: Runtime, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank is true on every rank (an all-reduce of the maxima), so all ranks stop,
    save or skip at the same step; the flags themselves on one process."""
    if not rt.distributed:
        return flags
    import torch.distributed as dist

    v = torch.tensor([float(f) for f in flags], device=rt.device)
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in v)


def broadcast_state(module: torch.nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's parameters and buffers (DDP does this when it wraps a whole module; the
    warmup wraps only the layers each phase uses, so it makes the whole student equal first)."""
    if rt.distributed:
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, 0)


def ddp(module: torch.nn.Module, rt: Runtime, ignore: list[str] | tuple[str, ...] = (),
        probe: Callable[[], torch.Tensor] | None = None) -> Any:
    """`module` in plain DistributedDataParallel when distributed, else itself. Rank 0's state is broadcast
    at wrap time, so ranks that built it from different seeds (the seed is offset by rank) agree.
    `ignore` names parameters/buffers (state-dict names) that DDP neither syncs nor expects gradients for;
    `probe` computes the step's loss from `module` on a few samples: the trainable parameters it leaves
    without gradient (see `unreached`) are ignored too, so DDP never waits for them (plain DDP raises at
    the second step) and never needs find_unused_parameters (a graph walk every step)."""
    if not rt.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignore = list(ignore) + (unreached(module, probe) if probe is not None else [])
    gc.collect()  # an earlier wrapper of this module no longer referenced: its gradient hooks must be gone
    # DDP reads this list at construction (a private static method, present on every torch >= 1.8); set it
    # also when empty, so a list an earlier wrapper of the same module was given does not linger
    setter = getattr(DDP, "_set_params_and_buffers_to_ignore_for_model", None)
    if setter is not None:
        setter(module, ignore)
    else:  # pragma: no cover - what the setter does
        module._ddp_params_and_buffers_to_ignore = ignore
    return DDP(module, device_ids=[rt.device] if rt.device.type == "cuda" else None)


def unreached(module: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> list[str]:
    """State-dict names of `module`'s trainable parameters that no gradient of `loss()` reaches, and the
    buffers of its modules that own only such parameters (a BN whose weights get no gradient): what DDP
    must neither sync nor wait for. One probing backward in eval mode (no running statistics change, no
    .grad is written) with the random generators forked (the probe draws nothing a step would), so every
    rank finds the same set and the run goes on as without the probe. The loss decides, not a guess: a
    head without CE, a tap method's unread layers, a phase's untrained part."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        return []
    was = module.training
    module.eval()
    cuda = sorted({p.device.index or 0 for _, p in named if p.device.type == "cuda"})
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=cuda):
            out = loss()
            grads = (torch.autograd.grad(out, [p for _, p in named], allow_unused=True) if out.requires_grad
                     else [None] * len(named))
    finally:
        module.train(was)
    return with_orphan_buffers(module, {n for (n, _), g in zip(named, grads) if g is None})


def with_orphan_buffers(module: torch.nn.Module, unused: set[str]) -> list[str]:
    """The unused parameters' names plus the buffers of the modules that own only unused parameters."""
    out = sorted(unused)
    for mod_name, mod in module.named_modules():
        own = [f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters(recurse=False)]
        if own and all(o in unused for o in own):
            out += [f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_buffers(recurse=False)]
    return out


def sync_batchnorm(model: torch.nn.Module, rt: Runtime, enabled: bool) -> torch.nn.Module:
    """--sync-bn: BatchNorm statistics over the global batch (all ranks) instead of each rank's shard.

    Converted in place (same parameter objects; the state dict keys are unchanged, so checkpoints load
    into plain BatchNorm). A no-op on one process, where SyncBatchNorm would equal BatchNorm.
    """
    if not enabled or not rt.distributed:
        return model
    if rt.device.type != "cuda":
        raise BadInput("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); drop it on CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


COMPILE_BACKEND_ENV = "INDISTILL_COMPILE_BACKEND"


def compile_backend() -> str:
    """The torch.compile backend --compile uses: $INDISTILL_COMPILE_BACKEND, default inductor (aot_eager runs
    the same graphs without generating kernels: what the CPU tests use)."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def maybe_compile(module: torch.nn.Module, enabled: bool) -> Any:
    """--compile: torch.compile the module the step calls (off by default: compiling costs ~a minute
    up front and pays back only on long runs)."""
    if not enabled:
        return module
    backend = compile_backend()
    try:
        return torch.compile(module, backend=backend)
    except Exception as e:  # torch's InvalidBackend (its module moved between versions)
        raise BadInput(f"{COMPILE_BACKEND_ENV}={backend}: not a torch.compile backend ({type(e).__name__}); "
                       f"use inductor, aot_eager or eager") from None


def compile_begin() -> None:
    """Forget earlier compilations and their counts, so a command reports its own graphs and breaks."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def compile_stats() -> dict[str, Any]:
    """What --compile did since `compile_begin`: the backend, graphs compiled, graph breaks and their reasons
    (each reason's first line, with its count)."""
    from torch._dynamo.utils import counters

    reasons: dict[str, int] = {}
    for reason, n in counters["graph_break"].items():
        short = str(reason).strip().splitlines()[0][:120] if str(reason).strip() else "?"
        reasons[short] = reasons.get(short, 0) + int(n)
    return {"backend": compile_backend(), "graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": sum(reasons.values()), "reasons": reasons}


def describe_compile(stats: dict[str, Any]) -> str:
    """One line for stderr."""
    why = "; ".join(f"{r} (x{n})" for r, n in stats["reasons"].items())
    return (f"--compile ({stats['backend']}): {stats['graphs']} graph(s), {stats['graph_breaks']} graph break(s)"
            + (f": {why}" if why else ""))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, torch (CPU and CUDA). CPU runs are bitwise repeatable with the same seed."""
    random.seed(seed)
    torch.manual_seed(seed)
    # set both ways: a process that runs several commands (the pipeline, the tests) keeps no earlier one's
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak afresh where that is possible, so each stage of a pipeline reports its own: the CUDA
    allocator's peak statistics. On CPU there is nothing to reset (see `peak_memory_mb`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: on GPU the CUDA allocator's peak since the stage began (`reset_peak_memory`); on CPU
    the process's resident-set high-water mark.

    On Linux that is VmHWM: the most physical memory this process image has held at any moment since it
    started, not since the stage began, so in a pipeline a later stage reports at least an earlier one's
    peak (the dataset, models and allocator caches of all stages so far). getrusage's ru_maxrss is not
    used: it survives exec, so a CLI started from a large parent (a test runner, a benchmark) would report
    the parent's.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20
