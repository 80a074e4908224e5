"""A model's test scores under one set of names and one scale: the paper's endpoints, in percent.

`pipeline`'s final table, `compare`'s rows, every `study` run and the demo's table all hold a `Scores`,
so `map_cosine` means one thing everywhere. Files written before this type used other spellings
(`pipeline`: `p@100_cosine` and fractions; `compare`: `map` for the cosine mAP, fractions); `Scores.read`
still reads them. Pure Python: the numbers come from the evaluate and retrieve stages' summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# name -> short label, in the order tables show them
LABELS = {"map_cosine": "mAP cos", "map_euclidean": "mAP euc", "p100_cosine": "P@100 cos", "top1": "top-1",
          "top5": "top-5"}
_OLD_NAMES = {"map": "map_cosine", "p@100_cosine": "p100_cosine"}  # spellings of files written as fractions


@dataclass(frozen=True)
class Scores:
    """Test-split scores in percent; None where not measured (e.g. no retrieval run)."""

    top1: float | None = None
    top5: float | None = None
    map_cosine: float | None = None
    map_euclidean: float | None = None
    p100_cosine: float | None = None

    @classmethod
    def from_stages(cls, evaluate: dict[str, Any] | None, retrieve: dict[str, Any] | None) -> Scores:
        """From the summaries of `evaluate` (top-1/5 as fractions) and `retrieve` (metrics by distance, fractions):
        top-1, top-5, exact mAP by cosine and by Euclidean distance, and precision@100 by cosine, x100."""
        ev, m = evaluate or {}, (retrieve or {}).get("metrics", {})

        def pct(v: Any) -> float | None:
            return None if v is None else 100 * v

        return cls(top1=pct(ev.get("top1")), top5=pct(ev.get("top5")),
                   map_cosine=pct(m.get("cosine", {}).get("map")), map_euclidean=pct(m.get("euclidean", {}).get("map")),
                   p100_cosine=pct(m.get("cosine", {}).get("precision@100")))

    @classmethod
    def read(cls, d: dict[str, Any]) -> Scores:
        """From JSON: today's names in percent, or an older file's spelling (`map`, `p@100_cosine`: fractions)."""
        if any(k in d for k in _OLD_NAMES):
            d = {_OLD_NAMES.get(k, k): (None if v is None else 100 * v) for k, v in d.items()
                 if _OLD_NAMES.get(k, k) in _NAMES}
        return cls(**{k: d[k] for k in _NAMES if d.get(k) is not None})

    def as_dict(self) -> dict[str, float]:
        """The measured scores (None left out), in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


_NAMES = tuple(f.name for f in fields(Scores))
