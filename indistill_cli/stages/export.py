"""`indistill export`: a checkpoint as a deployable file (ONNX, or a `torch.export` .pt2 program) that gives
the checkpoint's outputs, proved by a parity check before the file is written; or, with `--format state-dict`,
the way back to the user's own code: the model's plain state dict as safetensors, which
`timm.create_model(..., checkpoint_path=)` or a torchvision model's `load_state_dict` reads.

The file is built in memory, run (onnxruntime on CPU, or the loaded program) on a real batch of the
checkpoint's dataset beside the eager model, and written (atomically) only when the largest absolute
difference is within the tolerance; otherwise exit 1 and nothing is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from indistill_cli import __version__, progress
from indistill_cli.data import check_compatible, load_dataset, make_loader
from indistill_cli.errors import BadInput, RunFailure
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint
from indistill_cli.models import create_model
from indistill_cli.models import export as ex
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import ExportSettings
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.session import Session, loader_norm

FORMATS = {".onnx": "onnx", ".pt2": "torch-export", ".safetensors": "state-dict"}
OUTPUTS = ("logits", "embedding")


def deployable_checkpoint(src: str) -> Checkpoint:
    """A checkpoint that is a model one can ship: not embeddings, not a probe-mode pruned teacher (the whole
    teacher plus the channels pruning kept); a chained pruned teacher is a real, smaller model."""
    ck = load_checkpoint(src)
    if ck.role == "embeddings":
        raise BadInput(f"{ck.source}: is an embeddings file (from `indistill retrieve --export`), not a model")
    if ck.role == "pruned-teacher" and (ck.info.get("pruning") or {}).get("mode") != "chained":
        raise BadInput(f"{ck.source}: is a pruned teacher in probe mode (the full teacher plus the channels `prune` "
                       f"kept, a warmup target), not a model to ship; export the teacher's or the student's checkpoint")
    return ck


def norm_of(ck: Checkpoint) -> dict[str, Any]:
    """The normalisation the model was trained with: its spec's, else its dataset's."""
    norm = ck.spec.norm
    ds = ck.info.get("dataset") or {}
    return norm if norm.get("mean") else {"mean": ds.get("mean"), "std": ds.get("std")}


def parity_batch(ck: Checkpoint, opts: RunOptions, data: str | None, n: int) -> tuple[torch.Tensor, str]:
    """The first `n` test images of the checkpoint's dataset (or `data`) as the model sees them; random
    inputs, with a warning, when that dataset is not here and no --data was given."""
    spec = ck.spec
    name = data or (ck.info.get("dataset") or {}).get("name")
    try:
        if not name:
            raise BadInput("the checkpoint names no dataset")
        ds = load_dataset(name, 0.0, opts.data_root, int(spec.input_size[0]), seed=0, download=False)
        check_compatible(ds.info, spec, ck.source)
        loader = make_loader(ds.test, ds.info, n, model_channels=spec.in_channels, model_size=spec.input_size,
                             model_norm=loader_norm(spec, ds.info))
        x = next(iter(loader)).x.contiguous()
        return x, f"{len(x)} test images of {ds.info.name}"
    except BadInput as e:
        if data:
            raise
        progress.warn(f"parity checked on random inputs: {e}")
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, spec.in_channels, *spec.input_size, generator=g), f"{n} random inputs"


class Export(Stage):
    name = "export"
    loads_data = False  # the parity batch is read from the checkpoint's own dataset (parity_batch)

    s: ExportSettings

    def __init__(self, s: ExportSettings, tracker: Any = None) -> None:
        super().__init__(s, tracker)
        self.ckpt, self.fmt, self.output, self.include_normalize = s.checkpoint, s.fmt, s.output, s.include_normalize
        self.check_parity, self.tolerance, self.parity_images, self.data = s.check, s.tolerance, s.parity_images, s.data

    def check(self) -> None:
        if self.out == "-":
            raise BadInput("-o -: export writes a file (model.onnx, model.pt2 or weights.safetensors), not stdout")
        if self.fmt == "auto":
            self.fmt = FORMATS.get(Path(self.out).suffix.lower(), "")
            if not self.fmt:
                raise BadInput(f"-o {self.out}: name it .onnx, .pt2 or .safetensors (a plain state dict), or give "
                               f"--format onnx|torch-export|state-dict")
        if self.fmt not in FORMATS.values():
            raise BadInput(f"--format must be auto, onnx, torch-export or state-dict, got '{self.fmt}'")
        if self.fmt == "state-dict" and (self.output != "logits" or self.include_normalize):
            raise BadInput("--format state-dict writes the model's weights as they are: --output embedding and "
                           "--include-normalize apply to onnx / torch-export")
        if self.output not in OUTPUTS:
            raise BadInput(f"--output must be logits or embedding, got '{self.output}' (the file is -o/--out)")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise BadInput(f"--tolerance must be a positive number, got {self.tolerance}")
        if not 1 <= self.parity_images <= 4096:
            raise BadInput(f"--parity-images must be in 1..4096, got {self.parity_images}")
        if self.fmt == "onnx":
            ex.onnx_available()

    def prepare(self) -> None:
        self.ck = deployable_checkpoint(self.ckpt)
        if self.fmt == "state-dict" and self.ck.spec.structural_prune:
            raise BadInput(f"{self.ck.source}: a structurally pruned teacher's weights do not fit {self.ck.spec.arch} "
                           f"as published; export it with --format onnx or torch-export")

    def metadata(self, mean: list[float], std: list[float], dim: int) -> dict[str, Any]:
        """What a deployer needs beside the graph: preprocessing, input, output, provenance."""
        ck, spec, ds = self.ck, self.ck.spec, self.ck.info.get("dataset") or {}
        fold = self.include_normalize
        return {
            "indistill_version": __version__, "source_checkpoint": Path(ck.source).name, "source_sha256": ck.sha256,
            "model": spec.name, "dataset": ds.get("name", ""), "classes": ds.get("classes", []),
            "num_classes": spec.num_classes, "in_channels": spec.in_channels, "input_size": spec.input_size,
            "input": "float32 NCHW, pixels scaled to [0, 1] (normalised inside the graph)" if fold else
                     "float32 NCHW, (pixels / 255 - mean) / std per channel",
            "mean": mean, "std": std, "normalization": "inside" if fold else "outside",
            "serving": ds.get("serving") or f"{spec.input_size[0]}x{spec.input_size[1]} images as they are",
            "output": self.output, "output_dim": dim,
            "embedding_tap": spec.embedding.name if self.output == "embedding" else "",
        }

    def execute(self, s: Session) -> Result:
        ck = self.ck
        model = create_model(ck).model.eval()
        if self.fmt == "state-dict":
            return self.state_dict(model)
        mean, std = ex.model_norm(ck.spec, norm_of(ck))
        tap = ck.spec.embedding.name
        eager = ex.Deployable(model, self.output, tap)
        shipped = ex.Deployable(model, self.output, tap, mean, std) if self.include_normalize else eager
        x, source = parity_batch(ck, self.opts, self.data, self.parity_images)
        x_in = x * shipped.std + shipped.mean if self.include_normalize else x  # back to [0, 1] pixels
        with torch.no_grad():
            dim = int(eager(x[:1]).shape[1])
        meta = self.metadata(mean, std, dim)
        with progress.bar() as bars:
            bars.add_task(f"export {ck.spec.name} ({self.fmt})", total=None, status="")
            data, exporter = (ex.to_onnx if self.fmt == "onnx" else ex.to_pt2)(shipped, x_in[:2].clone(), meta)
        out: dict[str, Any] = {"output": self.out, "format": self.fmt, "exporter": exporter, "outputs": self.output,
                               "include_normalize": self.include_normalize, "bytes": len(data), "metadata": meta}
        if self.check_parity:
            out["parity"] = self.parity(data, eager, x, x_in, source)
        self.data_bytes = data
        out["wall_s"] = round(self.wall(), 3)
        return Result(out)

    def state_dict(self, model: torch.nn.Module) -> Result:
        """The plain state dict, with what a reader needs in its metadata and how to load it."""
        ck = self.ck
        meta = {"model": ck.spec.name, "num_classes": ck.spec.num_classes, "in_channels": ck.spec.in_channels,
                "input_size": list(ck.spec.input_size), "source_sha256": ck.sha256, "load_with": ex.load_hint(
                    ck.spec, Path(self.out).name), **dict(zip(("mean", "std"), ex.model_norm(ck.spec, norm_of(ck))))}
        data = self.data_bytes = ex.to_state_dict(model, meta)
        out: dict[str, Any] = {"output": self.out, "format": self.fmt, "exporter": "safetensors", "outputs": "weights",
                               "include_normalize": False, "bytes": len(data), "metadata": meta}
        if self.check_parity:
            eager = ex.Deployable(model, "logits", ck.spec.embedding.name)
            x, source = parity_batch(ck, self.opts, self.data, self.parity_images)
            out["parity"] = self.parity(data, eager, x, x, source)
        out["wall_s"] = round(self.wall(), 3)
        return Result(out)

    def parity(self, data: bytes, eager: ex.Deployable, x: torch.Tensor, x_in: torch.Tensor,
               source: str) -> dict[str, Any]:
        """Largest |exported - eager| on the batch; RunFailure (exit 1, nothing written) past the tolerance."""
        run = {"onnx": lambda: ex.onnx_runner(data), "torch-export": lambda: ex.pt2_runner(data)[0],
               "state-dict": lambda: ex.state_dict_runner(data, self.ck.spec)}[self.fmt]()
        with torch.no_grad():
            want, got = eager(x), run(x_in)
        diff = float((got.float() - want.float()).abs().max()) if got.shape == want.shape else math.inf
        where = {"onnx": "onnxruntime CPU", "torch-export": "the loaded torch.export program",
                 "state-dict": "a fresh module loading the file"}[self.fmt]
        line = (f"parity: max |exported - eager| = {diff:.2e} on {source} ({where}; tolerance "
                f"{self.tolerance:.0e}, {self.output})")
        if not diff <= self.tolerance:
            raise RunFailure(f"{line}: the exported model does not reproduce the checkpoint; nothing written")
        progress.info(line)
        return {"max_abs_diff": diff, "tolerance": self.tolerance, "images": int(x.shape[0]), "inputs": source,
                "runtime": where}

    def write_more(self, s: Session, r: Result) -> None:
        import hashlib

        atomic_write(self.out, self.data_bytes)
        r.summary["sha256"] = hashlib.sha256(self.data_bytes).hexdigest()

    def report(self, r: Result) -> None:
        summary = r.summary
        if self.fmt == "state-dict":
            progress.info(f"wrote {self.out} (a plain state dict, {summary['bytes'] / 1024:.0f} KiB); load it with: "
                          f"{summary['metadata']['load_with']}")
            return
        progress.info(f"wrote {self.out} ({summary['format']}, {summary['exporter']} exporter, "
                      f"{summary['bytes'] / 1024:.0f} KiB, {summary['outputs']}, dynamic batch)")


def run_export(settings: ExportSettings) -> dict[str, Any]:
    """Export `settings.checkpoint` to `settings.out` (see `Export`)."""
    return Export(settings).run()
