"""What would make a CUDA training step wait for the device, found on CPU: a dispatch mode that records
every aten op which, on a GPU, reads a device value back to the host (`.item()`, `float(t)`, `bool(t)`,
`if t:`), sizes its output by the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, ...)
or checks a solver's status (`eigh`, `svd`), plus a function mode for the Tensor methods that copy to the
host without an aten op (`tolist`, `numpy`, `cpu`). A CPU run executes the same ops as a CUDA one, so
a step that records nothing here does not synchronise there (host-to-device copies of CPU constants are
the one kind this cannot see on CPU: `torch.cuda.set_sync_debug_mode` does on a GPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops (overload packets) that synchronise on CUDA, whatever their arguments
SYNC_OPS = frozenset({
    "_local_scalar_dense",  # .item(), float(t), int(t), bool(t), `if t:`
    "is_nonzero", "equal", "allclose",  # tensor -> Python bool
    "nonzero", "masked_select", "argwhere",  # output sized by the data
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "bincount",  # sized by the largest value
    "_linalg_eigh", "_linalg_svd", "_linalg_check_errors", "linalg_lstsq",  # solver status read back
})
HOST_METHODS = frozenset({"tolist", "numpy", "cpu", "__array__"})


def _is_mask(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def syncs(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The reason `func(*args, **kwargs)` would synchronise a CUDA device, or None."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return name
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
            _is_mask(i) for i in (args[1] if len(args) > 1 else kwargs.get("indices", ())) or ()):
        return f"{name} with a boolean mask"
    if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 4:
        return "repeat_interleave without output_size"
    if name in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
        src = args[1] if name == "copy_" else args[0]
        dst = args[0].device if name == "copy_" else kwargs.get("device") or src.device
        if isinstance(src, torch.Tensor) and src.device.type != torch.device(dst).type:
            return f"{name} {src.device.type}->{torch.device(dst).type}"
    return None


class SyncDetector(TorchDispatchMode):
    """Records (in `found`) what would synchronise a CUDA device while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._methods = _HostMethods(self.found)

    def __enter__(self) -> "SyncDetector":
        self._methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._methods.__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        why = syncs(func, args, kwargs)
        if why is not None:
            self.found.append(why)
        return func(*args, **kwargs)


class _HostMethods(TorchFunctionMode):
    """Tensor methods that reach the host without an aten op."""

    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_METHODS:
            self.found.append(f"Tensor.{name}")
        return func(*args, **(kwargs or {}))
