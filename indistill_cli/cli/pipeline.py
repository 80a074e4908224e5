"""`indistill pipeline`: its options are `stages.commands.PipelineSettings`; the work is `stages.pipeline`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import PipelineSettings


@command(app, PipelineSettings)
def pipeline(s: PipelineSettings) -> Any:
    """The whole chain in one resumable command: [train teacher] -> [auxiliary] -> prune -> warmup -> distill -> evaluate -> retrieve.

    Each stage is the standalone command with the same options; outputs go to one folder.

    Examples:

        indistill pipeline -t resnet20 -s cnn3-w0.5 --data fashion-mnist-mini --teacher-epochs 8 --epochs 32 -o runs/ind

        indistill pipeline -t teacher.safetensors -s cnn3-w0.5 --no-warmup -o runs/baseline

        indistill pipeline -t preact_resnet18 -s cnn3-w0.5 --aux cnn3 -m pkt --ce 0 --data cifar10 -o runs/paper --resume
    """
    from indistill_cli.stages.pipeline import run_pipeline

    return run_pipeline(s)
