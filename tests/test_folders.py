"""Image folders at their own size and speed: the default size is the training images' own when they share
one (said on stderr, recorded in the checkpoint), grayscale stays one channel, and a folder that fits the
memory budget is decoded once into the same uint8 tensors and loader as the built-in sets; streamed and
cached folders give the model identical evaluation inputs; decompression bombs are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, image_tree

from indistill_cli import data as D
from indistill_cli.data.folder import FolderLoader

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(root: Path, n_train: int = 120, n_val: int = 40) -> tuple[Path, D.Split]:
    """The embedded subset's first images as 28x28 grayscale PNGs (train/cN/*.png, val/cN/*.png); returns
    the folder and the source training images in the folder's order (class, then file name)."""
    from PIL import Image

    mini = D.load_dataset("fashion-mnist-mini", val_fraction=0.0)
    y = mini.train.labels[:n_train]
    test = [i for i in range(len(mini.test)) if int(mini.test.labels[i]) in set(y.tolist())][:n_val]
    for split, part, idx in (("train", mini.train, range(n_train)), ("val", mini.test, test)):
        for i in idx:
            d = root / split / f"c{int(part.labels[i])}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(part.images[i, 0].numpy(), "L").save(d / f"{i:05d}.png")
    order = torch.tensor(sorted(range(n_train), key=lambda i: (int(y[i]), i)))
    return root, D.Split(mini.train.images[:n_train][order], y[order])


def test_a_folder_of_28x28_pngs_is_served_like_the_builtin_set(tmp_path, cli):
    root, source = digits(tmp_path / "digits")
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", "--data", f"imagefolder:{root}", "--epochs", "1", "-b", "32",
                       "--val-fraction", "0", "--no-last", "-o", str(out))
    assert code == 0, err
    said = " ".join(ln.strip() for ln in err.splitlines())
    assert "all 120 training images are 28x28 grayscale; models see 28x28 images zero-padded (centred) to 32x32, " \
           "1 channel (--image-size N to change); decoded once into memory" in said, err
    code, stdout, err = cli("inspect", str(out), "--json")
    ck = json.loads(stdout)
    assert ck["spec"]["in_channels"] == 1 and ck["spec"]["input_size"] == [32, 32]
    ds = ck["info"]["dataset"]
    assert ds["source_size"] == [28, 28] and ds["image_size"] == [32, 32] and ds["in_channels"] == 1
    assert ds["folder"]["size"] == "the images' own" and ds["folder"]["cache"] == "ram"
    assert ds["folder"]["channels"] == 1 and ds["folder"]["images"] == "all 120 training images are 28x28 grayscale"
    # the cached split holds the very pixels of the built-in set, at their own size
    cached = D.load_dataset(f"imagefolder:{root}", val_fraction=0.0, cache="ram")
    assert cached.info.image_size == (32, 32) and cached.info.pad == 4 == D.load_dataset("fashion-mnist-mini").info.pad
    assert torch.equal(cached.train.images, source.images) and torch.equal(cached.train.labels, source.labels)


def test_cached_and_streamed_folders_feed_the_model_the_same_evaluation_inputs(tmp_path):
    """Both paths read files with the same function and fit them to the stored size the same way: common
    size (padded per batch), mixed sizes (resize + centre crop), an RGB file for a 1-channel model."""
    from PIL import Image

    root, _ = digits(tmp_path / "digits", 24, 8)
    some = next(d for d in sorted((root / "val").iterdir()))
    Image.new("L", (40, 30), 200).save(some / "odd.png")  # one image of another size
    Image.new("RGB", (28, 28), (250, 10, 40)).save(some / "red.png")
    for size in (None, 20):
        streamed = D.load_dataset(f"imagefolder:{root}", val_fraction=0.0, image_size=size, cache="off")
        cached = D.load_dataset(f"imagefolder:{root}", val_fraction=0.0, image_size=size, cache="ram")
        for channels in (1, 3):
            kw = {"model_channels": channels, "model_size": streamed.info.image_size}
            a = torch.cat([b.x for b in FolderLoader(streamed.test, streamed.info, 8, workers=0, **kw)])
            b = torch.cat([b.x for b in D.make_loader(cached.test, cached.info, 8, **kw)])
            assert a.shape == b.shape == (10, channels, *streamed.info.image_size)
            assert torch.allclose(a, b, atol=1e-5), (size, channels, float((a - b).abs().max()))


def test_mixed_sizes_default_to_224_and_a_folder_over_budget_streams(tmp_path, cli, monkeypatch):
    from PIL import Image

    root = image_tree(tmp_path / "imgs")  # 20x24 RGB images
    Image.new("RGB", (50, 40), (9, 9, 9)).save(root / "train" / "cat" / "big.png")
    ds = D.load_dataset(f"imagefolder:{root}", val_fraction=0.0, cache="ram")
    assert ds.info.image_size == (224, 224) and ds.info.stored_size == (224, 224) and ds.info.in_channels == 3
    assert ds.info.notes["size"] == "default 224" and "differ in size (2 sizes" in ds.info.notes["images"]
    assert isinstance(ds.train, D.Split) and ds.train.images.shape == (13, 3, 224, 224)
    monkeypatch.setattr("indistill_cli.data.folder.AUTO_BUDGET", 1000)
    code, stdout, err = cli("evaluate", _fresh_rgb(tmp_path), "--data", f"imagefolder:{root}", "--image-size", "32",
                            "--json")
    assert code == 0, err
    said = " ".join(ln.strip() for ln in err.splitlines())
    assert "streamed from disk every epoch (decoded they would take" in said and "--cache ram decodes anyway" in said
    assert json.loads(stdout)["n"] == 4


def _fresh_rgb(tmp_path: Path) -> str:
    from indistill_cli.io.history import write_model
    from indistill_cli.models import make_spec

    spec, model = make_spec("cnn3-w0.5", 3, 2, (32, 32))
    write_model(str(tmp_path / "rgb.safetensors"), model.state_dict(), spec, [], {"dataset": {"name": "x"}})
    return str(tmp_path / "rgb.safetensors")


def test_cache_options_are_checked(tmp_path, cli, monkeypatch):
    root = image_tree(tmp_path / "imgs")
    args = ("train", "cnn3-w0.5", "--data", f"imagefolder:{root}", "--epochs", "1", "-o", str(tmp_path / "m.st"))
    code, _, err = cli(*args, "--cache", "disk")
    assert_one_line_error(code, err, "--cache must be auto, ram or off, got 'disk'")
    monkeypatch.setattr("indistill_cli.data.memory.available", lambda device="cpu": 1000)
    code, _, err = cli(*args, "--cache", "ram")
    assert_one_line_error(code, err, "decoding the image folder", "more than the", "use --cache off")
    assert not (tmp_path / "m.st").exists()


def test_a_decoded_folder_must_fit_the_gpu_it_will_live_on(tmp_path, cli, monkeypatch):
    """Decoded, a folder's pixels live on the training device (TensorLoader), so on CUDA `--cache ram` checks
    the GPU's free memory too (one line naming --cache off) and `auto` streams a folder over half of it;
    on CPU the GPU is never asked. No GPU here: torch.cuda's free-memory function is faked (1 MiB free)."""
    from indistill_cli.data.folder import _cache_plan
    from indistill_cli.errors import BadInput

    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: asked.append(torch.device(d)) or (8 * 2**20, 2**36))
    gpu, mib = torch.device("cuda", 1), 2**20  # GPU 1 has 8 MiB free; the host far more
    with pytest.raises(BadInput, match=r"decoding the image folder \(12 MiB of uint8 pixels on cuda:1\) would take 12 "
                                       r"MiB, more than the 8 MiB of GPU memory free here; use --cache off"):
        _cache_plan("ram", 12 * mib, gpu)
    assert asked == [gpu]
    assert _cache_plan("ram", 6 * mib, gpu)[0] and _cache_plan("ram", 12 * mib, "cpu")[0]  # on CPU: the host only
    cached, how = _cache_plan("auto", 6 * mib, gpu)  # auto: over half the GPU's free memory, so streamed
    assert not cached and "decoded they would take 6 MiB, over the 4 MiB of --cache auto" in how
    assert _cache_plan("auto", 6 * mib, "cpu")[0] and _cache_plan("auto", 3 * mib, gpu)[0]
    assert asked == [gpu] * 4

    # through the CLI: `--device cuda` on a (faked) GPU whose free memory cannot hold the decoded folder
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    root = image_tree(tmp_path / "imgs", per_class=100)  # 200 RGB training images of 20x24: 0.3 MiB decoded
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (2**16, 80 * 2**30))
    out = tmp_path / "m.st"
    code, stdout, err = cli("train", "cnn3-w0.5", "--data", f"imagefolder:{root}", "--device", "cuda", "--cache", "ram",
                            "--epochs", "1", "-o", str(out))
    assert_one_line_error(code, err, "on cuda:0", "of GPU memory free here", "use --cache off")
    assert stdout == b"" and not out.exists()


@pytest.mark.parametrize("cache, where", [("ram", "train"), ("off", "train"), ("off", "val")])
def test_a_decompression_bomb_is_one_line(cache, where, tmp_path, cli, monkeypatch):
    """An image with more pixels than PIL accepts (here PIL's limit is lowered so a small file is one) is
    refused before it is decoded: in the header survey, the cache's decode, or a streaming worker."""
    from PIL import Image

    root = image_tree(tmp_path / "imgs")
    Image.new("L", (60, 50)).save(root / where / "dog" / "bomb.png")
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 1000)  # 20x24 images pass (480), 60x50 does not (3000 > 2000)
    out = tmp_path / "m.safetensors"
    args = ("--data", f"imagefolder:{root}", "--cache", cache, "--image-size", "32", "-q")
    if where == "train":
        code, stdout, err = cli("train", "cnn3-w0.5", *args, "--epochs", "1", "-b", "4", "-o", str(out))
    else:  # the test split is read by evaluate, streamed through DataLoader workers
        code, stdout, err = cli("evaluate", _fresh_rgb(tmp_path), *args)
    assert_one_line_error(code, err, "bomb.png: 3,000 pixels, over the 2,000 pixels one image may have",
                          "decompression bomb")
    assert stdout == b"" and not out.exists()


def test_gray_folder_for_an_rgb_model_and_rgb_folder_for_a_gray_model(tmp_path):
    root, _ = digits(tmp_path / "digits", 16, 4)
    ds = D.load_dataset(f"imagefolder:{root}", val_fraction=0.0, cache="ram")
    x = next(iter(D.make_loader(ds.train, ds.info, 4, model_channels=3, model_size=(32, 32)))).x
    assert x.shape == (4, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])  # gray repeated for a torchvision stem
    rgb = image_tree(tmp_path / "rgb")
    ds = D.load_dataset(f"imagefolder:{rgb}", val_fraction=0.0, image_size=16, cache="ram")
    assert ds.info.in_channels == 3
    x = next(iter(D.make_loader(ds.train, ds.info, 4, model_channels=1, model_size=(16, 16)))).x
    assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all()
