"""A model as shipped: one module from input to logits or embedding (normalisation optionally folded in),
written as an ONNX file or a `torch.export` program, and read back to run.

ONNX: the TorchScript exporter first (fast, one self-contained file), the dynamo exporter when that one
is missing or refuses the model (weights kept inside the file). Both give a dynamic batch dimension.
The metadata (normalisation, input size, classes, source checkpoint) goes into the ONNX file's
`metadata_props`, or into the `.pt2` archive as `extra/indistill.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput
from indistill_cli.io.spec import ModelSpec
from indistill_cli.models.taps import TapSet, as_vector

INPUT, OPSET, PT2_META = "input", 17, "indistill.json"
ONNX_MISSING = "ONNX export needs onnx and onnxruntime: pip install 'indistill[export]'"


def model_norm(spec: ModelSpec, norm: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The data's mean/std at the model's channel count (grayscale repeated for RGB models, RGB averaged
    for grayscale ones), as the loaders apply them."""
    c = spec.in_channels
    mean, std = list(norm.get("mean") or [0.0]), list(norm.get("std") or [1.0])
    if len(mean) != c:
        mean, std = ([sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c) if len(mean) > 1 else (mean * c, std * c)
    return [float(v) for v in mean], [float(v) for v in std]


class Deployable(nn.Module):
    """input -> logits (`output="logits"`) or the pooled embedding tap; with `mean`/`std`, the input is
    pixels in [0, 1] and normalisation happens inside."""

    def __init__(self, model: nn.Module, output: str, tap: str, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        super().__init__()
        self.model, self.output = model, output
        self.taps = TapSet(model, [tap]) if output == "embedding" else None
        self.tap, self.fold = tap, mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold:
            x = (x - self.mean) / self.std
        y = self.model(x)
        return y if self.taps is None else as_vector(self.taps.out[self.tap])


def onnx_available() -> None:
    """BadInput naming the extra when onnx or onnxruntime cannot be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BadInput(ONNX_MISSING) from None


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # without the exporters' colours
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _no_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null: the TorchScript exporter's C++ log prints its graph there on failure,
    and stdout carries only data."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _onnx_export(module: nn.Module, example: torch.Tensor, dest: Any, dynamo: bool) -> None:
    out = module.output
    with warnings.catch_warnings(), _no_stdout():  # deprecation notices and C++ logs are not the user's business
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(module, (example,), dest, dynamo=True, input_names=[INPUT], output_names=[out],
                              dynamic_shapes=({0: batch},), external_data=False, opset_version=max(OPSET, 18),
                              verbose=False)
        else:
            torch.onnx.export(module, (example,), dest, dynamo=False, input_names=[INPUT], output_names=[out],
                              dynamic_axes={INPUT: {0: "batch"}, out: {0: "batch"}}, opset_version=OPSET)
    module.eval()  # the exporter restores the modes it found; keep every submodule in eval


def to_onnx(module: Deployable, example: torch.Tensor, metadata: dict[str, Any]) -> tuple[bytes, str]:
    """(ONNX file bytes, exporter used): TorchScript exporter first, dynamo when it fails; BadInput with
    the exporter's first line when neither can export the model (an unsupported op)."""
    import io

    import onnx

    errors = []
    for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
        buf = io.BytesIO()
        try:
            _onnx_export(module, example, buf, dynamo)
            proto = onnx.load_from_string(buf.getvalue())
            break
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported as the model's
            errors.append(f"{exporter}: {_first_line(e)}")
            module.eval()
    else:
        raise BadInput("cannot export to ONNX (" + "; ".join(errors) + ")")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return proto.SerializeToString(), exporter


def to_pt2(module: Deployable, example: torch.Tensor, metadata: dict[str, Any]) -> tuple[bytes, str]:
    """(.pt2 archive bytes, exporter): a `torch.export` program with a dynamic batch (metadata as
    extra/indistill.json)."""
    import io

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # noqa: BLE001 - an op torch.export cannot capture
        raise BadInput(f"cannot export with torch.export ({_first_line(e)})") from None
    finally:
        module.eval()
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={PT2_META: json.dumps(metadata)})
    return buf.getvalue(), "torch.export"


def onnx_runner(source: str | bytes, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime CPU session (from a path or file bytes) as a function of a float tensor."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {INPUT: x.detach().cpu().numpy()})[0])

    return run


def pt2_runner(source: str | bytes) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """A saved `torch.export` program (a path or the archive's bytes) as a function, and its metadata."""
    import io

    extra = {PT2_META: ""}
    program = torch.export.load(io.BytesIO(source) if isinstance(source, bytes) else source, extra_files=extra)
    module = program.module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run, json.loads(extra[PT2_META] or "{}")


def onnx_metadata(path: str) -> dict[str, str]:
    """The metadata_props of an ONNX file, as written."""
    import onnx

    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


def to_state_dict(model: nn.Module, metadata: dict[str, Any]) -> bytes:
    """The module's state dict as safetensors bytes (tensors contiguous, shared storage copied), with string
    metadata (`format: pt`, as timm and Hugging Face write it)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    return save(tensors, metadata=meta)


def state_dict_runner(data: bytes, spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fresh module of the spec loading the state-dict bytes strictly, as a function (the parity check)."""
    from safetensors.torch import load

    from indistill_cli.models.create import create_model

    model = create_model(spec).model
    model.load_state_dict(load(data), strict=True)
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run


def load_hint(spec: ModelSpec, filename: str) -> str:
    """One line of Python that loads a `--format state-dict` file into the architecture's own code."""
    from indistill_cli.models.create import source_of

    return source_of(spec.arch).load_hint(spec, filename)
