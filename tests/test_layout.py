"""The architecture's promises: same-seed results unchanged by the move (more checks join below)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import bitwise

ROOT = Path(__file__).resolve().parents[1]


def _reference(tmp_path: Path) -> dict[str, str]:
    """The recorded checksums for this torch build + CPU, else rerun the pre-refactor revision here."""
    recorded = json.loads(bitwise.REFERENCE_FILE.read_text())["fingerprints"]
    if bitwise.fingerprint() in recorded:
        return recorded[bitwise.fingerprint()]
    old = tmp_path / "before"
    old.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", bitwise.REFERENCE_REVISION, "indistill_cli"],
                                 capture_output=True, check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"no recorded checksums for {bitwise.fingerprint()} and the pre-refactor revision "
                    f"{bitwise.REFERENCE_REVISION} cannot be extracted with git ({e}); run the tests from a git "
                    f"clone with that revision, or record the reference with `tests/bitwise.py record` there")
    return bitwise.run_chain(old, tmp_path / "reference-run")


def test_same_seed_results_bitwise_equal_to_before_the_move(tmp_path: Path) -> None:
    expected = _reference(tmp_path)
    got = bitwise.run_chain(ROOT, tmp_path / "run")
    assert got == expected
