"""Pruning plans: at each tap pair, the C_S teacher channels to keep, and the structural plan that
prunes a teacher for real (chained mode) and replays on its rebuilt architecture.

Stage 1a of InDistill (see docs/method.md). Taps of the teacher and the student are paired (k-th with
k-th, or proportionally when the counts differ, or as `--pair` says). At each pair the teacher's
channels are ranked by an importance criterion and the C_S best are kept, in their original order.

Two modes:
* `probe` (the reference behaviour): the checkpoint holds the FULL teacher plus the kept indices
  (`keep/<tap>` extras); warmup targets are the real eval-mode teacher activations restricted to the
  kept channels (computed by `targets.FlowPair.targets`).
* `chained`: a structurally pruned teacher that runs on its own. The spec carries a replayable plan
  (`structural_prune`), so `models.create_model(spec)` rebuilds the original architecture and prunes it
  again with the same indices (`models.structural.replay_plan`); the pruned state dict then loads strictly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.errors import BadInput, RunFailure, did_you_mean
from indistill_cli.io.spec import ModelSpec
from indistill_cli.pruning.criteria import (CRITERIA, activation_importance, build_graph, find_producers,
                                            group_importance, group_producers, select_channels, tap_group)
from indistill_cli.pruning.pairing import check_pairs, tap_table

MODES = ("probe", "chained")
KEEP_PREFIX = "keep/"


def check_method(criterion: str, mode: str) -> None:
    """--criterion and --mode name a known importance criterion and pruning mode."""
    if criterion not in CRITERIA:
        raise BadInput(f"--criterion must be one of {', '.join(CRITERIA)}, got '{criterion}'"
                       f"{did_you_mean(criterion, CRITERIA)}")
    if mode not in MODES:
        raise BadInput(f"--mode must be probe or chained, got '{mode}'{did_you_mean(mode, MODES)}")


@dataclass
class TapPlan:
    """What pruning decided at one pair of taps."""

    teacher_tap: str
    student_tap: str
    before: int  # C_T
    kept: int  # C_S
    teacher_size: list[int]
    student_size: list[int]
    keep: torch.Tensor  # int64 kept channel indices, ascending
    importance: torch.Tensor
    producer: str | None = None  # the conv whose group carries the tap's channels
    group_producers: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"teacher_tap": self.teacher_tap, "student_tap": self.student_tap, "before": self.before,
                "kept": self.kept, "teacher_size": list(self.teacher_size), "student_size": list(self.student_size)}


def plan_pruning(model: nn.Module, teacher_spec: ModelSpec, student_spec: ModelSpec,
                 pairs: Sequence[tuple[str, str]], criterion: str = "l1", mode: str = "probe",
                 batches: Iterable[Any] | None = None) -> list[TapPlan]:
    """Rank the teacher's channels at each paired tap and choose the student's width of them."""
    check_method(criterion, mode)
    check_pairs(teacher_spec, student_spec, pairs)
    tt, st = tap_table(teacher_spec), tap_table(student_spec)
    t_names = [t for t, _ in pairs]
    need_groups = criterion != "activation" or mode == "chained"
    try:  # with activation + probe the groups only serve the optional chained-equivalent evaluation
        producers = find_producers(model, teacher_spec, t_names)
        dg = build_graph(model, teacher_spec)
    except Exception:
        if need_groups:
            raise
        producers, dg = {}, None
    acts = None
    if criterion == "activation":
        if batches is None:
            raise BadInput("criterion activation needs data batches")
        acts = activation_importance(model, t_names, batches)
    plans: list[TapPlan] = []
    for t, s in pairs:
        ct, cs = tt[t].channels, st[s].channels
        prod, members, group = producers.get(t), [], None
        if need_groups and prod is None:
            raise BadInput(f"teacher tap '{t}': no convolution with {ct} output channels runs before it, so "
                           f"its channels cannot be traced to the filters that produce them"
                           + ("; use --criterion activation with --mode probe" if criterion != "activation" else
                              "; use --mode probe"))
        if prod is not None and dg is not None:
            try:
                group = tap_group(dg, model, prod)
                members = group_producers(dg, group, model)
            except Exception:
                if need_groups:
                    raise
                prod = None
        if criterion == "activation":
            imp = acts[t]
        else:
            imp = group_importance(dg, group, ct, criterion)
        if imp.shape[0] != ct:
            raise RunFailure(f"tap '{t}': importance has {imp.shape[0]} entries for {ct} channels")
        plans.append(TapPlan(t, s, ct, cs, list(tt[t].size or []), list(st[s].size or []),
                             select_channels(imp, cs), imp, prod, members))
    if mode == "chained":
        reconcile_shared_groups(plans)
    return plans


def reconcile_shared_groups(plans: list[TapPlan], warn: bool = True) -> None:
    """Taps whose channels are one coupled group must keep the same channels in a chained network."""
    for i, p in enumerate(plans):
        if p.producer is None:
            continue
        for q in plans[:i]:
            if p.producer in q.group_producers:
                if p.kept != q.kept:
                    raise BadInput(f"teacher taps '{q.teacher_tap}' and '{p.teacher_tap}' carry the same coupled "
                                   f"channels (a residual connection), so a chained teacher keeps one set for both, "
                                   f"but their students need {q.kept} and {p.kept}: use --mode probe or --pair")
                if not torch.equal(p.keep, q.keep) and warn:
                    progress.warn(f"teacher taps '{q.teacher_tap}' and '{p.teacher_tap}' share coupled channels; "
                                  f"'{p.teacher_tap}' keeps the channels chosen for '{q.teacher_tap}'")
                if not torch.equal(p.keep, q.keep):
                    p.keep = q.keep.clone()
                p.producer = None  # pruned once, through the first tap of the group
                break


def structural_plan(plans: Sequence[TapPlan]) -> list[dict[str, Any]]:
    """The replayable plan a chained spec carries: one entry per pruned coupled group."""
    return [{"module": p.producer, "keep": [int(i) for i in p.keep], "channels": p.before}
            for p in plans if p.producer is not None and p.kept < p.before]


def chained_model(model: nn.Module, spec: ModelSpec, plans: Sequence[TapPlan]) -> tuple[nn.Module, ModelSpec]:
    """A structurally pruned copy of the teacher and its spec (plan + re-probed taps/embedding)."""
    from indistill_cli.models import probe_taps
    from indistill_cli.models.structural import replay_plan

    new_spec = spec.replace(structural_prune=structural_plan(plans))
    pruned = replay_plan(copy.deepcopy(model), new_spec)
    taps, emb = probe_taps(pruned, spec.in_channels, spec.input_size)
    new_spec = new_spec.replace(taps=taps, embedding=emb)
    got = {t.name: t.channels for t in new_spec.taps}
    for p in plans:
        if got.get(p.teacher_tap) != p.kept:
            raise RunFailure(f"structural pruning left {got.get(p.teacher_tap)} channels at tap '{p.teacher_tap}', "
                             f"expected {p.kept}; use --mode probe for this architecture")
    return pruned, new_spec
