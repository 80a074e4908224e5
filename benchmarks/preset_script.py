"""The benchmark scripts' old command lines, kept as thin calls of `indistill study --preset` (effect.py,
methods.py): the study and its report are the command's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(study: str, presets: dict[str, str], default: str, folders: dict[str, str]) -> None:
    """Parse the script's options and run `indistill study --preset presets[--preset] -o OUT ...`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a study never reaches the hub
    script = sys.modules["__main__"]
    ap = argparse.ArgumentParser(description=script.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(presets), default=default)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<the preset's folder>")
    ap.add_argument("--protocol", action="store_true", help="write the protocol and stop")
    ap.add_argument("--report", action="store_true", help="only rebuild results.* from the finished runs")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the preset's)")
    if study == "effect":
        ap.add_argument("--accept-gap", action="store_true", help="go on when the gap check fails")
    a = ap.parse_args()
    out = a.out or Path(os.path.relpath(HERE / "results" / folders[a.preset]))  # relative: the report quotes it
    argv = ["study", "--preset", presets[a.preset], "-o", str(out)]
    argv += ["--protocol-only"] * a.protocol + ["--report"] * a.report + ["--accept-gap"] * getattr(a, "accept_gap", 0)
    argv += ["--jobs", str(a.jobs)] if a.jobs else []
    from indistill_cli.cli import app

    sys.argv = ["indistill", *argv]  # the report records the command it was given
    app(argv)
