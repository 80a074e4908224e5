"""Paired statistics of a study: differences a - b by seed, their 95% t-interval, the paired t and Wilcoxon
signed-rank p-values, Holm's step-down correction over a family, and the one-line verdict.

scipy gives the distributions (`pip install 'indistill[study]'`); the formulas are the textbook ones, so
the tests can hold them against scipy's own tests on fixed inputs.
"""

from __future__ import annotations

import math
import statistics

from indistill_cli.errors import BadInput

WILCOXON_MIN_N = 6  # below this the two-sided signed-rank test cannot reach p < 0.05 (2 / 2^n >= 0.0625)


def _stats() -> object:
    try:
        from scipy import stats
    except ImportError:
        raise BadInput("the study's statistics need scipy: pip install 'indistill[study]'") from None
    return stats


def t_interval(d: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of the t-interval of the mean of paired differences; nan bounds for n < 2."""
    m = statistics.fmean(d)
    if len(d) < 2:
        return m, math.nan, math.nan
    t = _stats().t.ppf(0.5 + level / 2, len(d) - 1)  # type: ignore[attr-defined]
    half = t * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def t_test_p(d: list[float]) -> float:
    """Two-sided p of the paired t-test (mean difference 0); nan for n < 2 or no spread."""
    if len(d) < 2 or statistics.stdev(d) == 0:
        return math.nan
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    return float(2 * _stats().t.sf(abs(t), len(d) - 1))  # type: ignore[attr-defined]


def wilcoxon_p(d: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p (exact for small n); nan when every difference is zero."""
    if len(d) < 2 or all(v == 0 for v in d):
        return math.nan
    return float(_stats().wilcoxon(d, alternative="two-sided").pvalue)  # type: ignore[attr-defined]


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; nan entries stay nan
    and do not count in the family."""
    order = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    k, out, running = len(order), [math.nan] * len(ps), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p))
        out[i] = running
    return out


def verdict(mean: float, lo: float, hi: float, n: int, p_adjusted: float | None = None, family: int = 0) -> str:
    """The reading of one paired difference a - b: "helps" (interval above 0), "hurts" (below), or no
    detectable difference with the largest effect the interval leaves open. A primary comparison also
    says whether the finding survives Holm over its `family`."""
    if math.isnan(lo):
        return f"not enough seeds (n = {n})"
    if lo <= 0 <= hi:
        return (f"no detectable difference at n = {n}; the interval excludes effects beyond "
                f"±{max(abs(lo), abs(hi)):.2f}")
    word = "helps" if lo > 0 else "hurts"
    if p_adjusted is None:
        return word
    held = "holds" if p_adjusted < 0.05 else "does not hold"
    return f"{word} ({held} after Holm over {family} primary comparisons: p = {p_adjusted:.3g})"
