"""A study's report from its finished runs: results.json (every run, the summary), results.md and figure.png
(a forest plot of the paired differences). Each arm's mean and spread over seeds; each comparison's paired
differences with the 95% t-interval, the paired t and (n >= 6) Wilcoxon p-values, Holm over the primary
comparisons; one verdict line per comparison. Both budget views sit beside their controls, in the protocol's
order.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from indistill_cli.io.atomic import atomic_write
from indistill_cli.metrics import paired
from indistill_cli.metrics.scores import Scores
from indistill_cli.stages.study import StudySpec, endpoints_of, gap_ok, job_name, warm_job
from indistill_cli.stages.study_figures import flow_figure, forest
from indistill_cli.stages.study_markdown import markdown


def per_arm(spec: StudySpec, runs: dict[str, dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """{arm: {seed: test scores}} of the finished arm runs."""
    out: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in spec.arms}
    for a in spec.arms:
        for s in spec.seeds:
            r = runs.get(job_name(spec, a, s))
            if r and "scores" in r:
                out[a.name][s] = Scores.read(r["scores"]).as_dict()
    return out


def _difference(d: list[float]) -> dict[str, Any]:
    m, lo, hi = paired.t_interval(d)
    return {"mean": m, "ci95": [lo, hi], "p_t": paired.t_test_p(d),
            "wilcoxon_p": paired.wilcoxon_p(d) if len(d) >= paired.WILCOXON_MIN_N else None, "per_seed": d}


def compare(spec: StudySpec, arms: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> list[dict[str, Any]]:
    """Every comparison over `seeds` (paired by seed), Holm over the primaries on the primary endpoints, and
    each entry's verdict."""
    rows = []
    for c in spec.comparisons:
        row: dict[str, Any] = {"a": c.a, "b": c.b, "view": c.view, "primary": c.primary, "n": len(seeds)}
        for k in endpoints_of(spec, c.a, c.b):
            d = [arms[c.a][s][k] - arms[c.b][s][k] for s in seeds if k in arms[c.a][s] and k in arms[c.b][s]]
            if d:
                row[k] = _difference(d)
        rows.append(row)
    family = [(r, k) for r in rows if r["primary"] for k in spec.primary_endpoints if k in r]
    for (r, k), p in zip(family, paired.holm([r[k]["p_t"] for r, k in family])):
        r[k]["p_holm"] = p
    for r in rows:
        for k in endpoints_of(spec, r["a"], r["b"]):
            if k in r:
                e = r[k]
                e["verdict"] = paired.verdict(e["mean"], *e["ci95"], len(e["per_seed"]), e.get("p_holm"), len(family))
    return rows


def summarise(spec: StudySpec, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    arms = per_arm(spec, runs)
    complete = [s for s in spec.seeds if all(s in arms[a.name] for a in spec.arms)]
    primary = [s for s in spec.analysed_seeds() if s in complete]
    out: dict[str, Any] = {"complete_seeds": complete, "primary_seeds": primary, "arms": {}, "comparisons": {}}
    for a in spec.arms:
        out["arms"][a.name] = {}
        for k in endpoints_of(spec, a.name):
            v = [arms[a.name][s][k] for s in complete if k in arms[a.name][s]]
            out["arms"][a.name][k] = {"mean": statistics.fmean(v) if v else math.nan,
                                      "std": statistics.stdev(v) if len(v) > 1 else math.nan, "n": len(v)}
    out["comparisons"]["primary"] = compare(spec, arms, primary)
    out["comparisons"]["all"] = compare(spec, arms, complete)
    out["holm_family"] = sum(1 for r in out["comparisons"]["primary"] if r["primary"]
                             for k in spec.primary_endpoints if k in r)
    out["per_seed"] = {a: {str(s): v for s, v in sorted(by.items())} for a, by in arms.items()}
    return out


def reference(spec: StudySpec, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reference models' test scores, the gap check's numbers and the pilot's choice."""
    from indistill_cli.stages.study import choose_keep

    gap = runs.get("gap", {}).get("val_map", {})
    pilot = sorted((r for r in runs.values() if r.get("kind") == "pilot"), key=lambda r: r["job"])
    return {"teacher": runs.get("teacher", {}).get("scores", {}),
            "auxiliary": runs.get("aux-pkt", {}).get("scores", {}),
            "gap": gap, "gap_ok": gap_ok(spec, gap)[0] if gap else None,
            "pilot": {"runs": pilot, "chosen": list(choose_keep(spec, runs))} if pilot else None}


def mean_curves(spec: StudySpec, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per arm and tap: the validation MSE to the pruned targets, mean over seeds; arms that start from a warmup
    begin with its curve (one axis of student epochs)."""
    out: dict[str, dict[str, list[float]]] = {}
    for a in spec.arms:
        curves = []
        for s in spec.seeds:
            c = runs.get(job_name(spec, a, s), {}).get("curves")
            if not c:
                continue
            if a.kind in ("ind", "cum", "keep"):
                warm = runs.get(warm_job(s, a.kind == "cum"), {}).get("curves", {})
                c = {k: warm.get(k, [])[:] + v[1:] for k, v in c.items()}
            curves.append(c)
        if curves:
            out[a.name] = {k: [statistics.fmean(v) for v in zip(*[c[k] for c in curves])] for k in curves[0]}
    return out


def report(spec: StudySpec, out: Path, runs: dict[str, dict[str, Any]], command: str,
           protocol_sha: str) -> dict[str, Any]:
    """Write results.json, results.md and figure.png (and flow.png when the arms recorded the flow)."""
    result = {"study": spec.name, "protocol_sha256": protocol_sha, "command": command,
              "revisions": sorted({r.get("revision", "?") for r in runs.values()}),
              "threads": sorted({r["threads"] for r in runs.values() if "threads" in r}),
              "wall_h": sum(r.get("wall_s", 0) for r in runs.values()) / 3600,
              "reference": reference(spec, runs), "summary": summarise(spec, runs),
              "mean_curves": mean_curves(spec, runs), "runs": dict(sorted(runs.items()))}
    atomic_write(out / "results.json", (json.dumps(result, indent=1, default=float) + "\n").encode())
    atomic_write(out / "results.md", markdown(spec, result).encode())
    forest(spec, result, out / "figure.png")
    if result["mean_curves"]:
        flow_figure(spec, result, out / "flow.png")
    return result
