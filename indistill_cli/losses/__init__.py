"""Distillation losses: one method per file over a tiny base (`base.DistillLoss`, `base.KDBatch`).

Importing the package registers every method, so `get(name)` and `names()` see them all. A new method
is one new file with a `@register("name", uses=..., default_weight=..., ce_weight=...)` class (its
`forward(b: KDBatch)` returns the term) and its import below.
"""

from indistill_cli.losses.base import DistillLoss, Feats, KDBatch, Phase  # noqa: F401
from indistill_cli.losses.registry import get, names, register  # noqa: F401

from indistill_cli.losses import (  # noqa: E402,F401,I001
    ab, at, cc, crd, dist, dkd, fitnet, fsp, ft, kd, kdsvd, ls, mlkd, nst, ofd, pkt, reviewkd, rkd, sp, vid)

__all__ = ["DistillLoss", "Feats", "KDBatch", "Phase", "get", "names", "register"]
