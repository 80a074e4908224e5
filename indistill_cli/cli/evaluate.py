"""`indistill evaluate`: parse, then `stages.evaluate`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import SPLIT, command, run_options


@command(app, ("model", "data", "split", "teacher", "flow_images", "plot", "batch_size", "device", "precision", *SPLIT,
               "strict", "json_out", "quiet"))
def evaluate(
    model: Annotated[str, typer.Argument(help="Checkpoint to evaluate (or - for stdin).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", help="(Pruned) teacher: adds per-tap MSE "
                                                   "to its targets and prediction agreement.")] = None,
    flow_images: Annotated[int, typer.Option(help="Images used for the --teacher flow view.")] = 2000,
    plot: Annotated[Optional[str], typer.Option(help="PNG of the per-tap MSE (with --teacher).")] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    **o: Any,
) -> None:
    """Top-1 / top-5 accuracy, loss and per-class accuracy of a checkpoint on a split.

    With --teacher, also the information-flow view: per paired tap, the MSE between the (pruned)
    teacher's target and the student's feature map, and teacher-student agreement.

    Examples:

        indistill evaluate cnn3.safetensors --data fashion-mnist-mini --json

        indistill evaluate student.safetensors --teacher t_pruned.safetensors --split val --plot flow.png
    """
    def body() -> Any:
        from indistill_cli.stages.evaluate import run_evaluate

        opts = run_options(o, eval_batch_size=batch_size)
        return run_evaluate(model, split, opts, teacher=teacher, flow_images=flow_images, plot=plot)

    run(body, o["json_out"], o["quiet"])
