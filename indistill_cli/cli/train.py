"""`indistill train`: its options are `stages.commands.TrainSettings`; the work is `stages.train`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import TrainSettings


@command(app, TrainSettings)
def train(s: TrainSettings) -> Any:
    """Train a model with cross-entropy (a teacher, or a baseline student).

    Keeps the best epoch on the validation split in OUT and the last epoch in OUT.last.safetensors.

    Examples:

        indistill train cnn3 --data fashion-mnist-mini --epochs 2 -o cnn3.safetensors

        indistill train resnet56 --data cifar10 --epochs 240 --lr 0.05 --schedule multistep --milestones 150,180,210 -o resnet56.safetensors
    """
    from indistill_cli.stages.train import run_train

    return run_train(s)
