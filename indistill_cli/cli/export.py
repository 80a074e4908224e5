"""`indistill export`: parse, then `stages.export`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OUTPUT, command, override, run_options


@command(app, ("checkpoint", "out", "fmt", "output", "include_normalize", "check", "tolerance", "parity_images",
               "data", "data_root", *OUTPUT),
         data=override(Optional[str], None, "--data", "-d", help="Dataset whose test images the parity check runs on "
                       "(default: the checkpoint's own; random inputs, with a warning, when it is not here)."))
def export(
    checkpoint: Annotated[str, typer.Argument(help="Model checkpoint to export (or - for stdin).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output file: model.onnx or model.pt2.")],
    fmt: Annotated[str, typer.Option("--format", help="auto (from the file name), onnx, or torch-export (a .pt2 "
                                     "program for torch.export.load).")] = "auto",
    output: Annotated[str, typer.Option("--output", help="What the exported model returns: logits, or embedding "
                                        "(the pooled embedding tap, for retrieval).")] = "logits",
    include_normalize: Annotated[bool, typer.Option(help="Fold the normalisation into the graph: the input is then "
                                                    "pixels scaled to [0, 1].")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run the exported model against the eager one "
                                        "on a real batch before writing (exit 1 past --tolerance).")] = True,
    tolerance: Annotated[float, typer.Option(help="Largest absolute difference the parity check accepts.")] = 1e-4,
    parity_images: Annotated[int, typer.Option(help="Images in the parity batch.")] = 32,
    **o: Any,
) -> None:
    """Export a checkpoint for deployment: an ONNX file (dynamic batch) or a torch.export program, with the
    normalisation, input size, classes and source checkpoint in its metadata.

    A parity check runs by default: the exported model (onnxruntime on CPU, or the loaded .pt2 program)
    against the eager model on a batch of test images; the largest absolute difference is printed and past
    --tolerance nothing is written (exit 1). ONNX needs `pip install 'indistill[export]'`.

    Examples:

        indistill export student.safetensors -o student.onnx

        indistill export student.safetensors -o student-emb.onnx --output embedding --include-normalize

        indistill export student.safetensors -o student.pt2
    """
    def body() -> Any:
        from indistill_cli.stages.export import run_export

        opts = run_options(o)
        return run_export(checkpoint, out, opts, fmt, output, include_normalize, check, tolerance, parity_images,
                          o["data"], o["force"])

    run(body, o["json_out"], o["quiet"])
