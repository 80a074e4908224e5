"""Fixed tiny CPU runs whose output tensors must stay bitwise equal across refactors.

`run_chain(pythonpath, folder)` runs train -> prune -> warmup (one lr plan) -> distill (kd, continuing
the plan) and a second distill (pkt, --keep-flow) through `python -m indistill_cli` with one thread,
and returns {output name: sha256 of its tensors}. The hash covers the sorted tensor names, dtypes,
shapes and raw bytes, never the file's metadata (which holds timestamps and wall times).

Record the reference for this machine (run at the pre-refactor revision d13e02c):
    PYTHONPATH=<tree> python tests/bitwise.py record
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

REFERENCE_REVISION = "d13e02c"
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "bitwise_reference.json"
DATA = ("--data", "fashion-mnist-mini", "--val-fraction", "0.05")
COMMANDS: list[tuple[str, ...]] = [
    ("train", "cnn3", *DATA, "--epochs", "1", "--seed", "3", "--no-last", "-o", "train.safetensors"),
    ("prune", "train.safetensors", "--like", "cnn3-w0.5", *DATA, "-o", "pruned.safetensors"),
    ("warmup", "-t", "pruned.safetensors", "-s", "cnn3-w0.5", *DATA, "--epochs-per-tap", "1,1,1",
     "--plan-epochs", "5", "--flow-images", "200", "--seed", "3", "-o", "warm.safetensors"),
    ("distill", "-t", "train.safetensors", "-s", "warm.safetensors", "-m", "kd", "--continue-plan", *DATA,
     "--seed", "3", "-o", "kd.safetensors"),
    ("distill", "-t", "train.safetensors", "-s", "warm.safetensors", "-m", "pkt", "--ce", "0", "--epochs", "1",
     "--flow-teacher", "pruned.safetensors", "--keep-flow", "1", *DATA, "--seed", "3", "-o", "pkt.safetensors"),
]
OUTPUTS = ("train.safetensors", "pruned.safetensors", "warm.safetensors", "warm.plan.safetensors",
           "kd.safetensors", "pkt.safetensors")


def fingerprint() -> str:
    """Bitwise CPU results hold for one torch build on one CPU kernel family."""
    import torch

    return f"{torch.__version__}+{torch.backends.cpu.get_cpu_capability()}"


def tensor_sha256(path: Path) -> str:
    """sha256 over a safetensors file's tensors (sorted names, dtype, shape, raw bytes), metadata excluded."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    h = hashlib.sha256()
    for name in sorted(header):
        t = header[name]
        begin, end = t["data_offsets"]
        h.update(f"{name}|{t['dtype']}|{t['shape']}|".encode())
        h.update(data[begin:end])
    return h.hexdigest()


def run_chain(pythonpath: str | Path, folder: Path, timeout: float = 600) -> dict[str, str]:
    """Run COMMANDS with the package found on `pythonpath`; {output: tensor sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    env.pop("INDISTILL_DATA", None)
    for args in COMMANDS:
        p = subprocess.run([sys.executable, "-m", "indistill_cli", *args, "-q"], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return {name: tensor_sha256(folder / name) for name in OUTPUTS}


def main() -> None:
    import tempfile

    if sys.argv[1:] != ["record"]:
        sys.exit(__doc__)
    tree = os.environ.get("PYTHONPATH") or str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        sums = run_chain(tree, Path(tmp))
    ref = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
    ref["revision"] = REFERENCE_REVISION
    ref.setdefault("fingerprints", {})[fingerprint()] = sums
    REFERENCE_FILE.write_text(json.dumps(ref, indent=2, sort_keys=True) + "\n")
    print(json.dumps(sums, indent=2))


if __name__ == "__main__":
    main()
