"""`indistill warmup`: parse, then `stages.warmup`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OUTPUT, RESUMABLE, RUNTIME, SPLIT, command, optim_config, override, run_options


@command(app, ("teacher", "student", "output", "data", "a", "b", "epochs_per_tap", "cumulative", "batch_size",
               "optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma",
               "reset_optimizer_each_epoch", "plan_epochs", "plan", "select", "plot", "flow_images", *RUNTIME, *SPLIT,
               "train_fraction", *RESUMABLE, *OUTPUT),
         optimizer="adam", weight_decay=0.0, schedule="none",
         lr=override(float, 1e-3, help="Learning rate (reference: Adam 1e-3)."),
         select=override(str, "auto", help="auto or last: the warmup trains taps only (no head, no embedding), so it "
                         "keeps its last epoch."))
def warmup(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Pruned teacher checkpoint (from `prune`) or -.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student checkpoint, - or architecture name.")],
    a: Annotated[float, typer.Option("--a", help="Curriculum: tap l trains for round(a + b*l) epochs.")] = 2.0,
    b: Annotated[float, typer.Option("--b", help="Curriculum slope (deeper taps get more epochs).")] = 1.0,
    epochs_per_tap: Annotated[Optional[str], typer.Option(help="Explicit epochs per tap, e.g. 3,4,5.")] = None,
    cumulative: Annotated[bool, typer.Option(help="Also keep the MSE terms of earlier taps.")] = False,
    reset_optimizer_each_epoch: Annotated[bool, typer.Option(
        help="Re-create the optimiser every epoch (the reference code's habit).")] = False,
    plan_epochs: Annotated[int, typer.Option(help="Make the warmup the first part of ONE lr plan over this many "
                                             "student epochs (warmup + KD, as the reference runs its student): the "
                                             "lr follows the plan and the optimiser state is written to a sidecar "
                                             "that `distill --continue-plan` takes up. 0: the warmup alone.")] = 0,
    plan: Annotated[Optional[str], typer.Option(help="Where --plan-epochs writes the sidecar (default "
                                                "OUT.plan.safetensors; needed with -o -).")] = None,
    plot: Annotated[Optional[str], typer.Option(help="Write the per-tap MSE curves as PNG.")] = None,
    flow_images: Annotated[int, typer.Option(help="Validation images for the per-epoch flow curves.")] = 1000,
    **o: Any,
) -> None:
    """InDistill warmup: copy the pruned teacher's feature maps into the student, tap by tap.

    Tap l (shallow to deep) trains for a + b*l epochs on MSE(student tap l, teacher tap l) only.

    Examples:

        indistill warmup --teacher t_pruned.safetensors --student cnn3-w0.5 --data fashion-mnist-mini -o warm.safetensors --plot flow.png

        indistill prune t.safetensors --like cnn3-w0.5 -o - | indistill warmup -t - -s cnn3-w0.5 -o warm.safetensors
    """
    def body() -> Any:
        from indistill_cli.stages.warmup import run_warmup

        opts = run_options(o)
        optim = optim_config(o, reset_each_epoch=reset_optimizer_each_epoch, plan_epochs=plan_epochs)
        return run_warmup(teacher, student, o["output"], optim, opts, a, b, epochs_per_tap, cumulative, plot,
                          flow_images, o["force"], o["select"], plan)

    run(body, o["json_out"], o["quiet"], o["output"])
