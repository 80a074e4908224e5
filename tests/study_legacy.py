"""The pre-registered studies' own scripts, frozen: what `benchmarks/effect.py` and `benchmarks/methods.py` computed
for their smoke presets at revision b7879a7, before they became presets of `indistill study`. The presets must
compute exactly that (same runs, same numbers, bitwise on CPU), or continuing the studies through the command
would mix two machineries.

`values(runs folder)` keeps what a run computed (scores, validation maps, flow curves, the pilot's choice...), never
its wall time or revision. The recorded values hold for one torch build and CPU kernel family (like bitwise.py);
elsewhere `legacy(preset, folder)` runs the old script from git.

Record (from a checkout that has revision b7879a7):
    PYTHONPATH=<tree> python tests/study_legacy.py record
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bitwise

REVISION = "b7879a7"
FILE = Path(__file__).resolve().parent / "data" / "study_legacy_smoke.json"
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"effect-smoke": "effect.py", "methods-smoke": "methods.py"}
KEYS = ("scores", "val_map", "val_top1", "keep_flow", "final_mse", "initial_mse", "curves", "pairs", "ce", "params")
SCORES = ("top1", "map_cosine", "map_euclidean", "p100_cosine")  # what the scripts scored


def values(folder: Path) -> dict[str, dict[str, Any]]:
    """{run: what it computed} of a study folder's runs/."""
    out = {}
    for f in sorted((folder / "runs").glob("*.json")):
        r = json.loads(f.read_text())
        v = {k: r[k] for k in KEYS if k in r}
        if "scores" in v:
            v["scores"] = {k: v["scores"][k] for k in SCORES if k in v["scores"]}
        out[f.stem] = v
    return out


def as_recorded(got: dict[str, dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`got` restricted to what the recording holds of each run (the command records a few more fields)."""
    return {k: {kk: v[kk] for kk in recorded.get(k, v) if kk in v} for k, v in got.items()}


def env(pythonpath: Path | str) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    e.pop("INDISTILL_DATA", None)
    return e


def legacy(preset: str, folder: Path) -> dict[str, dict[str, Any]]:
    """Run the old script of `preset` from revision REVISION (extracted with git) into `folder`; its values."""
    tree = folder / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", REVISION, "indistill_cli", "benchmarks"],
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    out = folder / "out"
    p = subprocess.run([sys.executable, str(tree / "benchmarks" / SCRIPTS[preset]), "--preset", "smoke", "--out",
                        str(out)], env=env(tree), capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"the {REVISION} script failed: {p.stderr[-2000:]}")
    return values(out)


def expected(preset: str, scratch: Path) -> dict[str, dict[str, Any]]:
    """The recorded values for this machine's fingerprint, else the old script run here."""
    rec = json.loads(FILE.read_text())["fingerprints"] if FILE.exists() else {}
    if bitwise.fingerprint() in rec:
        return rec[bitwise.fingerprint()][preset]
    return legacy(preset, scratch)


def main() -> None:
    if sys.argv[1:] != ["record"]:
        sys.exit(__doc__)
    ref = json.loads(FILE.read_text()) if FILE.exists() else {"revision": REVISION, "fingerprints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ref["fingerprints"][bitwise.fingerprint()] = {p: legacy(p, Path(tmp) / p) for p in SCRIPTS}
    FILE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
