"""Which stage runs a command's settings: the one map from a settings class to its `Stage` (the pipeline's
stages and `rerun` look it up here). Stage modules are imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from indistill_cli.errors import BadInput
from indistill_cli.stages.settings import StageSettings

STAGES = {"train": ("train", "Train"), "import": ("importer", "Import"), "prune": ("prune", "Prune"), "warmup": ("warmup", "Warmup"),
          "distill": ("distill", "Distill"), "evaluate": ("evaluate", "Evaluate"),
          "retrieve": ("retrieve", "Retrieve"), "compare": ("compare", "Compare"), "export": ("export", "Export")}


def stage_for(settings: StageSettings, tracker: Any = None) -> Any:
    """The stage that runs `settings` (a `stages.base.Stage`), ready to `run()`."""
    where = STAGES.get(settings.command)
    if where is None:
        raise BadInput(f"`indistill {settings.command}` is not a stage that can be run from its settings")
    module = importlib.import_module(f"indistill_cli.stages.{where[0]}")
    return getattr(module, where[1])(settings, tracker)
