"""Which teacher tap pairs with which student tap, and whether pruning can reconcile them.

The error texts name the option the caller's user typed (`--pair` for prune, `--tap` for distill).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from indistill_cli import progress
from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.io.spec import ModelSpec, TapSpec


def tap_table(spec: ModelSpec) -> dict[str, TapSpec]:
    return {t.name: t for t in spec.taps}


def _proportional(n_long: int, n_short: int) -> list[int]:
    """For each of the `n_short` taps j, the index round((j+1)*n_long/n_short)-1 (half up) among the long side."""
    return [int(math.floor((j + 1) * n_long / n_short + 0.5)) - 1 for j in range(n_short)]


def parse_pair(text: str | tuple[str, str], option: str = "--pair") -> tuple[str, str]:
    """'TEACHER_TAP:STUDENT_TAP' -> (teacher_tap, student_tap); errors name `option`."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise BadInput(f"{option} expects TEACHER_TAP:STUDENT_TAP, got {text!r}")
        return str(text[0]), str(text[1])
    t, sep, s = text.partition(":")
    if not sep or not t or not s:
        raise BadInput(f"{option} expects TEACHER_TAP:STUDENT_TAP (e.g. layer2:block2), got '{text}'")
    return t, s


def pair_taps(teacher_spec: ModelSpec, student_spec: ModelSpec,
              overrides: Iterable[str | tuple[str, str]] | None = None,
              option: str = "--pair") -> list[tuple[str, str]]:
    """Ordered (teacher_tap, student_tap) pairs, shallow to deep by student tap.

    Equal tap counts pair k-th with k-th. Different counts pair every tap of the side with fewer taps
    with a proportionally placed tap of the other side (student tap j of S gets teacher tap
    round((j+1)*T/S)-1, strictly increasing; symmetric when the student has more taps), and the
    pairing is printed on stderr. `overrides` ('T:S' strings, given with the caller's `option`) replace
    the default pairing entirely. Embedding/logit layers are not taps and are never paired.
    """
    t_taps, s_taps = teacher_spec.tap_names, student_spec.tap_names
    if not t_taps or not s_taps:
        raise BadInput("the teacher or the student declares no taps; nothing to pair")
    overrides = list(overrides or [])
    if overrides:
        pairs = [parse_pair(o, option) for o in overrides]
        _check_overrides(pairs, teacher_spec, student_spec, t_taps, s_taps, option)
        return sorted(pairs, key=lambda p: s_taps.index(p[1]))
    T, S = len(t_taps), len(s_taps)
    if T == S:
        return list(zip(t_taps, s_taps))
    if S < T:
        pairs = [(t_taps[i], s_taps[j]) for j, i in enumerate(_proportional(T, S))]
    else:
        pairs = [(t_taps[i], s_taps[j]) for i, j in enumerate(_proportional(S, T))]
    progress.info(f"teacher has {T} taps, student {S}: pairing proportionally "
                  + ", ".join(f"{t}->{s}" for t, s in pairs) + f" (override with {option} TEACHER_TAP:STUDENT_TAP)")
    return pairs


def _check_overrides(pairs: list[tuple[str, str]], teacher_spec: ModelSpec, student_spec: ModelSpec,
                     t_taps: list[str], s_taps: list[str], option: str) -> None:
    """Every named tap exists (an embedding is not a tap) and no tap is paired twice."""
    for t, s in pairs:
        for name, side, taps, spec in ((t, "teacher", t_taps, teacher_spec), (s, "student", s_taps, student_spec)):
            if name not in taps:
                if name == spec.embedding.name:
                    raise BadInput(f"{option} {t}:{s}: '{name}' is the {side}'s embedding, not a feature-map tap; "
                                   f"InDistill pairs only the taps ({', '.join(taps)})")
                raise BadInput(f"{option} {t}:{s}: unknown {side} tap '{name}'{did_you_mean(name, taps)}; "
                               f"{side} taps: {', '.join(taps)}")
    for side, names in (("teacher", [p[0] for p in pairs]), ("student", [p[1] for p in pairs])):
        dup = [n for n in names if names.count(n) > 1]
        if dup:
            raise BadInput(f"{option}: {side} tap '{dup[0]}' is paired more than once")


def check_pairs(teacher_spec: ModelSpec, student_spec: ModelSpec, pairs: Sequence[tuple[str, str]]) -> None:
    """Reject what pruning cannot reconcile: fewer teacher channels, or incompatible spatial grids."""
    if teacher_spec.num_classes != student_spec.num_classes:
        raise BadInput(f"the student has {student_spec.num_classes} classes but the teacher has "
                       f"{teacher_spec.num_classes}: they must be trained on the same labels")
    tt, st = tap_table(teacher_spec), tap_table(student_spec)
    for t, s in pairs:
        ct, cs = tt[t].channels, st[s].channels
        if ct < cs:
            raise BadInput(f"teacher tap '{t}' has {ct} channels, fewer than student tap '{s}' ({cs}): pruning "
                           f"cannot widen a layer; use a wider teacher or pair differently with --pair")
        ht, wt = tt[t].size or (1, 1)
        hs, ws = st[s].size or (1, 1)
        if min(ht, wt, hs, ws) <= 0:
            raise BadInput(f"tap pair {t}:{s} has an empty feature map ({ht}x{wt} vs {hs}x{ws})")
        if ht * ws != hs * wt:
            raise BadInput(f"tap pair {t}:{s}: feature maps {ht}x{wt} (teacher) and {hs}x{ws} (student) have "
                           f"different aspect ratios and cannot be pooled to one size; pair other taps with --pair")


def pruned_pairs(pruning_info: dict[str, Any]) -> list[tuple[str, str]]:
    """(teacher_tap, student_tap) pairs of a pruned-teacher checkpoint (ckpt.info["pruning"])."""
    return [(p["teacher_tap"], p["student_tap"]) for p in pruning_info["pairs"]]
