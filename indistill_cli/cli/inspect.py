"""`indistill inspect`, `models`, `datasets`: read-only views, parse then `stages.inspect`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import DatasetsSettings, InspectSettings, ListingSettings


@command(app, InspectSettings)
def inspect(s: InspectSettings) -> Any:
    """Show a checkpoint's model spec, taps, parameters, pruning record and history; with --command, the
    command line that made it.

    Every checkpoint `train`, `import`, `prune`, `warmup` and `distill` write records the command that made it: its
    options, the paths and sha256 of the checkpoints it read, the versions and the machine. `--command`
    prints it as one command line (with --expect-sha256 for each parent, so it refuses to run on changed
    inputs); `--config-out FILE` writes its options as a config file. `indistill rerun` runs it for you and
    compares the result.

    Examples:

        indistill inspect cnn3.safetensors --json | jq .history

        indistill inspect runs/ind/student.safetensors --command -o again.safetensors
    """
    if s.show_command or s.config_out:
        from indistill_cli.stages.rerun import show_command

        return show_command(s.checkpoint, s.output, s.config_out, s.json_out)
    from indistill_cli.stages.inspect import inspect_checkpoint

    return inspect_checkpoint(s.checkpoint)


@command(app, ListingSettings)
def models(s: ListingSettings) -> Any:
    """List the native architectures with parameters, taps and embedding size.

    Example:

        indistill models
    """
    from indistill_cli.stages.inspect import list_models_table

    return list_models_table()


@command(app, DatasetsSettings)
def datasets(s: DatasetsSettings) -> Any:
    """List the built-in datasets and which are available locally (nothing is downloaded).

    Example:

        indistill datasets

        indistill datasets --data-root /mnt/datasets
    """
    from indistill_cli.stages.inspect import list_datasets

    return list_datasets(s.opts.data_root)
