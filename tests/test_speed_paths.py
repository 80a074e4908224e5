"""The fast paths: synthetic data, the epoch plan + batched augmentation, sharding, options, the benchmark.

The data path that runs on the GPU (uint8 images resident on the device, one plan per epoch, batched
crop + flip) is the same code on CPU tensors, so it is checked here against torchvision's reference
transforms pixel for pixel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from conftest import cli_env

from indistill_cli import data as D
from indistill_cli.errors import BadInput
from indistill_cli.engine.runtime import Runtime, maybe_compile, peak_memory_mb, sync_batchnorm

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# ----------------------------------------------------------------------------- synthetic data

def test_synthetic_dataset_is_deterministic_by_seed():
    a = D.load_dataset("synthetic:3x8x6:4:50", val_fraction=0.2, seed=3)
    b = D.load_dataset("synthetic:3x8x6:4:50", val_fraction=0.2, seed=3)
    c = D.load_dataset("synthetic:3x8x6:4:50", val_fraction=0.2, seed=4)
    for split in ("train", "val", "test"):
        x, y = a.split(split), b.split(split)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels), split
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (3, 8, 6)
    assert len(a.train) + len(a.val) == 50 and len(a.test) == 10  # test: max(classes, N // 5)
    assert a.info.num_classes == 4 and a.info.in_channels == 3 and a.info.image_size == (8, 6)
    assert int(a.train.labels.min()) >= 0 and int(a.train.labels.max()) < 4


@pytest.mark.parametrize("spec", ["synthetic:3x32:10:5", "synthetic:3x32x32:1:5", "synthetic:3x32x32:10:x",
                                  "synthetic:0x32x32:10:5", "synthetic:3x32x32:10"])
def test_synthetic_spec_errors_say_the_format(spec):
    with pytest.raises(BadInput, match="synthetic:CxHxW:CLASSES:N"):
        D.load_dataset(spec)


# ----------------------------------------------------------------------------- batched augmentation

def _reference(img: torch.Tensor, pad: int, oy: int, ox: int, flip: bool) -> torch.Tensor:
    """torchvision's way: zero-pad, crop at (oy, ox), flip horizontally."""
    h, w = img.shape[-2:]
    out = TF.crop(TF.pad(img, [pad]), oy, ox, h, w)
    return TF.horizontal_flip(out) if flip else out


@pytest.mark.parametrize("shape, pad", [((7, 3, 32, 32), 4), ((5, 1, 28, 28), 4), ((4, 2, 9, 13), 2),
                                        ((3, 3, 6, 6), 0)])
def test_crop_flip_equals_torchvision_crop_of_padded_image_and_hflip(shape, pad):
    g = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    n = shape[0]
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    flip[0], flip[-1] = True, False  # both cases, whatever the draw
    out = D.crop_flip(images, pad, oy, ox, flip)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(n):
        assert torch.equal(out[i], _reference(images[i], pad, int(oy[i]), int(ox[i]), bool(flip[i]))), i


def test_loader_batches_are_the_reference_transforms_of_the_planned_images():
    """TensorLoader (the device path, on CPU here): each batch = normalise(crop + flip) of the images the
    epoch's plan names, with the plan's offsets and flips, and the plan is fixed by (seed, epoch, rank)."""
    ds = D.load_dataset("synthetic:3x12x12:5:70", val_fraction=0.0, seed=1)
    loader = D.TensorLoader(ds.train, ds.info, 16, shuffle=True, augment=True, seed=5)
    loader.set_epoch(2)
    plan = loader._plan()
    assert plan.dtype == torch.int64 and plan.shape == (4, 70)
    assert sorted(plan[0].tolist()) == list(range(70))  # a permutation of the split
    assert int(plan[1:3].min()) >= 0 and int(plan[1:3].max()) <= 2 * ds.info.pad
    assert torch.equal(plan, loader._plan())
    batches = list(loader)
    assert [len(b.y) for b in batches] == [16, 16, 16, 16, 6] and len(loader) == 5
    mean = torch.tensor(ds.info.mean).view(-1, 1, 1)
    std = torch.tensor(ds.info.std).view(-1, 1, 1)
    for k, b in enumerate(batches):
        cols = range(16 * k, 16 * k + len(b.y))
        assert b.idx.tolist() == plan[0, 16 * k : 16 * k + len(b.y)].tolist()
        assert torch.equal(b.y, ds.train.labels[b.idx])
        for j, c in enumerate(cols):
            ref = _reference(ds.train.images[int(plan[0, c])], ds.info.pad, int(plan[1, c]), int(plan[2, c]),
                             bool(plan[3, c]))
            torch.testing.assert_close(b.x[j], (ref.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    loader.set_epoch(3)
    assert not torch.equal(loader._plan(), plan)  # a new epoch draws anew


def test_no_augment_no_flip_and_channel_repeat():
    ds = D.load_dataset("synthetic:1x8x8:3:20", val_fraction=0.0)
    plain = next(iter(D.TensorLoader(ds.train, ds.info, 8)))
    assert plain.idx.tolist() == list(range(8))
    torch.testing.assert_close(plain.x, (ds.train.images[:8].float() / 255 - 0.5) / 0.289)
    rgb = next(iter(D.TensorLoader(ds.train, ds.info, 8, model_channels=3)))
    assert rgb.x.shape == (8, 3, 8, 8) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])
    ds.info.flip = False  # digits: crops only
    loader = D.TensorLoader(ds.train, ds.info, 8, shuffle=True, augment=True)
    assert int(loader._plan()[3].sum()) == 0


def test_skipped_batches_resume_where_the_full_epoch_was():
    ds = D.load_dataset("synthetic:3x8x8:4:50", val_fraction=0.0)
    loader = D.TensorLoader(ds.train, ds.info, 8, shuffle=True, augment=True, seed=2)
    full = list(loader)
    loader.skip_batches(3)
    tail = list(loader)
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail):
        assert torch.equal(a.x, b.x) and torch.equal(a.idx, b.idx)
    assert len(list(loader)) == len(full)  # the skip applies once


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [37, 48])
def test_rank_shards(world, n):
    """Training shards: equal sizes (same step count on every rank), disjoint. Eval shards: cover all."""
    ds = D.load_dataset(f"synthetic:1x4x4:2:{n}", val_fraction=0.0)
    train = [D.TensorLoader(ds.train, ds.info, 5, shuffle=True, augment=True, rank=r, world=world,
                            drop_last=True) for r in range(world)]
    idx = [torch.cat([b.idx for b in ld]) for ld in train]
    assert len({len(ld) for ld in train}) == 1 and all(len(list(ld)) == len(ld) for ld in train)
    assert len({len(i) for i in idx}) == 1
    assert len(set(torch.cat(idx).tolist())) == sum(len(i) for i in idx)
    ev = [D.TensorLoader(ds.train, ds.info, 5, rank=r, world=world) for r in range(world)]
    seen = torch.cat([b.idx for ld in ev for b in ld])
    assert sorted(seen.tolist()) == list(range(n))
    assert all(len(list(ld)) == len(ld) for ld in ev)


# ----------------------------------------------------------------------------- runtime options

def test_sync_bn_and_compile_switches():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    one = Runtime(torch.device("cpu"), "fp32", False)
    assert sync_batchnorm(model, one, True) is model and isinstance(model[1], torch.nn.BatchNorm2d)  # 1 process
    two = Runtime(torch.device("cpu"), "fp32", False, rank=0, world=2)
    with pytest.raises(BadInput, match="--sync-bn needs CUDA"):
        sync_batchnorm(model, two, True)
    assert sync_batchnorm(model, two, False) is model
    assert maybe_compile(model, False) is model


def test_peak_memory_is_this_process_not_its_parent():
    """A child started from a big process must not report the parent's peak (ru_maxrss survives exec)."""
    hog = torch.ones(300 * 2**20 // 4)  # this process: +300 MB
    code = "import torch; from indistill_cli.engine.runtime import peak_memory_mb; print(peak_memory_mb(torch.device('cpu')))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=ROOT,
                       check=True)
    assert float(p.stdout) < peak_memory_mb(torch.device("cpu")) - 200
    del hog


@pytest.mark.parametrize("command", ["train", "warmup", "distill"])
def test_training_commands_offer_compile_and_sync_bn(cli, command):
    code, out, err = cli(command, "--help")
    assert code == 0 and b"--compile" in out and b"--sync-bn" in out


def test_only_rank_0_prints(cli, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    code, out, err = cli("datasets", "--json")
    assert code == 0 and out == b""
    from indistill_cli import progress

    assert progress.quiet()


# ----------------------------------------------------------------------------- the benchmark

def test_throughput_benchmark_smoke(tmp_path):
    """benchmarks/throughput.py --rounds 1 --batches 2 runs end to end (tiny batches; no timing asserted)."""
    env = cli_env(OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--rounds", "1", "--batches", "2",
                        "--batch-size", "4", "--threads", "1", "--td-workers", "0", "--json"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    engines = ["ours", "bare"] + (["torchdistill"] if not r["skipped"] else [])
    assert sorted(r["median_img_s"]) == sorted(engines)
    assert all(v > 0 for v in r["median_img_s"].values())
    assert set(r["median_ratio"]) == set(engines) - {"ours"}
    mem = r["peak_memory_mb"]
    assert all(mem[e] > mem["import_torch_rss"] > 100 for e in engines)
    assert mem["cli_distill"]["peak_memory_mb"] > 100 and mem["cli_distill"]["images_per_sec"] > 0
    assert "median of per-round ratios ours/bare" in p.stderr
    assert not os.listdir(tmp_path)  # its files live in a temporary folder
