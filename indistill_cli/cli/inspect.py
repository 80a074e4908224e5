"""`indistill inspect`, `models`, `datasets`: read-only views, parse then `stages.inspect`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import command


@command(app, ("checkpoint", "json_out"))
def inspect(checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or - for stdin.")], **o: Any) -> None:
    """Show a checkpoint's model spec, taps, parameters, pruning record and history.

    Example:

        indistill inspect cnn3.safetensors --json | jq .history
    """
    def body() -> Any:
        from indistill_cli.stages.inspect import inspect_checkpoint

        return inspect_checkpoint(checkpoint)

    run(body, o["json_out"], quiet=o["json_out"])


@command(app, ("json_out",))
def models(**o: Any) -> None:
    """List the native architectures with parameters, taps and embedding size.

    Example:

        indistill models
    """
    def body() -> Any:
        from indistill_cli.stages.inspect import list_models_table

        return list_models_table()

    run(body, o["json_out"], quiet=o["json_out"])


@command(app, ("json_out",))
def datasets(**o: Any) -> None:
    """List the built-in datasets and which are available locally (nothing is downloaded).

    Example:

        indistill datasets
    """
    def body() -> Any:
        from indistill_cli.stages.inspect import list_datasets

        return list_datasets()

    run(body, o["json_out"], quiet=o["json_out"])
