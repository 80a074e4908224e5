"""`indistill rerun`: its options are `stages.commands.RerunSettings`; the work is `stages.rerun`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import RerunSettings


@command(app, RerunSettings)
def rerun(s: RerunSettings) -> Any:
    """Run again the command that made a checkpoint, and say whether the new tensors are bitwise equal.

    The command is the one the checkpoint's last history entry records (`inspect --command` prints it), run
    on the recorded parents, whose sha256 must not have changed. Bitwise equality is expected on CPU with the
    same seed, versions and processor; where the tensors differ, it reports how far apart they are (max
    |diff| per tensor) and the top-1 and retrieval mAP of both on the recorded dataset's test split.
    Exit 0 either way (1 if the run fails); `--json` for scripts.

    Example:

        indistill rerun runs/ind/student.safetensors -o student.rerun.safetensors --json
    """
    from indistill_cli.stages.rerun import rerun_checkpoint

    return rerun_checkpoint(s)
