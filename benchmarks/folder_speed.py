"""Training img/s of an image folder, decoded once into memory (--cache ram) or streamed from disk
(--cache off), against the built-in tensor path for the same model and input size.

Two folders are built in a temporary directory from the embedded Fashion-MNIST subset:

  png28   10,000 28x28 grayscale PNGs (the subset's train split; its 2,000 test images as val/), trained
          with cnn3 exactly as `--data fashion-mnist-mini` is: same images, 28x28 zero-padded to 32x32,
          one channel, crop (pad 4) + flip. Built-in path: `--data fashion-mnist-mini`.
  jpeg256 2,000 256x256 RGB JPEGs (subset images upscaled and tinted per class; 400 as val/), trained
          with cnn3-w0.5 at --image-size 128 (decoded once: resized and centre-cropped to 128x128). Built-in path: `--data synthetic:3x128x128:10:2000` (a tensor
          set already at the served size, as the cached folder is).

Every run is one `indistill train ... --json` process with OMP_NUM_THREADS fixed (default 1: a shared
2-core machine stalls two OpenMP threads); `images_per_sec` (the training loop only, decoding before it
excluded) is read from its summary. Paths run interleaved, round after round, so a busy machine slows
them alike; the table gives each path's median over rounds and the median of the per-round ratios
against the built-in path. The one-time decode of the cached path is timed separately (in-process).

    python benchmarks/folder_speed.py [--rounds 3] [--epochs 2] [--threads 1] [--out benchmarks/results/folder-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import indistill_cli  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from indistill_cli.data import load_dataset  # noqa: E402


def build_png28(root: Path) -> Path:
    """The embedded subset as a folder of 28x28 grayscale PNGs: train/CLASS/*.png and val/CLASS/*.png."""
    from PIL import Image

    ds = load_dataset("fashion-mnist-mini", val_fraction=0.0)
    for split, part in (("train", ds.train), ("val", ds.test)):
        for i, (img, y) in enumerate(zip(part.images, part.labels.tolist())):
            d = root / split / f"c{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy(), "L").save(d / f"{i:05d}.png")
    return root


def build_jpeg256(root: Path, n_train: int = 2000, n_val: int = 400) -> Path:
    """Subset images upscaled to 256x256 and tinted per class, saved as RGB JPEGs (quality 90)."""
    from PIL import Image

    ds = load_dataset("fashion-mnist-mini", val_fraction=0.0)
    tint = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.4
    for split, part, n in (("train", ds.train, n_train), ("val", ds.test, n_val)):
        x = torch.nn.functional.interpolate(part.images[:n].float(), size=(256, 256), mode="bilinear",
                                            align_corners=False)
        for i, (img, y) in enumerate(zip(x, part.labels[:n].tolist())):
            rgb = (img.expand(3, -1, -1) * tint[y]).clamp(0, 255).byte().permute(1, 2, 0).numpy()
            d = root / split / f"c{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, "RGB").save(d / f"{i:05d}.jpg", quality=90)
    return root


def train_ips(args: list[str], threads: int, workdir: Path) -> dict[str, Any]:
    """One `indistill train` process: its img/s (training loop) and wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = workdir / "m.safetensors"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "indistill_cli", "train", *args, "-o", str(out), "--force", "--no-last",
                        "--json", "-q", "--seed", "0"], capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"train {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return {"images_per_sec": json.loads(p.stdout)["images_per_sec"], "wall_s": time.perf_counter() - t0}


def decode_time(folder: Path, image_size: int | None, threads: int) -> dict[str, float]:
    """Seconds to decode the folder into memory once (what --cache ram pays before training)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ds = load_dataset(f"imagefolder:{folder}", val_fraction=0.1, image_size=image_size, cache="ram")
    s = time.perf_counter() - t0
    n = len(ds.train) + len(ds.val or []) + len(ds.test)
    return {"seconds": s, "images": n, "images_per_sec": n / s}


def cases(png: Path, jpg: Path, epochs: int) -> dict[str, dict[str, list[str]]]:
    e = ["--epochs", str(epochs)]
    j = ["cnn3-w0.5", "--image-size", "128", *e]
    return {
        "png28 (10k 28x28 grayscale PNGs, cnn3)": {
            "built-in tensors": ["cnn3", "--data", "fashion-mnist-mini", *e],
            "folder, cached": ["cnn3", "--data", f"imagefolder:{png}", "--cache", "ram", *e],
            "folder, streamed": ["cnn3", "--data", f"imagefolder:{png}", "--cache", "off", *e]},
        "jpeg256 (2k 256x256 RGB JPEGs at 128, cnn3-w0.5)": {
            "built-in tensors": [*j, "--data", "synthetic:3x128x128:10:2000"],
            "folder, cached": [*j, "--data", f"imagefolder:{jpg}", "--cache", "ram"],
            "folder, streamed": [*j, "--data", f"imagefolder:{jpg}", "--cache", "off"]},
    }


def measure(table: dict[str, dict[str, list[str]]], rounds: int, threads: int, work: Path) -> dict[str, Any]:
    """Every path of every folder, interleaved round after round (order rotated each round)."""
    results: dict[str, Any] = {}
    for folder, paths in table.items():
        names = list(paths)
        runs: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:
                runs[n].append(train_ips(paths[n], threads, work)["images_per_sec"])
                print(f"{folder} | round {r + 1} | {n}: {runs[n][-1]:.0f} img/s", file=sys.stderr, flush=True)
        base = runs["built-in tensors"]
        results[folder] = {n: {"img_s": v, "median": statistics.median(v),
                               "ratio": statistics.median(a / b for a, b in zip(v, base))} for n, v in runs.items()}
    return results


def report(results: dict[str, Any], decode: dict[str, Any], args: argparse.Namespace) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = ["# Image folders: decoded once (cached) or streamed, against the built-in tensor path", "",
             f"`python benchmarks/folder_speed.py --rounds {args.rounds} --epochs {args.epochs} --threads "
             f"{args.threads}` ({time.strftime('%Y-%m-%d')}): one run, {platform.machine()} with "
             f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch thread(s) per run (the "
             f"streamed path adds its DataLoader worker process). The machine was **shared and loaded** "
             f"(load average {load:.1f} at the end), so absolute img/s are low and noisy; the ratios come from "
             f"paths run back to back in each round.", "",
             "img/s is the training loop's (`images_per_sec` of `indistill train --json`), median over rounds; "
             "ratio: median over rounds of (path / built-in in the same round).", ""]
    for folder, paths in results.items():
        lines += [f"## {folder}", "", "| path | img/s (median) | per round | x built-in |", "| --- | ---: | --- | ---: |"]
        for n, r in paths.items():
            lines.append(f"| {n} | {r['median']:.0f} | {', '.join(f'{v:.0f}' for v in r['img_s'])} | {r['ratio']:.2f} |")
        d = decode[folder]
        lines += ["", f"Decoding the folder once (`--cache ram`, before the first epoch): {d['seconds']:.1f} s for "
                      f"{d['images']:,} images ({d['images_per_sec']:.0f} img/s).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "folder-cpu.md"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="indistill-folders-") as tmp:
        work = Path(tmp)
        png, jpg = build_png28(work / "png28"), build_jpeg256(work / "jpeg256")
        table = cases(png, jpg, args.epochs)
        names = list(table)
        decode = {names[0]: decode_time(png, None, args.threads), names[1]: decode_time(jpg, 128, args.threads)}
        results = measure(table, args.rounds, args.threads, work)
    text = report(results, decode, args)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"results": results, "decode": decode}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
