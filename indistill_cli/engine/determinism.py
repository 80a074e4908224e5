"""--deterministic on CUDA: find the ops without a deterministic CUDA kernel before training starts.

Under torch.use_deterministic_algorithms such an op raises at its first call, often in the first backward,
deep in a traceback. Our own code avoids them (`models.pooling`); a timm/torchvision model's own layers
(e.g. torchvision VGG's AdaptiveAvgPool2d((7, 7))) we cannot change. So a stage that trains runs one
probing forward and backward (eval mode, two blank images, gradients returned rather than written, random
states restored) under a TorchDispatchMode that sees every aten op, and stops at the first one in
NONDETERMINISTIC_CUDA: one line, exit 2, naming it. The table is the ops that call ATen's
alertNotDeterministic on CUDA (torch 2.6+; torch.use_deterministic_algorithms' documentation lists them);
an op it misses still raises in the probe itself on a GPU, which is turned into the same line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from indistill_cli.errors import BadInput

# aten op (overload packet) -> what a user knows it as
NONDETERMINISTIC_CUDA: dict[str, str] = {
    "_adaptive_avg_pool2d_backward": "adaptive_avg_pool2d backward (AdaptiveAvgPool2d or F.adaptive_avg_pool2d to a size other than 1x1)",
    "_adaptive_avg_pool3d_backward": "adaptive_avg_pool3d backward (AdaptiveAvgPool3d)",
    "adaptive_max_pool2d_backward": "adaptive_max_pool2d backward (AdaptiveMaxPool2d)",
    "avg_pool3d_backward": "avg_pool3d backward (AvgPool3d)",
    "fractional_max_pool2d_backward": "fractional_max_pool2d backward (FractionalMaxPool2d)",
    "fractional_max_pool3d_backward": "fractional_max_pool3d backward (FractionalMaxPool3d)",
    "max_unpool2d": "max_unpool2d (MaxUnpool1d/2d)",
    "max_unpool3d": "max_unpool3d (MaxUnpool3d)",
    "upsample_linear1d_backward": "upsample_linear1d backward (interpolate, linear)",
    "upsample_bilinear2d_backward": "upsample_bilinear2d backward (interpolate, bilinear)",
    "_upsample_bilinear2d_aa_backward": "upsample_bilinear2d_aa backward (interpolate, bilinear, antialias)",
    "upsample_bicubic2d_backward": "upsample_bicubic2d backward (interpolate, bicubic)",
    "_upsample_bicubic2d_aa_backward": "upsample_bicubic2d_aa backward (interpolate, bicubic, antialias)",
    "upsample_trilinear3d_backward": "upsample_trilinear3d backward (interpolate, trilinear)",
    "reflection_pad1d_backward": "reflection_pad1d backward (ReflectionPad1d, padding_mode='reflect')",
    "reflection_pad2d_backward": "reflection_pad2d backward (ReflectionPad2d, padding_mode='reflect')",
    "reflection_pad3d_backward": "reflection_pad3d backward (ReflectionPad3d)",
    "grid_sampler_2d_backward": "grid_sampler_2d backward (grid_sample)",
    "grid_sampler_3d_backward": "grid_sampler_3d backward (grid_sample)",
    "nll_loss2d_forward": "nll_loss2d (NLLLoss / cross_entropy over maps, reduced)",
    "_ctc_loss_backward": "ctc_loss backward (CTCLoss)",
    "_embedding_bag_dense_backward": "embedding_bag backward, mode 'max' (EmbeddingBag)",
    "put_": "put_", "put": "put",
    "histc": "histc",
    "bincount": "bincount with weights",
    "median": "median with indices",
    "nanmedian": "nanmedian with indices",
    "kthvalue": "kthvalue",
    "scatter_reduce": "scatter_reduce, reduce='prod'",
    "scatter_reduce_": "scatter_reduce_, reduce='prod'",
}

# ops that alert only in some calls: (overload name, positional args) -> whether this call does
_ONLY_IF: dict[str, Callable[[str, tuple[Any, ...]], bool]] = {
    "nll_loss2d_forward": lambda _o, a: a[3] != 0,  # reduction other than 'none'
    "_embedding_bag_dense_backward": lambda _o, a: a[7] == 2,  # mode max
    "bincount": lambda _o, a: len(a) > 1 and a[1] is not None,  # weights given
    "median": lambda o, _a: o.startswith("dim"),  # the indices output
    "nanmedian": lambda o, _a: o.startswith("dim"),
    "scatter_reduce": lambda _o, a: a[4] == "prod",
    "scatter_reduce_": lambda _o, a: a[4] == "prod",
}


def flagged(func: Any, args: tuple[Any, ...]) -> str | None:
    """What an aten op call is known as when it has no deterministic CUDA kernel, else None."""
    name = func.overloadpacket.__name__
    what = NONDETERMINISTIC_CUDA.get(name)
    if what is None:
        return None
    only_if = _ONLY_IF.get(name)
    return what if only_if is None or only_if(func._overloadname, args) else None


class _Found(Exception):
    pass


class _Detector(TorchDispatchMode):
    """Stops at the first flagged op (before its kernel runs, which on a GPU would raise)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        what = flagged(func, args)
        if what is not None:
            raise _Found(what)
        return func(*args, **(kwargs or {}))


def first_nondeterministic(run: Callable[[], Any]) -> str | None:
    """Run `run` (a forward and backward) under the detector: the first op it calls without a deterministic
    CUDA kernel, or None. An alert raised by a kernel the table misses (on a GPU) counts too."""
    try:
        with _Detector():
            run()
    except _Found as e:
        return str(e)
    except RuntimeError as e:  # the kernel's own alert ("X does not have a deterministic implementation ...")
        msg = str(e)
        if "does not have a deterministic implementation" not in msg:
            raise
        return msg.split(" does not have", 1)[0].strip()
    return None


def probe_backward(module: nn.Module, loss: Callable[[], torch.Tensor]) -> None:
    """One forward (`loss()`) and backward over `module`'s trainable parameters in eval mode: no running
    statistics change, no .grad is written, the random number generators are left as they were."""
    was = module.training
    params = [p for p in module.parameters() if p.requires_grad]
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    module.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            out = loss()
            if out.requires_grad and params:
                torch.autograd.grad(out, params, allow_unused=True)
    finally:
        module.train(was)


def needs_check(rt: Any) -> bool:
    """Only a CUDA run under --deterministic (torch.use_deterministic_algorithms) is checked."""
    return rt.device.type == "cuda" and torch.are_deterministic_algorithms_enabled()


def check_kernels(rt: Any, module: nn.Module, loss: Callable[[], torch.Tensor], what: str) -> None:
    """--deterministic on CUDA: one clear line (exit 2) if `what`'s training step would hit an op without a
    deterministic CUDA kernel, before any step is taken."""
    if not needs_check(rt):
        return

    def run() -> None:
        with rt.autocast():
            probe_backward(module, loss)

    op = first_nondeterministic(run)
    if op is not None:
        raise BadInput(f"--deterministic: {what} runs {op}, which has no deterministic CUDA kernel "
                       f"(torch.use_deterministic_algorithms would stop it in the first step); run without "
                       f"--deterministic, or use a model or method without it")


def blank_batch(spec: dict[str, Any], rt: Any, n: int = 2) -> torch.Tensor:
    """n zero images the model accepts, in the run's memory format (what the probes feed)."""
    x = torch.zeros(n, spec["in_channels"], *spec["input_size"], device=rt.device)
    return x.to(memory_format=torch.channels_last) if rt.channels_last else x
