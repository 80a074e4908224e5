"""`indistill compare`: its options are `stages.commands.CompareSettings`; the work is `stages.compare`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import CompareSettings


@command(app, CompareSettings)
def compare(s: CompareSettings) -> Any:
    """What compression bought: parameters, MACs, bytes on disk and latency (batch 1 and --batch, eager and
    onnxruntime) of each checkpoint, with --data its top-1 and retrieval mAP, and every figure as a ratio
    against the first checkpoint.

    MACs are counted by torch.utils.flop_counter (FLOPs / 2) at batch 1 for the model's input size.
    Latency is measured on this machine (--device, --threads) and depends on what else runs on it.

    Examples:

        indistill compare teacher.safetensors student.safetensors

        indistill compare teacher.safetensors student.safetensors --data fashion-mnist-mini --plot tradeoff.png --json
    """
    from indistill_cli.stages.compare import run_compare

    return run_compare(s)
