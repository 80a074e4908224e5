"""Datasets: the embedded subset, validation carving, batched augmentation, local copies, ImageFolder."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, image_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from indistill_cli import data as D
from indistill_cli.data import builtin
from indistill_cli.data.splits import carve_val
from indistill_cli.errors import BadInput


@pytest.fixture(scope="module")
def mini():
    return D.load_dataset("fashion-mnist-mini", val_fraction=0.0)


# ----------------------------------------------------------------------------- embedded subset

def test_fashion_mnist_mini_is_10k_2k_balanced(mini):
    assert (len(mini.train), len(mini.test)) == (10_000, 2_000) and mini.val is None
    assert mini.train.images.dtype == torch.uint8 and mini.train.images.shape == (10_000, 1, 28, 28)
    assert mini.test.images.shape == (2_000, 1, 28, 28)
    assert torch.bincount(mini.train.labels).tolist() == [1000] * 10
    assert torch.bincount(mini.test.labels).tolist() == [200] * 10
    assert mini.info.num_classes == 10 and mini.info.in_channels == 1 and mini.info.image_size == (32, 32) and mini.info.stored_size == (28, 28)
    assert mini.info.classes[0] == "T-shirt/top" and mini.info.classes[9] == "Ankle boot"
    # real Fashion-MNIST pixels, not noise: the mean matches the normalisation constant
    assert float(mini.train.images.float().mean() / 255) == pytest.approx(mini.info.mean[0], abs=0.01)
    assert not torch.equal(mini.train.images[0], mini.train.images[1])


def test_val_split_is_carved_deterministically(mini):
    # images replaced by their own index, so which images went where is visible
    n = len(mini.train)
    tagged = D.Split(torch.arange(n), mini.train.labels.clone(), "train")
    torch.manual_seed(123)
    tr1, va1 = carve_val(tagged, 0.1)
    torch.manual_seed(456)  # the global seed must not matter: every run selects on the same images
    tr2, va2 = carve_val(tagged, 0.1)
    assert torch.equal(va1.images, va2.images) and torch.equal(tr1.images, tr2.images)
    assert (len(tr1), len(va1)) == (9_000, 1_000)
    assert torch.bincount(va1.labels).tolist() == [100] * 10  # per class
    assert set(va1.images.tolist()).isdisjoint(tr1.images.tolist())
    assert sorted(va1.images.tolist() + tr1.images.tolist()) == list(range(n))
    assert torch.equal(va1.labels, mini.train.labels[va1.images])
    # and the dataset loader uses exactly that carving
    ds = D.load_dataset("fashion-mnist-mini", val_fraction=0.1)
    assert torch.equal(ds.val.images, mini.train.images[va1.images])
    assert torch.equal(ds.train.images, mini.train.images[tr1.images])
    assert torch.equal(ds.test.images, mini.test.images)


def test_val_fraction_bounds(cli, tmp_path):
    with pytest.raises(BadInput, match="--val-fraction"):
        D.load_dataset("fashion-mnist-mini", val_fraction=1.0)
    ds = D.load_dataset("fashion-mnist-mini", val_fraction=0.0)
    with pytest.raises(BadInput, match="validation split needs --val-fraction > 0"):
        ds.split("val")
    with pytest.raises(BadInput, match="unknown split 'dev'"):
        ds.split("dev")
    code, _, err = cli("train", "cnn3", "--val-fraction", "1.5", "-o", str(tmp_path / "m.safetensors"))
    assert_one_line_error(code, err, "--val-fraction must be in [0, 1), got 1.5")


# ----------------------------------------------------------------------------- batched augmentation

def reference_crop_flip(images, pad, oy, ox, flip):
    out = []
    h, w = images.shape[-2:]
    for i in range(images.shape[0]):
        p = F.pad(images[i], (pad, pad, pad, pad))
        crop = p[:, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out.append(torch.flip(crop, dims=[-1]) if flip[i] else crop)
    return torch.stack(out)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.sampled_from([1, 3]), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_crop_flip_equals_per_image_reference(n, c, h, w, pad, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    got = D.crop_flip(images, pad, oy, ox, flip)
    assert got.dtype == torch.uint8 and got.shape == images.shape
    assert torch.equal(got, reference_crop_flip(images, pad, oy.tolist(), ox.tolist(), flip.tolist()))


def test_crop_flip_identity_and_pure_flip():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    zeros = torch.zeros(2, dtype=torch.long)
    assert torch.equal(D.crop_flip(x, 2, zeros + 2, zeros + 2, torch.tensor([False, False])), x)
    assert torch.equal(D.crop_flip(x, 2, zeros + 2, zeros + 2, torch.tensor([True, True])), x.flip(-1))
    shifted = D.crop_flip(x, 2, zeros, zeros, torch.tensor([False, False]))  # 2 px of zero padding top-left
    assert shifted[:, :, :2].eq(0).all() and shifted[:, :, :, :2].eq(0).all()
    assert torch.equal(shifted[:, :, 2:, 2:], x[:, :, :2, :3])


def test_loader_shuffles_per_epoch_and_repeats_by_seed(mini):
    split = D.Split(mini.test.images[:1000], mini.test.labels[:1000])
    kw = dict(shuffle=True, augment=True, seed=3)

    def epoch(loader, e):
        loader.set_epoch(e)
        batches = list(loader)
        return torch.cat([b.idx for b in batches]), torch.cat([b.x for b in batches])

    a = D.TensorLoader(split, mini.info, 300, **kw)
    b = D.TensorLoader(split, mini.info, 300, **kw)
    idx0, x0 = epoch(a, 0)
    assert sorted(idx0.tolist()) == list(range(len(split)))  # every image once, last batch kept
    assert len(a) == 4 and x0.shape == (1000, 1, 32, 32) and x0.dtype == torch.float32
    idx0b, x0b = epoch(b, 0)
    assert torch.equal(idx0, idx0b) and torch.equal(x0, x0b)  # same seed + epoch: bitwise the same
    idx1, _ = epoch(a, 1)
    assert not torch.equal(idx0, idx1)
    c = D.TensorLoader(split, mini.info, 300, shuffle=True, augment=True, seed=4)
    assert not torch.equal(idx0, epoch(c, 0)[0])
    dropped = D.TensorLoader(split, mini.info, 300, shuffle=True, drop_last=True)
    assert len(dropped) == 3 and sum(len(bt.y) for bt in dropped) == 900


def test_loader_normalises_repeats_gray_and_pads(mini):
    split = D.Split(mini.test.images[:4], mini.test.labels[:4])
    plain = next(iter(D.TensorLoader(split, mini.info, 4, model_size=(28, 28))))
    expect = (split.images.float() / 255 - mini.info.mean[0]) / mini.info.std[0]
    assert torch.allclose(plain.x, expect, atol=1e-5)
    served = next(iter(D.TensorLoader(split, mini.info, 4)))  # at the served 32x32, black border
    assert served.x.shape == (4, 1, 32, 32) and torch.allclose(served.x[..., 2:30, 2:30], expect, atol=1e-5)
    assert torch.allclose(served.x[..., :2, :], torch.full((4, 1, 2, 32), -mini.info.mean[0] / mini.info.std[0]))
    assert torch.equal(plain.y, split.labels)
    rgb = next(iter(D.TensorLoader(split, mini.info, 4, model_channels=3, model_size=(32, 32))))
    assert rgb.x.shape == (4, 3, 32, 32)
    assert torch.equal(rgb.x[:, 0], rgb.x[:, 1]) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])
    assert torch.allclose(rgb.x[:, :, 2:30, 2:30], expect.expand(-1, 3, -1, -1), atol=1e-5)  # centred
    rgb_data = D.load_dataset("synthetic:3x8x8:4:10", val_fraction=0.0)
    with pytest.raises(BadInput, match="takes 1-channel input but synthetic:3x8x8:4:10 has 3 channels"):
        D.TensorLoader(rgb_data.train, rgb_data.info, 4, model_channels=1)


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_by_seed():
    a = D.load_dataset("synthetic:3x8x8:4:100", val_fraction=0.0, seed=0)
    b = D.load_dataset("synthetic:3x8x8:4:100", val_fraction=0.0, seed=0)
    c = D.load_dataset("synthetic:3x8x8:4:100", val_fraction=0.0, seed=1)
    assert a.train.images.shape == (100, 3, 8, 8) and len(a.test) == 20
    assert a.info.num_classes == 4 and a.info.in_channels == 3 and a.info.image_size == (8, 8)
    assert int(a.train.labels.min()) >= 0 and int(a.train.labels.max()) <= 3
    for s in ("train", "test"):
        assert torch.equal(a.split(s).images, b.split(s).images) and torch.equal(a.split(s).labels, b.split(s).labels)
        assert not torch.equal(a.split(s).images, c.split(s).images)
    assert not torch.equal(a.train.labels, c.train.labels)
    v = D.load_dataset("synthetic:3x8x8:4:100", val_fraction=0.2, seed=0)
    assert len(v.train) + len(v.val) == 100


@pytest.mark.parametrize("spec", ["synthetic:3x8:4:100", "synthetic:3x8x8:1:100", "synthetic:3x8x8:4", "synthetic:axbxc:4:9"])
def test_synthetic_spec_errors(spec):
    with pytest.raises(BadInput, match="expected synthetic:CxHxW:CLASSES:N"):
        D.load_dataset(spec)


# ----------------------------------------------------------------------------- local copies

def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim
    raw = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def make_idx_dir(d: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) * 3) % 10}
    for name, a in arrays.items():
        write_idx(d / name, a)
    return arrays


def test_idx_copy_in_data_root_is_found(tmp_path, trained_cnn3, cli):
    arrays = make_idx_dir(tmp_path / "fashion-mnist")
    assert D.locate("fashion-mnist", tmp_path) == tmp_path / "fashion-mnist"  # before any system copy
    ds = D.load_dataset("fashion-mnist", val_fraction=0.0, root=tmp_path, download=False)
    assert ds.source == str(tmp_path / "fashion-mnist")
    assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(ds.train.labels.numpy(), arrays["train-labels-idx1-ubyte.gz"])
    assert np.array_equal(ds.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])
    assert ds.info.num_classes == 10 and ds.info.classes[1] == "Trouser"
    # the CLI's --data-root reaches the same copy (10 test images here, not the system's 10,000)
    code, out, err = cli("evaluate", str(trained_cnn3.path), "--data", "fashion-mnist", "--data-root", str(tmp_path),
                         "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 10


def test_idx_in_system_dir_is_found(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "system" / "MNIST" / "raw")
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", [tmp_path / "system"])
    ds = D.load_dataset("mnist", val_fraction=0.0, root=tmp_path / "empty", download=False)
    assert ds.source == str(tmp_path / "system" / "MNIST" / "raw") and len(ds.train) == 20
    assert ds.info.flip is False  # digits are not mirror-symmetric


def test_corrupt_idx_is_bad_input(tmp_path):
    make_idx_dir(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03junk"))
    with pytest.raises(BadInput, match="train-images-idx3-ubyte.gz: not a valid IDX file"):
        D.load_dataset("fashion-mnist", root=tmp_path, download=False)
    make_idx_dir(tmp_path / "mnist", n_train=20)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(BadInput, match="train images and labels differ in count"):
        D.load_dataset("mnist", root=tmp_path, download=False)


def cifar_pixels(n: int, offset: int) -> np.ndarray:
    """Rows of 3072 bytes: R plane, G plane, B plane, each 32x32 row-major; values encode position."""
    planes = np.stack([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)])
    rows = [(planes + (i + offset)).reshape(-1) for i in range(n)]
    rows = np.stack(rows)
    rows[:, 5] = 200  # R plane, row 0, col 5
    return rows.astype(np.uint8)


def test_cifar10_batches_are_read(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": cifar_pixels(3, 10 * i), "labels": [i, (i + 1) % 10, 0]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": cifar_pixels(2, 100), "labels": [7, 8]}, f)
    ds = D.load_dataset("cifar10", val_fraction=0.0, root=tmp_path, download=False)
    assert ds.source == str(d) and (len(ds.train), len(ds.test)) == (15, 2)
    x = ds.train.images
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8
    assert int(x[0, 0, 1, 1]) == 20 and int(x[0, 1, 1, 1]) == 30 and int(x[0, 2, 1, 1]) == 40
    assert int(x[0, 0, 0, 5]) == 200 and int(x[0, 1, 0, 5]) == 30
    assert ds.train.labels.tolist()[:3] == [1, 2, 0] and ds.test.labels.tolist() == [7, 8]
    assert ds.info.num_classes == 10 and ds.info.classes == [str(i) for i in range(10)]


def test_cifar100_files_are_read(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    with open(d / "train", "wb") as f:
        pickle.dump({"data": cifar_pixels(4, 0), "fine_labels": [99, 0, 5, 5], "coarse_labels": [1, 2, 3, 4]}, f)
    with open(d / "test", "wb") as f:
        pickle.dump({"data": cifar_pixels(2, 0), "fine_labels": [1, 2]}, f)
    ds = D.load_dataset("cifar100", val_fraction=0.0, root=tmp_path, download=False)
    assert ds.train.labels.tolist() == [99, 0, 5, 5] and ds.info.num_classes == 100


def test_broken_cifar_batch_is_bad_input(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(BadInput, match="data_batch_1: not a readable CIFAR batch"):
        D.load_dataset("cifar10", root=tmp_path, download=False)


def test_dataset_not_found_offline_names_where_it_looked(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    # a dead proxy makes any download attempt fail at once, with or without network
    dead = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    code, out, err = run_cli("train", "cnn3", "--data", "mnist", "--data-root", str(empty), "-o",
                             str(tmp_path / "m.safetensors"), env=dead, timeout=120)
    line = assert_one_line_error(code, err, "dataset 'mnist' not found locally", "looked in:",
                                 str(empty / "mnist"), str(empty / "MNIST" / "raw"), "/usr/share/datasets/mnist",
                                 "--data-root")
    assert out == b"" and not (tmp_path / "m.safetensors").exists()
    assert line


@pytest.mark.parametrize("name, hint", [("fashion-mnst", "did you mean 'fashion-mnist'"),
                                        ("cifar-10", "did you mean 'cifar10'"),
                                        ("imagenet", "known: fashion-mnist-mini")])
def test_unknown_dataset_name(name, hint, cli, tmp_path):
    code, _, err = cli("train", "cnn3", "--data", name, "-o", str(tmp_path / "m.safetensors"))
    assert_one_line_error(code, err, f"unknown dataset '{name}'", hint)


def test_datasets_command_lists_builtins(cli):
    code, out, err = cli("datasets", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"fashion-mnist-mini", "fashion-mnist", "mnist", "cifar10", "cifar100"} <= set(rows)
    assert rows["fashion-mnist-mini"]["available"] is True


# ----------------------------------------------------------------------------- ImageFolder

def make_image_tree(root: Path, per_class: int = 6, val_per_class: int = 2) -> None:
    image_tree(root, per_class, val_per_class)
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "train" / "cat" / "notes.txt").write_text("not an image extension: ignored")


def test_imagefolder_loader_skips_corrupt_images(tmp_path):
    from indistill_cli.data.folder import FolderLoader, scan

    make_image_tree(tmp_path)
    ds = D.load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.0, image_size=16)
    assert ds.info.classes == ["cat", "dog"] and ds.info.in_channels == 3 and ds.info.image_size == (16, 16)
    assert len(ds.train) == 13 and len(ds.test) == 4  # the broken .png is listed, the .txt is not
    loader = FolderLoader(ds.train, ds.info, 4, workers=0)
    batches = list(loader)
    assert loader.skipped == 1 and sum(len(b.y) for b in batches) == 12
    assert all(b.x.shape[1:] == (3, 16, 16) and b.x.dtype == torch.float32 for b in batches)
    labels = torch.cat([b.y for b in batches])
    assert torch.bincount(labels).tolist() == [6, 6]
    # evaluation path: resize + centre crop, deterministic
    ev = [b.x for b in FolderLoader(ds.test, ds.info, 4, workers=0)]
    assert torch.equal(torch.cat(ev), torch.cat([b.x for b in FolderLoader(ds.test, ds.info, 4, workers=0)]))
    assert float(ev[0][:2].mean()) < float(ev[0][2:].mean())  # cats dark, dogs bright
    with pytest.raises(BadInput, match="class folders"):
        scan(tmp_path / "train", ["cat"])


def test_imagefolder_trains_one_epoch_via_cli(tmp_path, run_cli):
    make_image_tree(tmp_path / "imgs")
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_cli("train", "cnn3-w0.5", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--image-size",
                                "32", "--epochs", "1", "--batch-size", "4", "--no-last", "-o", out, "--json")
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(stdout)
    assert summary["best_epoch"] == 1 and 0.0 <= summary["val_top1"] <= 1.0
    from indistill_cli.io.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    assert ck.spec.in_channels == 3 and ck.spec.input_size == (32, 32) and ck.spec.num_classes == 2
    assert ck.info["dataset"]["classes"] == ["cat", "dog"]
    assert ck.history[0]["data"] == f"imagefolder:{tmp_path / 'imgs'}"


@pytest.mark.parametrize("layout, needle", [("none", "folder not found"), ("no-val", "needs a val/ or test/ folder"),
                                            ("empty-class", "no images found")])
def test_imagefolder_layout_errors(tmp_path, layout, needle):
    root = tmp_path / "imgs"
    if layout != "none":
        (root / "train" / "a").mkdir(parents=True)
        if layout == "no-val":
            from PIL import Image

            Image.new("RGB", (4, 4)).save(root / "train" / "a" / "x.png")
    if layout == "empty-class":
        (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(BadInput, match=needle):
        D.load_dataset(f"imagefolder:{root}")


# ----------------------------------------------------------------------------- torchrun shards

@pytest.mark.parametrize("shuffle, drop_last", [(True, True), (True, False), (False, False)])
def test_both_loaders_shard_an_odd_split_the_same_way(tmp_path, shuffle, drop_last):
    """One sharding rule for both loaders: training shards are equal on every rank (so DDP's ranks run the
    same steps), evaluation shards cover every image once."""
    from indistill_cli.data.folder import FolderLoader

    image_tree(tmp_path, per_class=(4, 3), val_per_class=1)  # 7 training images
    ds = D.load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.0, image_size=16)
    tensors = D.Split(torch.zeros(7, 3, 16, 16, dtype=torch.uint8), torch.arange(7))
    for make in (lambda r: FolderLoader(ds.train, ds.info, 2, shuffle=shuffle, drop_last=drop_last, rank=r, world=2,
                                        workers=0),
                 lambda r: D.TensorLoader(tensors, ds.info, 2, shuffle=shuffle, drop_last=drop_last, rank=r, world=2)):
        ranks = [make(0), make(1)]
        seen = [torch.cat([b.idx for b in loader]) for loader in ranks]
        assert [len(loader) for loader in ranks] == [len(list(loader)) for loader in ranks]
        if shuffle:  # training: the same number of steps on both ranks, no image twice
            assert len(ranks[0]) == len(ranks[1]) and len(seen[0]) == len(seen[1])
            assert not set(seen[0].tolist()) & set(seen[1].tolist())
        else:  # evaluation: every image exactly once
            assert sorted(torch.cat(seen).tolist()) == list(range(7))
