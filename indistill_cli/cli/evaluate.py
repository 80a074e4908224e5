"""`indistill evaluate`: its options are `stages.commands.EvaluateSettings`; the work is `stages.evaluate`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import EvaluateSettings


@command(app, EvaluateSettings)
def evaluate(s: EvaluateSettings) -> Any:
    """Top-1 / top-5 accuracy, loss and per-class accuracy of a checkpoint on a split.

    With --teacher, also the information-flow view: per paired tap, the MSE between the (pruned)
    teacher's target and the student's feature map, and teacher-student agreement.

    Examples:

        indistill evaluate cnn3.safetensors --data fashion-mnist-mini --json

        indistill evaluate student.safetensors --teacher t_pruned.safetensors --split val --plot flow.png
    """
    from indistill_cli.stages.evaluate import run_evaluate

    return run_evaluate(s)
