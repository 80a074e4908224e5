"""`indistill export`: its options are `stages.commands.ExportSettings`; the work is `stages.export`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import ExportSettings


@command(app, ExportSettings)
def export(s: ExportSettings) -> Any:
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
    from indistill_cli.stages.export import run_export

    return run_export(s)
