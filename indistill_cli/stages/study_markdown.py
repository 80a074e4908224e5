"""results.md of a study: the reference models, each arm's mean and spread, the paired differences of every
comparison (both budget views beside their controls) and one verdict line per comparison."""

from __future__ import annotations

import math
from typing import Any

from indistill_cli.metrics.paired import WILCOXON_MIN_N
from indistill_cli.metrics.scores import LABELS
from indistill_cli.stages.study import StudySpec, endpoints_of, gap_ok


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _cell(e: dict[str, Any]) -> str:
    lo, hi = e["ci95"]
    if math.isnan(lo):
        return f"{e['mean']:+.2f}"
    ps = [f"p={e['p_t']:.3g}"] + ([f"W p={e['wilcoxon_p']:.3g}"] if e.get("wilcoxon_p") is not None else []) \
        + ([f"Holm p={e['p_holm']:.3g}"] if "p_holm" in e else [])
    mark = " **+**" if lo > 0 else " **-**" if hi < 0 else ""
    return f"{e['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark} ({', '.join(ps)})"


def header(spec: StudySpec, result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    E, W = spec.kd_epochs, spec.warm_epochs
    return [f"# Study results: `{spec.student}` from `{spec.teacher}` on `{spec.data}` ({spec.name})\n\n",
            f"Protocol: [protocol.md](protocol.md) (protocol.json sha256 `{result['protocol_sha256'][:16]}`). "
            f"Code revision(s): {', '.join(f'`{r}`' for r in result['revisions'])}. Seeds complete: "
            f"{s['complete_seeds']} (primary analysis: {s['primary_seeds']}). {len(result['runs'])} runs, "
            f"{result['wall_h']:.2f} h of run time, {', '.join(map(str, result['threads'])) or '?'} torch thread(s) "
            f"per run. Test split; scores in %.\n\n",
            f"E = {E} KD epochs, W = {W} warmup epochs (curriculum {spec.curriculum}). **Equal total epochs** "
            "compares the warmup + method (W + E) with the method given the warmup's epochs (E + W); **warmup "
            "added** compares it with the method's E epochs, beside the control that gives the method the W "
            "epochs instead.\n"]


def reference_lines(spec: StudySpec, ref: dict[str, Any]) -> list[str]:
    if not (ref["teacher"] or ref["auxiliary"] or ref["gap"]):
        return []
    keys = ("map_cosine", "map_euclidean", "p100_cosine", "top1")
    lines = ["\n## Reference models (test split)\n\n| model | " + " | ".join(LABELS[k] for k in keys)
             + " |\n|---|" + "---|" * len(keys) + "\n"]
    for name, arch in (("teacher", spec.teacher), ("auxiliary", spec.aux)):
        if ref[name]:
            lines.append(f"| {name} (`{arch}`) | " + " | ".join(_f(ref[name].get(k)) for k in keys) + " |\n")
    if ref["gap"]:
        ok, text = gap_ok(spec, ref["gap"])
        lines.append(f"\nGap check ({spec.gap_points:g} points, pilot seed {spec.pilot_seed}): {text}: "
                     f"**{'passed' if ok else 'FAILED'}**.\n")
    if ref["pilot"]:
        lines.append(f"\n## Pilot (validation split, seed {spec.pilot_seed}): keep-flow weight and decay\n\n"
                     "| weight | decay | val mAP |\n|---|---|---|\n")
        lines += [f"| {r['keep_flow'][0]:g} | {r['keep_flow'][1]:g} | {r['val_map']:.2f} |\n"
                  for r in ref["pilot"]["runs"]]
        w, d = ref["pilot"]["chosen"]
        lines.append(f"\nChosen (highest validation mAP): weight {w:g}, decay {d:g}.\n")
    return lines


def arm_lines(spec: StudySpec, s: dict[str, Any]) -> list[str]:
    keys = spec.endpoints
    lines = [f"\n## Arms (mean +- std over {len(s['complete_seeds'])} complete seeds)\n\n| arm | what | epochs | "
             + " | ".join(LABELS[k] for k in keys) + " |\n|---|---|---|" + "---|" * len(keys) + "\n"]
    for a in spec.arms:
        ep = f"{spec.warm_epochs}+{spec.kd_epochs}" if a.kind in ("ind", "cum", "keep") else str(spec.arm_epochs(a))
        cells = [f"{_f(v['mean'])} +- {_f(v['std'])}" if (v := s["arms"][a.name].get(k)) else "n/a (no head trained)"
                 for k in keys]
        lines.append(f"| {a.name} | {a.label} | {ep} | " + " | ".join(cells) + " |\n")
    return lines


def comparison_lines(spec: StudySpec, rows: list[dict[str, Any]], title: str) -> list[str]:
    keys = spec.endpoints
    lines = [f"\n## Paired differences, {title} (n = {rows[0]['n']}): mean [95% t-interval] (paired t p; Wilcoxon "
             f"p where n >= {WILCOXON_MIN_N}; Holm p for the primaries); **+**/**-**: the interval excludes 0\n\n"
             "| a - b | view | " + " | ".join(LABELS[k] for k in keys) + " |\n|---|---|" + "---|" * len(keys) + "\n"]
    for r in rows:
        cells = [_cell(r[k]) if k in r else "n/a" for k in keys]
        lines.append(f"| {r['a']} - {r['b']} | {r['view']}{' (**primary**)' if r['primary'] else ''} | "
                     + " | ".join(cells) + " |\n")
    lines.append(f"\n### Verdicts ({title})\n\n")
    for r in rows:
        parts = [f"{LABELS[k]} {r[k]['mean']:+.2f}: {r[k]['verdict']}" for k in spec.primary_endpoints
                 if k in endpoints_of(spec, r["a"], r["b"]) and k in r]
        lines.append(f"- **{r['a']} - {r['b']}** ({r['view']}{', primary' if r['primary'] else ''}): "
                     + ("; ".join(parts) or "no primary endpoint applies") + "\n")
    return lines


def markdown(spec: StudySpec, result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = header(spec, result) + reference_lines(spec, result["reference"]) + arm_lines(spec, s)
    for name, title in (("primary", "primary seeds"), ("all", "all complete seeds")):
        rows = s["comparisons"][name]
        if rows and rows[0]["n"] and not (name == "all" and s["complete_seeds"] == s["primary_seeds"]):
            lines += comparison_lines(spec, rows, title)
    n = len(s["primary_seeds"])
    if 0 < n < WILCOXON_MIN_N:
        lines.append(f"\nWith {n} seeds the two-sided Wilcoxon test cannot give p < {2 / 2 ** n:.4g} (all {n} "
                     "differences of one sign), so it is not reported; the t-interval is the test.\n")
    lines.append(f"\nHolm's correction over {s['holm_family']} primary test(s). Command: `{result['command']}`\n")
    return "".join(lines)
