"""A study's protocol: `protocol.json` (the design as data, the data's fingerprint, the models' sha256, the
tool that wrote it, the sha256 of protocol.md) and `protocol.md` (the same, for people), written before the
first run. A folder holds one protocol: adding runs under another is refused (a new protocol is a new
folder). Folders written by the benchmark scripts before this command (protocol.md only) are continued
when their protocol.md is, word for word, what this command renders for the same preset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from indistill_cli.errors import BadInput
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.checkpoint import looks_like_checkpoint
from indistill_cli.stages.options import TUNABLE
from indistill_cli.stages.study import StudySpec
from indistill_cli.stages.study_render import render

FORMAT = "indistill-study/1"
IDENTITY = ("format", "design", "tests", "data", "models")  # what must be equal to add runs to a folder
TESTS = {"differences": "a - b paired by seed, on the primary seeds (then all complete seeds)",
         "interval": "95% t-interval of the mean difference", "p": "paired t-test, two-sided",
         "wilcoxon": "signed-rank, two-sided, exact, reported where n >= 6",
         "multiplicity": "Holm over the primary comparisons x primary endpoints",
         "verdict": "helps: interval above 0; hurts: below 0; else no detectable difference, with the interval's "
                    "larger bound; primaries also say whether they hold after Holm"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def design(spec: StudySpec) -> dict[str, Any]:
    """The spec as JSON, less how it is executed (threads, runs at a time, device and the other options a
    resumed run may change)."""
    d = json.loads(json.dumps(dataclasses.asdict(spec), default=str))
    d["run"] = {k: v for k, v in spec.run if k not in TUNABLE}
    for k in ("threads", "jobs"):
        d.pop(k)
    return d


def data_identity(spec: StudySpec) -> dict[str, Any]:
    """The split the study trains and scores on (data seed 0; for synthetic data the seed-0 set)."""
    from indistill_cli.data import load_dataset
    from indistill_cli.data.fingerprint import fingerprint

    o = spec.options
    ds = load_dataset(o["data"], o.get("val_fraction", 0.1), o.get("data_root"), o.get("image_size"), seed=0,
                      strict=o.get("strict", False), train_fraction=o.get("train_fraction", 1.0))
    return {"name": o["data"], "val_fraction": o.get("val_fraction", 0.1),
            "train_fraction": o.get("train_fraction", 1.0), **fingerprint(ds)}


def model_identity(name: str) -> dict[str, Any]:
    if looks_like_checkpoint(name):
        return {"checkpoint": name, "sha256": sha256(Path(name))}
    return {"arch": name}


def protocol(spec: StudySpec) -> dict[str, Any]:
    """protocol.json's content, without the sha256 of protocol.md (added when written)."""
    from indistill_cli import __version__
    from indistill_cli.stages.study_runs import revision

    models = {"teacher": model_identity(spec.teacher), "student": model_identity(spec.student)}
    if spec.aux:
        models["auxiliary"] = {"arch": spec.aux}
    return {"format": FORMAT, "design": design(spec), "tests": TESTS, "data": data_identity(spec), "models": models,
            "planned": {"threads": spec.threads, "jobs": spec.jobs},
            "written_by": {"tool": f"indistill {__version__}", "revision": revision(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}


def first_difference(have: Any, want: Any, where: str = "") -> str | None:
    """Where two JSON values first differ, as 'key: X there, Y here'."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want), key=str):
            d = first_difference(have.get(k), want.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if have != want:
        return f"{where}: {json.dumps(have)[:60]} there, {json.dumps(want)[:60]} here"
    return None


def ensure(spec: StudySpec, out: Path) -> tuple[str, bool]:
    """Write the protocol into `out`, or check that the one there is this study's. Returns (sha256 of
    protocol.json, whether it was written now). Refuses (BadInput) a folder holding another protocol."""
    want = protocol(spec)
    md = render(spec, want)
    pj, pm = out / "protocol.json", out / "protocol.md"
    if pj.exists():
        have = json.loads(pj.read_text())
        diff = first_difference({k: have.get(k) for k in IDENTITY}, {k: want[k] for k in IDENTITY})
        if diff:
            raise BadInput(f"{out}: holds another protocol ({diff}); a new protocol is a new folder")
        if not pm.exists() or sha256(pm) != have.get("protocol_md_sha256"):
            raise BadInput(f"{pm}: changed since protocol.json recorded its sha256; a new protocol is a new folder")
        return sha256(pj), False
    if pm.exists() and pm.read_text() != md:
        raise BadInput(f"{pm}: is not this study's protocol (written by another study, or edited); a new protocol "
                       f"is a new folder")
    if not pm.exists() and any((out / "runs").glob("*.json")):
        raise BadInput(f"{out}: holds runs but no protocol; a study starts in a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if not pm.exists():
        atomic_write(pm, md.encode())
    want["protocol_md_sha256"] = sha256(pm)
    atomic_write(pj, (json.dumps(want, indent=1) + "\n").encode())
    return sha256(pj), True


def recorded(out: Path, execution: dict[str, Any]) -> StudySpec:
    """The study whose protocol.json is in `out` (to continue it, or report it, without repeating its options);
    `execution`: run options that change how it runs (device, data_root, cache)."""
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.stages.study import Arm, Comparison, Row
    from indistill_cli.stages.study_presets import preset, with_run

    d = json.loads((out / "protocol.json").read_text())["design"]
    if d["name"] != "custom":
        return preset(d["name"], execution)
    listed = ("seeds", "endpoints", "primary_endpoints", "keep_grid")
    tuples = {k: tuple(tuple(v) if isinstance(v, list) else v for v in d[k]) for k in listed}
    spec = StudySpec(**{**d, **tuples, "rows": tuple(Row(**{**r, "params": tuple(r["params"])}) for r in d["rows"]),
                        "arms": tuple(Arm(**a) for a in d["arms"]),
                        "comparisons": tuple(Comparison(**c) for c in d["comparisons"]),
                        "run": tuple(d["run"].items()), "teacher_optim": OptimConfig(**d["teacher_optim"]),
                        "student_optim": OptimConfig(**d["student_optim"])})
    return with_run(spec, execution)
