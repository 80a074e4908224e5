"""`indistill warmup`: its options are `stages.commands.WarmupSettings`; the work is `stages.warmup`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import WarmupSettings


@command(app, WarmupSettings)
def warmup(s: WarmupSettings) -> Any:
    """InDistill warmup: copy the pruned teacher's feature maps into the student, tap by tap.

    Tap l (shallow to deep) trains for a + b*l epochs on MSE(student tap l, teacher tap l) only.

    Examples:

        indistill warmup --teacher t_pruned.safetensors --student cnn3-w0.5 --data fashion-mnist-mini -o warm.safetensors --plot flow.png

        indistill prune t.safetensors --like cnn3-w0.5 -o - | indistill warmup -t - -s cnn3-w0.5 -o warm.safetensors
    """
    from indistill_cli.stages.warmup import run_warmup

    return run_warmup(s)
