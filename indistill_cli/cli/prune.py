"""`indistill prune`: its options are `stages.commands.PruneSettings`; the work is `stages.prune`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import PruneSettings


@command(app, PruneSettings)
def prune(s: PruneSettings) -> Any:
    """Prune a trained teacher's channels at each tap to the student's widths (InDistill stage 1a).

    Taps pair k-th with k-th (proportionally when the counts differ; see --pair). At each pair the
    teacher's channels are ranked over their coupled group (residual stages included) and the
    student's width of them kept, in original order. Prints validation top-1 before and after.

    Examples:

        indistill prune resnet56.safetensors --like resnet20-w0.5 -o t_pruned.safetensors

        indistill prune cnn3.safetensors --like cnn3-w0.5 --mode chained --finetune 2 -o aux_pruned.safetensors
    """
    from indistill_cli.stages.prune import run_prune

    return run_prune(s)
