"""`indistill methods`: every KD method `distill --method` takes, with the recipe it was registered with.

The table is built from the registry (`losses.registry.register`), so it cannot drift from what
`distill` runs: what each method reads, its default weight and the CE weight that goes with it, its
hyper-parameters with their defaults and the values each may take (`--param METHOD.NAME=VALUE`; a value
out of its range is refused before any loading), its citation and what differs from the paper's recipe.
"""

from __future__ import annotations

from typing import Any

from indistill_cli import losses, progress

KINDS = {"logits": "logit", "taps": "feature", "embedding": "embedding"}


def reads(cls: type[losses.DistillLoss]) -> str:
    """What a method reads, in words."""
    if cls.uses != "taps":
        return cls.uses
    where = {"": "taps", "teacher": "taps (teacher's pre-ReLU)", "both": "taps (pre-ReLU)"}[cls.preact]
    return where + (" + embedding" if cls.with_embedding else "")


def hparam_cell(cls: type[losses.DistillLoss]) -> str:
    """'temperature=4 (>0) warmup=20 (int>=0)': each hyper-parameter's default and the values it may take."""
    return " ".join(f"{k}={progress.fmt(v)}" + (f" ({cls.ranges[k].brief()})" if k in cls.ranges else "")
                    for k, v in cls.hparams.items()) or "-"


def method_rows() -> list[dict[str, Any]]:
    """One record per registered method, by name."""
    out = []
    for name in losses.names():
        cls = losses.get(name)
        out.append({"name": name, "kind": KINDS[cls.uses], "reads": reads(cls), "default_weight": cls.default_weight,
                    "ce_weight": cls.ce_weight, "hparams": dict(cls.hparams),
                    "ranges": {k: cls.ranges[k].as_dict() for k in cls.hparams if k in cls.ranges},
                    "citation": cls.cite, "note": cls.note})
    return out


def list_methods() -> list[dict[str, Any]]:
    """The methods on stderr: the recipe table, then each one's citation and what differs from the paper
    (as lines, so the table stays readable in an 80-column terminal); the records (the --json answer)."""
    rows = method_rows()
    progress.table(f"{len(rows)} KD methods (distill -m NAME[:WEIGHT], a weight >= 0; --param NAME.KEY=VALUE)",
                   ["name", "kind", "reads", "weight", "CE", "hyper-parameters (defaults) and ranges"],
                   [[r["name"], r["kind"], r["reads"], r["default_weight"], r["ce_weight"], hparam_cell(losses.get(r["name"]))]
                    for r in rows])
    for r in rows:
        progress.info(f"{r['name']}: {r['citation']}" + (f". {r['note']}" if r["note"] else ""))
    return rows
