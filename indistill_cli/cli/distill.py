"""`indistill distill`: its options are `stages.commands.DistillSettings`; the work is `stages.distill`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import DistillSettings


@command(app, DistillSettings)
def distill(s: DistillSettings) -> Any:
    """Knowledge distillation (stage 2): train the student from the teacher with one or more KD methods + CE.

    Examples:

        indistill distill -t teacher.safetensors -s warm.safetensors -m kd -o student.safetensors

        indistill distill -t teacher.safetensors -s cnn3-w0.5 -m kd -m pkt:0.5 --ce 1.0 -o student.safetensors

        indistill distill -t aux.safetensors -s warm.safetensors -m pkt --ce 0 --optimizer adam --lr 1e-3 --schedule multistep --milestones 48 --epochs 58 --wd 0 -o s.safetensors
    """
    from indistill_cli.stages.distill import run_distill

    return run_distill(s)
