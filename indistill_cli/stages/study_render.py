"""protocol.md, rendered from a `StudySpec` (and the identity `study_protocol` records), so the text and the runs
cannot disagree: the generic text for any study, the benchmark scripts' own words for their two presets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from indistill_cli.metrics.scores import LABELS
from indistill_cli.stages import study_prose
from indistill_cli.stages.study import ARM_KINDS, StudySpec

METHODS_ARMS = {"M": "M alone, E epochs", "M+W": "M given the warmup's epochs too, E + W",
                "InD+M": "InDistill warmup (W) + M (E)"}


def render(spec: StudySpec, proto: dict[str, Any]) -> str:
    if spec.prose == "effect":
        return _effect(spec)
    if spec.prose == "methods":
        return _methods(spec)
    return _generic(spec, proto)


def _legacy_p(spec: StudySpec) -> SimpleNamespace:
    o = spec.options
    return SimpleNamespace(data=o["data"], curriculum=spec.curriculum, val_fraction=o["val_fraction"],
                           batch_size=o["batch_size"], teacher=spec.teacher, teacher_lr=spec.teacher_optim.lr,
                           teacher_epochs=spec.teacher_epochs, aux=spec.aux, aux_epochs=spec.aux_epochs,
                           student=spec.student, pilot_seed=spec.pilot_seed, primary_seeds=spec.primary_seeds,
                           threads=spec.threads, jobs=spec.jobs, seeds=spec.seeds)


def _effect(spec: StudySpec) -> str:
    E, W = spec.kd_epochs, spec.warm_epochs
    rows = ""
    for a in spec.arms:
        method = spec.row(a.row).method if a.row else None
        warm = a.kind in ("ind", "keep")
        loss = "CE" if method is None else method.upper() + (" (no CE)" if method == "pkt" else " (CE 0.1)")
        rows += (f"| {a.name} | {a.label} | {f'{W} warmup + {E}' if warm else spec.arm_epochs(a)} | {loss}"
                 f"{' + keep-flow' if a.kind == 'keep' else ''} |\n")
    comps = "".join(f"| {c.a} - {c.b} | {c.view} |{' **primary**' if c.primary else ''}\n" for c in spec.comparisons)
    cur = spec.curriculum.split(",")
    return study_prose.EFFECT.format(
        p=_legacy_p(spec), name=spec.script, E=E, W=W, total=E + W, arm_rows=rows, comp_rows=comps,
        grid=", ".join(f"({w:g}, {d:g})" for w, d in spec.keep_grid), seeds=", ".join(str(s) for s in spec.seeds),
        cur_first=cur[0], cur_last=cur[-1])


def _methods(spec: StudySpec) -> str:
    from scipy import stats

    from indistill_cli import losses

    e, w = spec.kd_epochs, spec.warm_epochs
    arm_rows = "".join(f"| {a} | {label} | {w + e if a == 'M+W' else e} KD"
                       f"{f' after {w} warmup' if a == 'InD+M' else ''} |\n" for a, label in METHODS_ARMS.items())
    first = spec.rows[0].name
    generic = {a.name: ARM_KINDS[a.kind][0].format(M="M") for a in spec.arms}
    comps = "".join(f"| {generic[c.a]} - {generic[c.b]} | {c.view} |\n" for c in spec.comparisons
                    if spec.arm(c.a).row == first)
    table = "| row | method | weight | CE weight | --param (beyond the registered defaults) |\n|---|---|---|---|---|\n"
    for r in spec.rows:
        cls = losses.get(r.method)
        table += (f"| {r.name} | {r.method} | {cls.default_weight:g} | {cls.ce_weight:g} | "
                  f"{' '.join(r.params) or '-'} |\n")
    n = len(spec.seeds)
    return study_prose.METHODS.format(
        p=_legacy_p(spec), name=spec.script, n_rows=len(spec.rows), arm_rows=arm_rows, w=w, e=e, total=w + e,
        methods_table=table, comp_rows=comps, n_seeds=n, t975=float(stats.t.ppf(0.975, n - 1)),
        chance=0.05 * len(spec.rows), scope=study_prose.METHODS_MINI_SCOPE if spec.script == "mini" else "")


def _loss(spec: StudySpec, kind: str, row: str) -> str:
    if kind == "ce":
        return "CE"
    r = spec.row(row)
    ce = "the recipe's CE weight" if r.ce is None else f"CE {r.ce:g}"
    params = f", {' '.join(r.params)}" if r.params else ""
    return f"{r.method} ({ce}{params})" + (" + keep-flow" if kind == "keep" else "")


def _generic(spec: StudySpec, proto: dict[str, Any]) -> str:
    o, E, W, data, models = spec.options, spec.kd_epochs, spec.warm_epochs, proto["data"], proto["models"]
    arm_rows = "".join(f"| {a.name} | {a.label} | "
                       f"{f'{W} warmup + {E}' if a.kind in ('ind', 'cum', 'keep') else spec.arm_epochs(a)}"
                       f" | {_loss(spec, a.kind, a.row)} |\n" for a in spec.arms)
    prim = [c for c in spec.comparisons if c.primary]
    comps = "".join(f"| {c.a} - {c.b} | {c.view} | {'**primary**' if c.primary else ''} |\n" for c in spec.comparisons)
    views = {c.view for c in spec.comparisons}
    so = spec.student_optim
    return study_prose.GENERIC.format(
        student=spec.student, teacher_name=spec.teacher, data=o["data"],
        preset=f" (preset `{spec.name}`)" if spec.name != "custom" else "",
        rows=", ".join(r.name if r.name == r.method else f"{r.name} ({r.method})" for r in spec.rows),
        source=f"the auxiliary `{spec.aux}`" if spec.aux else "the teacher", curriculum=spec.curriculum,
        views=_views(views), val_pct=f"{o.get('val_fraction', 0.1):.0%}", train_share=_train_share(o),
        serving=_serving(o), batch_size=o.get("batch_size", 128), data_sha=data["sha256"], n_train=data["train"],
        n_val=data["val"], n_test=data["test"], teacher_line=_teacher_line(spec, models),
        aux_line=_aux_line(spec),
        criterion=spec.criterion.upper() if spec.criterion in ("l1", "l2") else spec.criterion,
        student_sha=f" (sha256 `{models['student']['sha256']}`)" if "sha256" in models["student"] else "",
        optimizer=so.optimizer.capitalize() if so.optimizer == "adam" else so.optimizer.upper(), lr=so.lr,
        weight_decay=so.weight_decay, schedule=_schedule(so), total=E + W,
        flow=("The per-tap validation MSE to the pruned targets is recorded through KD (the paper's Figure 4)."
              if spec.flow else ""), E=E, W=W, arm_rows=arm_rows, keep=_keep(spec),
        seeds=", ".join(map(str, spec.seeds)),
        primary_seeds=(f"; the first {spec.primary_seeds} are the primary analysis, the rest a secondary one over all "
                       "complete seeds" if spec.primary_seeds and spec.primary_seeds < len(spec.seeds) else ""),
        primary_endpoints=", ".join(LABELS[k] for k in spec.primary_endpoints),
        secondary_endpoints=", ".join(LABELS[k] for k in spec.endpoints if k not in spec.primary_endpoints) or "none",
        comp_rows=comps, n_primary=len(prim), family=len(prim) * len(spec.primary_endpoints), gap=_gap(spec))


def _views(views: set[str]) -> str:
    out = []
    if "equal total epochs" in views:
        out.append("With equal total epochs, against the method given the warmup's W epochs (M+W, the strict view).")
    if "warmup added" in views:
        out.append("With the warmup added before the method's unchanged E epochs (against M), next to the control "
                   "that gives M the W epochs instead (M+W - M).")
    return " ".join(out)


def _train_share(o: dict[str, Any]) -> str:
    f = o.get("train_fraction", 1.0)
    if f == 1:
        return "training on the rest of the training split"
    return (f"training on a fixed, class-stratified {f:.4g} of the rest (`--train-fraction {f:g}`, nested: "
            "a smaller share lies inside a larger one; the retrieval database stays the whole training split)")


def _serving(o: dict[str, Any]) -> str:
    size = f"served at {o['image_size']}x{o['image_size']}" if o.get("image_size") else \
        "served at the size the tool chooses (28x28 sets zero-padded to 32x32)"
    aug = "random crop (padding 4) and horizontal flip while training" if o.get("augment", True) else "no augmentation"
    return f"Images {size}; {aug}."


def _schedule(so: Any) -> str:
    if so.schedule == "multistep":
        return ("lr x0.1 for the last seventh of each run's epochs" if not so.milestones
                else f"lr x{so.gamma:g} at epochs {','.join(map(str, so.milestones))}")
    return f"{so.schedule} schedule"


def _teacher_line(spec: StudySpec, models: dict[str, Any]) -> str:
    t = models["teacher"]
    if "sha256" in t:
        return f"the checkpoint `{spec.teacher}` (sha256 `{t['sha256']}`)."
    to = spec.teacher_optim
    return (f"`{spec.teacher}` trained here (seed 0), CE, {to.optimizer.upper()} lr {to.lr:g}, {to.schedule}, "
            f"{spec.teacher_epochs} epochs, the best validation top-1 epoch kept.")


def _aux_line(spec: StudySpec) -> str:
    if not spec.aux:
        return ""
    how = ("both on the student schedule below, last epochs kept" if spec.aux_recipe == "student" else
           "CE with the teacher's optimiser, PKT with Adam 1e-3, the best validation epoch kept")
    return (f"- Auxiliary teacher: `{spec.aux}` trained here (seed 0): CE for {spec.aux_epochs} epochs, then PKT "
            f"(no CE) from the teacher for {spec.aux_epochs} epochs; {how}. It is the KD teacher of every arm.\n")


def _keep(spec: StudySpec) -> str:
    if not spec.keep_grid:
        return ""
    if len(spec.keep_grid) == 1:
        w, d = spec.keep_grid[0]
        return f" Keep-flow arms keep the warmup's MSE terms in the KD loss with weight {w:g} x {d:g}^epoch (ours)."
    grid = ", ".join(f"({w:g}, {d:g})" for w, d in spec.keep_grid)
    return (f" Keep-flow arms (ours) use the (weight, decay) of {grid} with the highest validation mAP on pilot "
            f"seed {spec.pilot_seed} (ties: the smaller weight).")


def _gap(spec: StudySpec) -> str:
    if spec.gap_points <= 0:
        return ""
    return (f"\n\n**Gap check, before any arm runs:** validation retrieval mAP (cosine, leave-one-out in the "
            f"validation split) of the teacher{' and of the auxiliary' if spec.aux else ''} must exceed a CE "
            f"student's (E + W epochs, seed {spec.pilot_seed}) by at least {spec.gap_points:g} points; "
            + ("otherwise the study stops (`--accept-gap` runs the arms anyway and the report says so)."
               if spec.gap_required else "the report states the result."))
