"""Base class shared by every distillation term, plus small tensor helpers.

A :class:`DistillLoss` is one knowledge-distillation term: ``forward`` takes one
:class:`KDBatch` and returns a scalar. The trainer combines it with cross-entropy as
``ce_weight * CE + weight * loss(batch)``; the recipe of the method's paper (what it
reads, its weight, the CE weight) is given when the class is registered
(``registry.register``), so the CLI can offer sane defaults without the user
knowing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from indistill_cli.models.taps import match_spatial  # noqa: F401 - re-exported for the methods

USES = ("logits", "embedding", "taps")
PREACT = ("", "teacher", "both")  # which network's taps a method reads before their final ReLU


@dataclass(frozen=True)
class Range:
    """The values a hyper-parameter (or a weight) may take: finite, between `low` and `high` (None: no
    bound), each end open or closed, and a whole number where `integer`. Declared next to the method's
    `hparams`, checked with the other options before any loading, shown by `indistill methods`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v) or (self.integer and v != int(v)):
            return False
        if self.low is not None and not (v > self.low if self.low_open else v >= self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        if lo and hi:
            return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        return f"{kind} {lo or hi}".rstrip()

    def brief(self) -> str:
        """The range in a few characters, for a table cell: '>0', 'int>=1', '[0,1)', 'finite'."""
        kind = "int" if self.integer else ""
        if self.low is not None and self.high is not None:
            return (f"{kind}{'(' if self.low_open else '['}{self.low:g},{self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is None and self.high is None:
            return kind or "finite"
        end, bound, open_ = (">", self.low, self.low_open) if self.low is not None else ("<", self.high, self.high_open)
        return f"{kind}{end}{'' if open_ else '='}{bound:g}"

    def as_dict(self) -> dict[str, float | bool | str | None]:
        return {"low": self.low, "high": self.high, "low_open": self.low_open, "high_open": self.high_open,
                "integer": self.integer, "text": str(self)}


POSITIVE = Range(0.0, low_open=True)  # temperatures, scales, margins that divide
NON_NEGATIVE = Range(0.0)  # weights
COUNT = Range(1, integer=True)  # sizes, orders, numbers of vectors
EPOCHS = Range(0, integer=True)  # a phase's or ramp's epochs: 0 turns it off
ANY = Range()  # any finite number


@dataclass
class Feats:
    """What one network produced for a batch.

    ``feats`` depends on the loss's ``uses``: ``[]`` for "logits",
    ``[embedding (N, D)]`` for "embedding", one map per tap pair for "taps".
    """

    logits: torch.Tensor
    feats: list[torch.Tensor]


@dataclass
class KDBatch:
    """What every KD method sees for one batch."""

    student: Feats  # student logits + the features of its paired taps (or embedding)
    teacher: Feats  # the teacher's
    labels: torch.Tensor
    index: torch.Tensor | None  # sample indices into the training split (CRD's memory bank)
    epoch: int


@dataclass
class Phase:
    """A stage of the method's own recipe that `distill` runs before its main loop, through the same
    engine: FT's paraphraser, AB's and FSP's initialisation. For `epochs` epochs the step's only loss
    is `loss(batch)` (no CE, no other method), and only `trains` (the method's own modules) and, with
    `trains_student`, the student are updated; the student is not even run when `needs_student` is off
    (then the batch's student logits are empty)."""

    name: str
    epochs: int
    loss: Callable[[KDBatch], torch.Tensor]
    trains: list[nn.Module] = field(default_factory=list)
    trains_student: bool = False
    needs_student: bool = True


class DistillLoss(nn.Module):
    """One KD term. Subclasses set the class attributes, implement `forward(b: KDBatch)`, and build any
    trainable parts (regressors, embedders, memory banks) in `setup()`, which runs at the end of __init__.

    Optional hooks: `phases()` (stages run before the main loop), `param_groups()` (parameters with
    their own lr multiplier), `calibrate(teacher)` (buffers set once from the teacher's features on
    fixed training images before training, e.g. OFD's margins)."""

    name: ClassVar[str]
    uses: ClassVar[str]  # "logits" | "embedding" | "taps"; these and the rest are set by registry.register
    default_weight: ClassVar[float]
    ce_weight: ClassVar[float]
    preact: ClassVar[str] = ""  # "teacher" / "both": the taps are read before their final ReLU (`:pre`)
    with_embedding: ClassVar[bool] = False  # a taps method that also reads the embedding, as its last feature
    cite: ClassVar[str] = ""  # short citation for `indistill methods`
    note: ClassVar[str] = ""  # what differs from the paper's recipe, in a few words
    hparams: ClassVar[dict[str, float | int]] = {}
    ranges: ClassVar[dict[str, Range]] = {}  # one per hparam: the values it may take

    @classmethod
    def check_hparams(cls, given: dict[str, float]) -> None:
        """A ValueError "NAME=VALUE: why" for the first given hyper-parameter that is unknown or out of its
        range; a method adds its rules across parameters here (VID: init_var > eps). Run before any loading."""
        for k, v in given.items():
            if k not in cls.hparams:
                raise ValueError(f"{k}={v:g}: unknown hyper-parameter of {cls.name} (valid: "
                                 f"{', '.join(cls.hparams) or 'none'})")
            rng = cls.ranges.get(k, Range(integer=isinstance(cls.hparams[k], int)))
            if v not in rng:
                raise ValueError(f"{k}={v:g}: out of range, {k} must be {rng}")

    def __init__(
        self,
        s_shapes: list[tuple[int, ...]],
        t_shapes: list[tuple[int, ...]],
        num_classes: int,
        num_data: int,
        **hp: float | int,
    ) -> None:
        super().__init__()
        unknown = sorted(set(hp) - set(self.hparams))
        if unknown:
            valid = ", ".join(sorted(self.hparams)) or "(none)"
            raise ValueError(
                f"unknown hyper-parameter(s) {unknown} for loss {self.name!r}; valid: {valid}"
            )
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"{self.name}: {len(s_shapes)} student feature shapes but "
                f"{len(t_shapes)} teacher feature shapes; they must be paired"
            )
        self.s_shapes = [tuple(s) for s in s_shapes]
        self.t_shapes = [tuple(t) for t in t_shapes]
        self.num_classes = num_classes
        self.num_data = num_data
        self.hp: dict[str, float | int] = {
            k: _coerce(self.name, k, v, hp.get(k, v)) for k, v in self.hparams.items()
        }
        self.setup()

    def setup(self) -> None:
        """Build the method's own modules and buffers (none by default); shapes and hp are set."""

    def forward(self, b: KDBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def recorded_hparams(cls, given: dict[str, float]) -> dict[str, float | int]:
        """The hyper-parameters that shape a run, as its summary and history record them: the defaults with
        the given values (a method may leave out the settings of an option that is off)."""
        return {**cls.hparams, **given}

    def phases(self) -> list[Phase]:
        """The method's own stages before the main loop (none by default)."""
        return []

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The method's parameters by lr multiplier (all at the base lr by default)."""
        return [(list(self.parameters()), 1.0)]

    def calibrate(self, teacher: Feats) -> None:
        """Set what the method derives once from the teacher's features (nothing by default)."""

    def prep_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The logits as a logit method compares them: unchanged here; logit standardisation (`ls.py`)
        z-scores them."""
        return z

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        """State beyond parameters/buffers that a checkpoint must keep."""
        return {}

    def load_extra_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state_tensors` returned."""
        if state:
            raise ValueError(f"{self.name} keeps no extra state, got keys {sorted(state)}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hp.items())


def _coerce(loss: str, key: str, default: float | int, value: float | int) -> float | int:
    """Give ``value`` the type of the default (CLI values may arrive as floats)."""
    if isinstance(default, int) and not isinstance(default, bool):
        if float(value) != int(value):
            raise ValueError(f"{loss}: hyper-parameter {key!r} must be an integer, got {value}")
        return int(value)
    return float(value)


def teacher_view(x: torch.Tensor) -> torch.Tensor:
    """Detach a teacher tensor; clone it if it is an inference tensor.

    Inference tensors cannot be saved for backward, and a detached normal
    tensor guarantees no gradient ever reaches the teacher.
    """
    x = x.detach()
    return x.clone() if x.is_inference() else x


def flat_dim(shape: tuple[int, ...]) -> int:
    """Number of features in one sample of the given per-sample shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def ramp(epoch: int, warmup: int) -> float:
    """A term's linear warm-up min((epoch + 1) / warmup, 1) over 0-based epochs (mdistiller's 1-based
    min(epoch / warmup, 1)); warmup <= 0: none."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


def no_term(b: KDBatch) -> torch.Tensor:
    """A zero term still attached to the student's graph (a method whose transfer is all in its phases)."""
    return (b.student.logits.sum() * 0.0).abs()


def conv_bn(cin: int, cout: int, he_init: bool = False) -> nn.Sequential:
    """The usual student-side connector: a 1x1 convolution (no bias) to `cout` channels, then BN.
    `he_init`: weights ~ N(0, sqrt(2 / cout)) as the OFD/AB authors initialise theirs."""
    conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
    if he_init:
        nn.init.normal_(conv.weight, 0.0, (2.0 / cout) ** 0.5)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


def connectors(s_shapes: list[tuple[int, ...]], t_shapes: list[tuple[int, ...]],
               he_init: bool = False) -> nn.ModuleList:
    """One connector per tap pair: the identity where the channel counts already match, else conv_bn."""
    return nn.ModuleList(nn.Identity() if s[0] == t[0] else conv_bn(s[0], t[0], he_init)
                         for s, t in zip(s_shapes, t_shapes))


def consecutive_connectors(loss: DistillLoss) -> nn.ModuleList:
    """The connectors of a method that relates consecutive taps (FSP, KD-SVD): it needs two pairs at least."""
    if len(loss.s_shapes) < 2:
        raise ValueError(f"{loss.name} needs at least two tap pairs (it relates consecutive taps)")
    return connectors(loss.s_shapes, loss.t_shapes)
