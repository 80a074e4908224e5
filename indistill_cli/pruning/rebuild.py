"""A model from a spec or checkpoint, pruned again when its spec carries a structural plan.

`models` builds architectures and knows nothing of pruning; a chained pruned teacher's spec carries the
plan (`structural_prune`) and it is replayed here, where plans live, so its state dict loads strictly.
Every stage that turns a checkpoint into a module goes through `model_from_checkpoint`.
"""

from __future__ import annotations

from typing import Any

from indistill_cli.errors import BadInput
from indistill_cli.models import build_model, check_spec, load_state
from indistill_cli.pruning.plan import apply_structural_plan


def build(spec: dict[str, Any], pretrained: bool = False) -> Any:
    """A fresh module for a spec: its architecture, structurally pruned as its plan says (if any)."""
    model = build_model(spec, pretrained=pretrained)
    if spec.get("structural_prune"):
        apply_structural_plan(model, spec)
    return model


def model_from_checkpoint(ckpt: Any) -> Any:
    """Rebuild the module a checkpoint describes and load its weights (validated)."""
    check_spec(ckpt.spec, ckpt.source)
    try:
        model = build(ckpt.spec)
    except BadInput as e:
        raise BadInput(f"{ckpt.source}: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"{ckpt.source}: cannot build the model its spec describes ({e})") from None
    load_state(model, ckpt.state, ckpt.source)
    return model
