"""How far every trained-quantity threshold of the suite sits from the values other CPU kernels and seeds give.

    python benchmarks/margins.py                       # 5 kernel variants x seeds 0,1,2: resumable, hours on 2 cores
    python benchmarks/margins.py --report              # rebuild margins.md/json from the finished passes
    python benchmarks/margins.py --select "resnet_teacher or cumulative" --tag setup2
                                                       # re-measure some tests (pytest -k) at HEAD; newest wins

Same seed, another processor: oneDNN and ATen pick other kernels (SSE4.1, AVX2, AVX-512, AMX), reductions add
in another order and a short training run ends elsewhere. One machine shows several of those kernel families:
`ONEDNN_MAX_CPU_ISA` caps oneDNN (convolutions), `ATEN_CPU_CAPABILITY` picks ATen's vectorised kernels.

A pass is `pytest -m trained` (the tests whose assertions are on trained quantities, checked through the
`record` fixture of tests/conftest.py) under one variant's environment and one $INDISTILL_TEST_SEED, with
$INDISTILL_MARGINS_OUT collecting every (test, quantity, value, threshold, direction). Each finished pass is
one JSON file in benchmarks/results/margins-runs/ (re-running skips it); the report, margins.md and
margins.json, gives per (test, quantity) the threshold, every (variant, seed) value, the worst value and its
margin. A value measured in several passes (a re-measure after a change) is taken from the newest pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RUNS = RESULTS / "margins-runs"
LOGS = RUNS / "work"  # pytest's output per pass (ignored by git: benchmarks/results/**/work/)
VARIANTS: dict[str, dict[str, str]] = {
    "native": {},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
}
ISA_FLAGS = ("sse4_1", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")
CODE_PATHS = ("indistill_cli", "tests", "pyproject.toml")  # what the measured values depend on


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def revision() -> tuple[str, bool]:
    """(HEAD's commit, whether the code the values depend on has uncommitted changes)."""
    return _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--", *CODE_PATHS))


def machine() -> dict[str, Any]:
    """The CPU (model, family/model numbers, the ISA flags that decide kernels), cores, torch and Python."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        k, _, v = line.partition(":")
        info.setdefault(k.strip(), v.strip())
    flags = set(info.get("flags", "").split())
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    return {"cpu": info.get("model name", platform.processor()), "family": info.get("cpu family"),
            "model": info.get("model"), "stepping": info.get("stepping"),
            "isa_flags": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch": torch_version, "python": platform.python_version()}


_PROBE = ("import torch; c = torch.nn.Conv2d(3, 8, 3); c(torch.randn(2, 3, 16, 16)); "
          "print('aten', torch.backends.cpu.get_cpu_capability())")


def variant_env(variant: str) -> dict[str, str]:
    """This process's environment with one variant's kernel switches (and none of the others')."""
    switches = {k for v in VARIANTS.values() for k in v}
    return {k: v for k, v in os.environ.items() if k not in switches} | VARIANTS[variant]


def kernels(variant: str) -> dict[str, str]:
    """What a variant's environment really selects: ATen's CPU capability and oneDNN's ISA (its verbose line)."""
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300,
                       env=variant_env(variant) | {"ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"})
    aten = re.search(r"^aten (\S+)", p.stdout, re.M)
    isa = re.search(r"isa:([^\n,]+)", p.stdout + p.stderr)
    return {"aten": aten.group(1) if aten else "?", "onednn": isa.group(1).strip() if isa else "?"}


def pass_file(variant: str, seed: int, tag: str) -> Path:
    return RUNS / f"{variant}-s{seed}{'-' + tag if tag else ''}.json"


def _summary_line(log: str) -> str:
    lines = [ln.strip("= ") for ln in log.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return lines[-1] if lines else "no summary (see the log)"


def pytest_command(workers: int, select: str | None, basetemp: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "trained", "-p", "no:cacheprovider", "--basetemp", str(basetemp)]
    if workers > 1:
        cmd += ["-n", str(workers)]
    if select:
        cmd += ["-k", select]
    return [*cmd, "tests"]


def run_pass(variant: str, seed: int, args: argparse.Namespace, rev: str) -> dict[str, Any]:
    """One `pytest -m trained` under a variant's environment and a seed; its rows and how it went, written
    atomically (a killed pass leaves nothing, and is redone on the next start)."""
    env_extra = VARIANTS[variant]
    LOGS.mkdir(parents=True, exist_ok=True)
    rows_file, log_file = LOGS / f"{variant}-s{seed}.jsonl", LOGS / f"{variant}-s{seed}.log"
    rows_file.unlink(missing_ok=True)
    env = variant_env(variant) | {"INDISTILL_TEST_SEED": str(seed), "INDISTILL_MARGINS_OUT": str(rows_file),
                                  "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    cmd = pytest_command(args.workers, args.select, Path(args.tmp) / f"{variant}-s{seed}")
    t0 = time.time()
    with open(log_file, "w") as log:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.pass_timeout)
    wall = time.time() - t0
    rows = [json.loads(ln) for ln in rows_file.read_text().splitlines()] if rows_file.exists() else []
    record = {"variant": variant, "env": env_extra, "seed": seed, "revision": rev, "select": args.select or "",
              "kernels": kernels(variant), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "wall_s": round(wall, 1), "pytest_rc": p.returncode, "pytest": _summary_line(log_file.read_text()),
              "workers": args.workers, "margins_command": shlex.join(["python", *sys.argv]),
              "command": shlex.join(["env", *(f"{k}={v}" for k, v in env_extra.items()), f"INDISTILL_TEST_SEED={seed}",
                                     "python", *cmd[1:]]),
              "rows": rows}
    out = pass_file(variant, seed, args.tag)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    return record


def measure(args: argparse.Namespace) -> None:
    rev, dirty = revision()
    if dirty and not args.allow_dirty:
        sys.exit(f"error: uncommitted changes under {', '.join(CODE_PATHS)}: commit first (the table records "
                 "the revision it measured), or pass --allow-dirty for a trial")
    rev = rev + ("+uncommitted" if dirty else "")
    todo = [(v, s) for s in args.seeds for v in args.variants]  # every variant of a seed before the next seed
    RUNS.mkdir(parents=True, exist_ok=True)
    print(f"[margins] {len(todo)} passes at {rev[:12]}, {args.workers} workers; results in {RUNS}", flush=True)
    walls: list[float] = []
    for i, (v, s) in enumerate(todo, 1):
        f = pass_file(v, s, args.tag)
        if f.exists():
            old = json.loads(f.read_text())["revision"]
            note = "" if old == rev else f" (measured at {old[:12]}; delete the file to re-measure at HEAD)"
            print(f"[margins] pass {i}/{len(todo)} {v} seed {s}: done{note}", flush=True)
            continue
        eta = f", about {sum(walls) / len(walls) * (len(todo) - i + 1) / 60:.0f} min left" if walls else ""
        print(f"[margins] pass {i}/{len(todo)} {v} seed {s}: start {time.strftime('%H:%M:%S')}{eta}", flush=True)
        r = run_pass(v, s, args, rev)
        walls.append(r["wall_s"])
        missed = sum(not row["passed"] for row in r["rows"])
        print(f"[margins] pass {i}/{len(todo)} {v} seed {s}: {r['wall_s'] / 60:.1f} min, {len(r['rows'])} values, "
              f"{missed} below threshold; pytest: {r['pytest']}", flush=True)
        report(args)


def load_passes() -> list[dict[str, Any]]:
    passes = [json.loads(f.read_text()) for f in sorted(RUNS.glob("*.json"))]
    return sorted(passes, key=lambda p: p["finished"])


def collect(passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (test, quantity): the newest threshold, every (variant, seed) value (the newest pass wins), the
    worst value, where it was seen and its margin (positive: on the right side of the threshold)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for p in passes:  # oldest first: later passes overwrite
        for r in p["rows"]:
            e = table.setdefault((r["test"], r["quantity"]), {"test": r["test"], "quantity": r["quantity"],
                                                             "values": {}, "revisions": {}})
            e.update(threshold=r["threshold"], direction=r["direction"])
            e["values"].setdefault(p["variant"], {})[str(p["seed"])] = r["value"]
            e["revisions"][f"{p['variant']}/{p['seed']}"] = p["revision"]
    rows = []
    for e in table.values():
        cells = [(v, int(s), x) for v, by in e["values"].items() for s, x in by.items()]
        high = e["direction"] in (">", ">=")
        v, s, worst = (min if high else max)(cells, key=lambda c: c[2])
        margin = worst - e["threshold"] if high else e["threshold"] - worst
        rel = margin / abs(e["threshold"]) if e["threshold"] else None
        rows.append(e | {"worst": worst, "worst_at": {"variant": v, "seed": s}, "margin": margin,
                         "margin_rel": rel, "n": len(cells), "revisions": sorted(set(e["revisions"].values()))})
    return rows


def _short(test: str) -> str:
    return test.removeprefix("tests/")


def _pass_rows(passes: list[dict[str, Any]]) -> list[str]:
    out = ["| variant | environment | ATen capability | oneDNN ISA | seed | revision | wall (min) | pytest |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in sorted(passes, key=lambda p: (p["seed"], list(VARIANTS).index(p["variant"]), p["finished"])):
        env = " ".join(f"`{k}={v}`" for k, v in p["env"].items()) or "(none)"
        sel = f" (-k `{p['select']}`)" if p["select"] else ""
        out.append(f"| {p['variant']}{sel} | {env} | {p['kernels']['aten']} | {p['kernels']['onednn']} | {p['seed']} "
                   f"| {p['revision'][:10]} | {p['wall_s'] / 60:.1f} | {p['pytest']} |")
    return out


def _value_cells(r: dict[str, Any], seeds: list[int]) -> list[str]:
    def cell(v: str) -> str:
        by = r["values"].get(v, {})
        vals = [by.get(str(s)) for s in seeds]
        bad = {"<": lambda x: x >= r["threshold"], "<=": lambda x: x > r["threshold"],
               ">": lambda x: x <= r["threshold"], ">=": lambda x: x < r["threshold"]}[r["direction"]]
        return " / ".join("—" if x is None else (f"**{x:.3f}**" if bad(x) else f"{x:.3f}") for x in vals)

    return [cell(v) for v in VARIANTS]


def _margin(r: dict[str, Any]) -> str:
    rel = f" ({r['margin_rel']:+.0%})" if r["margin_rel"] is not None else ""
    return f"{r['margin']:+.3f}{rel}"


def _table(rows: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    head = "| test | quantity | needs | worst (variant, seed) | margin | " + " | ".join(VARIANTS) + " |"
    out = [head, "|" + " --- |" * (5 + len(VARIANTS))]
    for r in rows:
        w = r["worst_at"]
        out.append(f"| `{_short(r['test'])}` | {r['quantity']} | {r['direction']} {r['threshold']:.3g} "
                   f"| {r['worst']:.3f} ({w['variant']}, {w['seed']}) | {_margin(r)} | "
                   + " | ".join(_value_cells(r, seeds)) + " |")
    return out


def _tightness(r: dict[str, Any]) -> float:
    return r["margin_rel"] if r["margin_rel"] is not None else r["margin"]


def report(args: argparse.Namespace) -> None:
    """margins.md and margins.json from every finished pass."""
    passes = load_passes()
    if not passes:
        sys.exit("error: no finished pass in " + str(RUNS))
    rows = collect(passes)
    seeds = sorted({p["seed"] for p in passes})
    m = machine()
    revs = sorted({p["revision"] for p in passes})
    below = [r for r in rows if r["margin"] < 0 or (r["margin"] == 0 and r["direction"] in ("<", ">"))]
    md = ["# Margins of the trained-quantity thresholds", "",
          "Written by `benchmarks/margins.py`: `pytest -m trained` (every test asserting on a quantity training "
          "produced, through the `record` fixture) under CPU kernel variants and seeds "
          f"({len(passes)} passes, {len(rows)} quantities). Rebuild this page: `python benchmarks/margins.py "
          "--report`; measure again: delete `benchmarks/results/margins-runs/` and run "
          "`python benchmarks/margins.py` (resumable per pass).", "",
          f"- machine: {m['cpu']} (family {m['family']}, model {m['model']}, stepping {m['stepping']}), "
          f"{m['cores']} cores; ISA flags: {' '.join(m['isa_flags'])}",
          f"- torch {m['torch']}, Python {m['python']}",
          f"- code revision(s) measured: {', '.join(f'`{r}`' for r in revs)}",
          f"- each pass: `{passes[0]['command']}` with its variant's environment and seed "
          f"(margins.py run as `{passes[-1].get('margins_command', '?')}`)",
          f"- total pass time: {sum(p['wall_s'] for p in passes) / 3600:.1f} h", "",
          "Margin: the worst value minus the threshold (threshold minus the worst for an upper bound), and as a "
          "fraction of the threshold. Values per variant: " + " / ".join(f"seed {s}" for s in seeds)
          + "; **bold**: on the wrong side of the threshold.", "",
          f"Quantities on the wrong side somewhere: {len(below)}.", "", "## Passes", "", *_pass_rows(passes), "",
          "## The twelve tightest (relative margin)", "",
          *_table(sorted(rows, key=_tightness)[:12], seeds), "", "## Every trained quantity", "",
          *_table(rows, seeds), ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "margins.md").write_text("\n".join(md))
    doc = {"machine": m, "revisions": revs, "seeds": seeds, "variants": VARIANTS,
           "passes": [{k: v for k, v in p.items() if k != "rows"} for p in passes], "rows": rows}
    (RESULTS / "margins.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"[margins] wrote {RESULTS / 'margins.md'} ({len(rows)} quantities, {len(below)} below threshold)",
          flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2", help="values of $INDISTILL_TEST_SEED (default 0,1,2)")
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per pass (default 2)")
    ap.add_argument("--select", default=None, help="pytest -k expression: re-measure only these tests")
    ap.add_argument("--tag", default="", help="suffix of the pass files (needed with --select)")
    ap.add_argument("--tmp", default=f"/tmp/indistill-margins-{os.getuid()}", help="pytest's --basetemp root")
    ap.add_argument("--pass-timeout", type=float, default=3 * 3600, help="seconds before a pass is killed")
    ap.add_argument("--allow-dirty", action="store_true", help="measure uncommitted code (a trial)")
    ap.add_argument("--report", action="store_true", help="only rebuild margins.md/json")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or (args.select and not args.tag):
        ap.error(f"unknown variant(s) {unknown}" if unknown else "--select needs a --tag for its pass files")
    if args.report:
        report(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
