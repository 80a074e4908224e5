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


def _listing(name: str, doc: str, build: str, *shared: str) -> None:
    """A read-only listing command: a table on stderr, the rows as JSON with --json; `shared`: the shared
    options it takes, passed to `build` in that order."""
    def listing(**o: Any) -> None:
        def body() -> Any:
            from indistill_cli.stages import inspect as views

            return getattr(views, build)(*(o[k] for k in shared))

        run(body, o["json_out"], quiet=o["json_out"])

    listing.__name__ = listing.__qualname__ = name
    listing.__doc__ = doc
    command(app, (*shared, "json_out"))(listing)


_listing("models", """List the native architectures with parameters, taps and embedding size.

    Example:

        indistill models
    """, "list_models_table")
_listing("datasets", """List the built-in datasets and which are available locally (nothing is downloaded).

    Example:

        indistill datasets

        indistill datasets --data-root /mnt/datasets
    """, "list_datasets", "data_root")
