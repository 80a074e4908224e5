"""The InDistill warmup curriculum: tap l (1-based, shallow to deep) trains for S_l = a + b*l epochs.

Defaults a=2, b=1 give the reference schedule 3, 4, 5 for three taps. Deeper taps are harder to
distil, so they get more epochs; the whole warmup sits at the start of training (the critical
learning period).
"""

from __future__ import annotations

from indistill_cli.errors import BadInput


def epochs_per_tap(num_taps: int, a: float = 2.0, b: float = 1.0, explicit: str | None = None) -> list[int]:
    """S_l for l = 1..L, rounded half away from zero; `explicit` ('3,4,5') overrides a and b."""
    if num_taps < 1:
        raise BadInput("the warmup needs at least one paired tap")
    if explicit:
        try:
            sched = [int(v) for v in explicit.split(",") if v.strip()]
        except ValueError:
            raise BadInput(f"--epochs-per-tap must be comma-separated integers, got '{explicit}'") from None
        if len(sched) != num_taps:
            raise BadInput(f"--epochs-per-tap gives {len(sched)} values but there are {num_taps} paired taps")
    else:
        sched = [int(a + b * l + 0.5) if a + b * l >= 0 else -int(-(a + b * l) + 0.5) for l in range(1, num_taps + 1)]
    if any(s < 0 for s in sched):
        raise BadInput(f"the curriculum gives negative epochs {sched}; choose a and b so that a + b*l >= 0")
    if sum(sched) < 1:
        raise BadInput(f"the curriculum gives no epochs at all ({sched})")
    return sched


def tap_of_epoch(schedule: list[int]) -> list[int]:
    """For each warmup epoch (0-based), the 0-based index of the tap it trains."""
    out: list[int] = []
    for tap, n in enumerate(schedule):
        out += [tap] * n
    return out


def phases(schedule: list[int]) -> list[tuple[int, int, int]]:
    """(tap index, first epoch, last epoch) per phase, 1-based epochs, taps with 0 epochs omitted."""
    out, start = [], 1
    for tap, n in enumerate(schedule):
        if n:
            out.append((tap, start, start + n - 1))
            start += n
    return out
