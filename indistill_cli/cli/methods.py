"""`indistill methods`: parse, then `stages.methods`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import MethodsSettings


@command(app, MethodsSettings)
def methods(s: MethodsSettings) -> Any:
    """List the KD methods `distill` takes: what each reads, its default weight and CE weight, its
    hyper-parameters with their defaults, and its citation.

    Example:

        indistill methods

        indistill distill -t teacher.safetensors -s cnn3-w0.5 -m ft --param ft.init_epochs=2 -o s.safetensors
    """
    from indistill_cli.stages.methods import list_methods

    return list_methods()
