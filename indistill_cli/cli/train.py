"""`indistill train`: parse, then `stages.train`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OPTIM, OUTPUT, RESUMABLE, RUNTIME, SPLIT, command, optim_config, run_options


@command(app, ("model", "output", "data", "epochs", "batch_size", *OPTIM, *RUNTIME, *SPLIT, "train_fraction",
               "eval_batch_size", "pretrained", "last", "select", *RESUMABLE, *OUTPUT))
def train(
    model: Annotated[str, typer.Argument(help="Architecture name (resnet56, cnn3-w0.5, timm:resnet18, tv:...) "
                                              "or a checkpoint to keep training.")],
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Training epochs.")] = 30,
    pretrained: Annotated[bool, typer.Option(help="Start timm/tv models from hub weights (needs network).")] = False,
    last: Annotated[bool, typer.Option("--last/--no-last", help="Also write OUT.last.safetensors.")] = True,
    **o: Any,
) -> None:
    """Train a model with cross-entropy (a teacher, or a baseline student).

    Keeps the best epoch on the validation split in OUT and the last epoch in OUT.last.safetensors.

    Examples:

        indistill train cnn3 --data fashion-mnist-mini --epochs 2 -o cnn3.safetensors

        indistill train resnet56 --data cifar10 --epochs 240 --lr 0.05 --schedule multistep --milestones 150,180,210 -o resnet56.safetensors
    """
    def body() -> Any:
        from indistill_cli.stages.train import run_train

        opts, optim = run_options(o), optim_config(o)
        return run_train(model, o["output"], epochs, optim, opts, pretrained=pretrained, force=o["force"],
                         save_last=last, select=o["select"])

    run(body, o["json_out"], o["quiet"], o["output"])
