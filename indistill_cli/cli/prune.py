"""`indistill prune`: parse, then `stages.prune`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import (OPTIM, OUTPUT, RESUMABLE, RUNTIME, SPLIT, command, optim_config, override,
                                       run_options)


@command(app, ("teacher", "like", "output", "criterion", "mode", "pair", "finetune", "data", "batch_size", *OPTIM,
               *RUNTIME[:-2], *SPLIT, "train_fraction", "eval_batch_size", "select", *RESUMABLE, *OUTPUT),
         data=override(Optional[str], None, "--data", "-d", help="Dataset for the accuracies, activation statistics "
                       "and fine-tuning (default: the teacher's)."),
         lr=override(float, 0.01, help="Fine-tuning learning rate."))
def prune(
    teacher: Annotated[str, typer.Argument(help="Trained teacher checkpoint (or - for stdin).")],
    like: Annotated[str, typer.Option("--like", help="The student whose tap widths the teacher is pruned to: a "
                                      "checkpoint or an architecture name (built for the teacher's data).")],
    criterion: Annotated[str, typer.Option(help="Channel importance: l1 (filter |W| sum, the reference), l2, "
                                           "bn-scale (|gamma|) or activation (mean |activation| on val batches).")] = "l1",
    mode: Annotated[str, typer.Option(help="probe: keep the full teacher + kept indices (targets = real teacher "
                                      "activations at the kept channels, the reference); chained: a structurally "
                                      "pruned teacher that runs on its own.")] = "probe",
    pair: Annotated[Optional[list[str]], typer.Option("--pair", help="TEACHER_TAP:STUDENT_TAP, repeatable; replaces "
                                                      "the default pairing (k-th with k-th, or proportional).")] = None,
    finetune: Annotated[int, typer.Option(help="Cross-entropy fine-tuning epochs after pruning (--mode chained "
                                          "only), with the training options below.")] = 0,
    **o: Any,
) -> None:
    """Prune a trained teacher's channels at each tap to the student's widths (InDistill stage 1a).

    Taps pair k-th with k-th (proportionally when the counts differ; see --pair). At each pair the
    teacher's channels are ranked over their coupled group (residual stages included) and the
    student's width of them kept, in original order. Prints validation top-1 before and after.

    Examples:

        indistill prune resnet56.safetensors --like resnet20-w0.5 -o t_pruned.safetensors

        indistill prune cnn3.safetensors --like cnn3-w0.5 --mode chained --finetune 2 -o aux_pruned.safetensors
    """
    def body() -> Any:
        from indistill_cli.stages.prune import run_prune

        opts = run_options(o, data=o["data"] or "fashion-mnist-mini")
        return run_prune(teacher, like, o["output"], opts, criterion=criterion, mode=mode, pairs=pair or [],
                         finetune=finetune, optim=optim_config(o), data_given=o["data"] is not None, force=o["force"],
                         select=o["select"])

    run(body, o["json_out"], o["quiet"], o["output"])
