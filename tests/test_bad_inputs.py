"""Hostile and wrong inputs: one clear line on stderr, exit 2 (1 for failures while running), no output.

Complements test_checkpoint.py (corruptions through `inspect`/`evaluate`, spec/weight disagreements,
data of another shape), test_prune.py (prune's own errors) and test_data.py (dataset loading): here
every section boundary of a checkpoint, forged metadata, checkpoints of the wrong kind or task given to
each training command, bad options of every training command, and ImageFolder trees that are missing,
empty, corrupt or mixed grayscale/RGB/RGBA/palette.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

from indistill_cli.io import checkpoint as C
from indistill_cli.errors import BadInput

MINI = ("--data", "fashion-mnist-mini", "--val-fraction", "0.05")
SYN = ("--data", "synthetic:1x28x28:10:40", "--val-fraction", "0.1")


pytestmark = pytest.mark.usefixtures("one_thread")


def _fresh(path: Path, arch: str, classes: int = 10, channels: int = 1, size: int = 28, seed: int = 0) -> Path:
    """An untrained model checkpoint (error paths need a valid file, not a good model)."""
    from indistill_cli.io.history import write_model
    from indistill_cli.models import DataShape, create_model

    torch.manual_seed(seed)
    spec, model = create_model(arch, DataShape(channels, classes, (size, size), [0.5] * channels, [0.25] * channels))
    write_model(str(path), {k: v.detach() for k, v in model.state_dict().items()}, spec, [],
                {"dataset": {"name": "fashion-mnist-mini"}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A teacher, a student, their pruned teacher, an embeddings file and a model for 5 classes."""
    from typer.testing import CliRunner

    from indistill_cli.cli import app

    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"teacher": _fresh(d / "teacher.safetensors", "cnn3", size=32),  # the embedded set's size: runs with MINI
         "student": _fresh(d / "student.safetensors", "cnn3-w0.5"),
         "five": _fresh(d / "five.safetensors", "cnn3-w0.5", classes=5)}
    f["pruned"] = d / "pruned.safetensors"
    r = CliRunner().invoke(app, ["prune", str(f["teacher"]), "--like", "cnn3-w0.5", "-o", str(f["pruned"]), *MINI,
                                 "-q"])
    assert r.exit_code == 0, r.output
    f["embeddings"] = d / "emb.safetensors"
    r = CliRunner().invoke(app, ["retrieve", str(f["student"]), "--data", "synthetic:1x28x28:10:40", "--export",
                                 str(f["embeddings"]), "-q"])
    assert r.exit_code == 0, r.output
    return f


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if a command loads its dataset: the error must come before that."""
    def boom(*a, **k):
        raise AssertionError("the dataset was loaded before the bad input was noticed")

    monkeypatch.setattr("indistill_cli.stages.session.load_dataset", boom)


# ----------------------------------------------------------------------------- checkpoint bytes

def _boundaries(data: bytes) -> list[int]:
    """Every section boundary: inside the length, after it, inside/after the header, each tensor's ends."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    cuts = {0, 1, 4, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n}
    for name, e in header.items():
        if name != "__metadata__":
            lo, hi = e["data_offsets"]
            cuts |= {8 + n + lo, 8 + n + hi, 8 + n + (lo + hi) // 2}
    return sorted(c for c in cuts if c < len(data))


def test_truncated_at_every_section_boundary_is_bad_input(files):
    data = files["student"].read_bytes()
    cuts = _boundaries(data)
    assert len(cuts) > 40  # 8 framing cuts + 3 per tensor
    for cut in cuts:
        with pytest.raises(BadInput, match=r"^cut\.safetensors: (not a safetensors checkpoint|truncated checkpoint)"):
            C.from_bytes(data[:cut], "cut.safetensors")


@pytest.mark.parametrize("where", ["after-length", "end-of-header", "mid-tensor", "last-tensor-start"])
def test_truncated_file_through_the_cli(where, files, tmp_path, cli):
    data = files["student"].read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    last = max((e["data_offsets"] for k, e in header.items() if k != "__metadata__"), key=lambda o: o[0])
    cut = {"after-length": 8, "end-of-header": 8 + n, "mid-tensor": 8 + n + 1001, "last-tensor-start": 8 + n + last[0]}
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: cut[where]])
    out = tmp_path / "o.safetensors"
    code, stdout, err = cli("distill", "-t", str(files["teacher"]), "-s", str(bad), "-m", "kd", "-o", str(out), *MINI)
    assert_one_line_error(code, err, str(bad), "truncated checkpoint")
    assert not out.exists() and stdout == b""


def test_declared_header_larger_than_file_or_limit(files):
    data = files["student"].read_bytes()
    for n, needle in ((C.MAX_HEADER + 1, "implausible"), (C.MAX_HEADER, "truncated checkpoint (header needs"),
                      (2**64 - 1, "implausible"), (len(data), "truncated checkpoint (header needs")):
        with pytest.raises(BadInput, match=needle.replace("(", r"\(")):
            C.from_bytes(struct.pack("<Q", n) + data[8:])


def _forge(data: bytes, edit) -> bytes:
    """Edit the metadata and keep the old checksum (what a hand edit of the file does)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


FORGERIES = {
    "history-added-stage": lambda m: m.update(history=json.dumps([{"stage": "train", "metrics": {"top1": 0.99}}])),
    "info-dataset-renamed": lambda m: m.update(info=json.dumps({"dataset": {"name": "cifar10"}})),
    "role-promoted": lambda m: m.update(role="pruned-teacher"),
    "checksum-replaced": lambda m: m.update(checksum="0" * 64),
    "checksum-removed": lambda m: m.pop("checksum"),
    "extra-metadata-key": lambda m: m.update(note="hello"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_edited_metadata_is_caught_by_the_checksum(case, files, tmp_path, cli):
    bad = tmp_path / "forged.safetensors"
    bad.write_bytes(_forge(files["student"].read_bytes(), FORGERIES[case]))
    code, out, err = cli("inspect", str(bad))
    assert_one_line_error(code, err, str(bad), "checksum mismatch")


def test_tensor_dtype_and_shape_contradicting_the_header(files):
    """The header says one thing about a tensor, its bytes another (size mismatch): corrupt, not a crash."""
    data = files["student"].read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k, e in header.items() if k != "__metadata__" and e["dtype"] == "F32" and len(e["shape"]) == 4)
    for edit in ({"dtype": "F16"}, {"dtype": "I64"}, {"shape": [1, 2, 3, 4]}, {"shape": [2**40, 2**40]},
                 {"shape": [-1]}, {"dtype": "Q4"}):
        h = json.loads(json.dumps(header))
        h[name].update(edit)
        raw = json.dumps(h).encode()
        raw += b" " * (-len(raw) % 8)
        with pytest.raises(BadInput, match="corrupt checkpoint|checksum mismatch"):
            C.from_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :], "x")


# ----------------------------------------------------------------------------- the wrong checkpoint

def test_pruned_teacher_given_as_a_student(files, tmp_path, cli):
    out = tmp_path / "o.safetensors"
    p = str(files["pruned"])
    for args in (("warmup", "-t", p, "-s", p), ("distill", "-t", str(files["teacher"]), "-s", p, "-m", "kd")):
        code, stdout, err = cli(*args, "-o", str(out), *MINI)
        assert_one_line_error(code, err, p, "is a pruned-teacher checkpoint (from `indistill prune`), not a student",
                              "warmup --teacher")
    code, _, err = cli("train", p, "-o", str(out), *MINI)
    assert_one_line_error(code, err, "is a pruned-teacher checkpoint")
    assert not out.exists()


def test_embeddings_file_given_as_a_model(files, tmp_path, cli):
    out = tmp_path / "o.safetensors"
    e = str(files["embeddings"])
    cases = [("evaluate", e, *SYN), ("train", e, "-o", str(out), *SYN),
             ("distill", "-t", e, "-s", "cnn3-w0.5", "-m", "kd", "-o", str(out), *SYN),
             ("distill", "-t", str(files["teacher"]), "-s", e, "-m", "kd", "-o", str(out), *SYN),
             ("warmup", "-t", e, "-s", "cnn3-w0.5", "-o", str(out), *SYN),
             ("retrieve", e, *SYN)]
    for args in cases:
        code, stdout, err = cli(*args)
        assert_one_line_error(code, err, e, "embeddings")
        assert stdout == b""
    assert not out.exists()


def test_checkpoint_of_another_task_in_each_training_command(files, tmp_path, cli):
    out = tmp_path / "o.safetensors"
    five = str(files["five"])
    needle = "has 5 classes but fashion-mnist-mini has 10"
    for args in (("train", five), ("distill", "-t", str(files["teacher"]), "-s", five, "-m", "kd"),
                 ("distill", "-t", five, "-s", "cnn3-w0.5", "-m", "kd"), ("warmup", "-t", five, "-s", "cnn3-w0.5")):
        code, _, err = cli(*args, "-o", str(out), *MINI)
        assert_one_line_error(code, err, five, needle)
    assert not out.exists()


# ----------------------------------------------------------------------------- options

OPTION_CASES = {
    "train-negative-epochs": (["train", "cnn3-w0.5", "--epochs", "-3"], "--epochs must be at least 1, got -3"),
    "train-negative-batch": (["train", "cnn3-w0.5", "--batch-size", "-2"], "--batch-size must be at least 1, got -2"),
    "distill-zero-epochs": (["distill", "-t", "{teacher}", "-s", "cnn3-w0.5", "-m", "kd", "--epochs", "0"],
                            "--epochs must be at least 1, got 0"),
    "distill-zero-batch": (["distill", "-t", "{teacher}", "-s", "cnn3-w0.5", "-m", "kd", "-b", "0"],
                           "--batch-size must be at least 1, got 0"),
    "warmup-zero-batch": (["warmup", "-t", "{pruned}", "-s", "cnn3-w0.5", "-b", "0"],
                          "--batch-size must be at least 1, got 0"),
    "prune-negative-finetune": (["prune", "{teacher}", "--like", "cnn3-w0.5", "--mode", "chained", "--finetune", "-1"],
                                "--finetune must be >= 0 epochs, got -1"),
    "unknown-method": (["distill", "-t", "{teacher}", "-s", "cnn3-w0.5", "-m", "pkd"], "did you mean"),
    "unknown-criterion": (["prune", "{teacher}", "--like", "cnn3-w0.5", "--criterion", "bn_scale"],
                          "did you mean 'bn-scale'"),
    "unknown-optimizer": (["train", "cnn3-w0.5", "--optimizer", "adamm"], "--optimizer must be sgd, adam or adamw"),
    "distill-negative-ce": (["distill", "-t", "{teacher}", "-s", "cnn3-w0.5", "-m", "kd", "--ce", "-1"],
                            "--ce must be a finite number >= 0, got -1"),
    "skip-nonfinite-negative": (["train", "cnn3-w0.5", "--skip-nonfinite", "-2"], "--skip-nonfinite must be >= 0"),
}


# checked after the dataset is known (a name is resolved against its channels and classes)
LATE_CASES = {
    "warmup-negative-tap-epochs": (["warmup", "-t", "{pruned}", "-s", "cnn3-w0.5", "--epochs-per-tap", "1,-1,1"],
                                   "epochs"),
    "unknown-arch-train": (["train", "resnet21"], "unknown architecture 'resnet21' (did you mean 'resnet20'?)"),
    "unknown-arch-student": (["distill", "-t", "{teacher}", "-s", "cnn4-w0.5", "-m", "kd"],
                             "unknown architecture 'cnn4' (did you mean 'cnn3'?)"),
}


@pytest.mark.parametrize("case", sorted(LATE_CASES))
def test_bad_names_are_one_line(case, files, tmp_path, cli):
    args, needle = LATE_CASES[case]
    out = tmp_path / "o.safetensors"
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    code, stdout, err = cli(*args, "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle)
    assert stdout == b"" and not out.exists()


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option_is_one_line_before_the_data_is_loaded(case, files, tmp_path, cli, no_data):
    args, needle = OPTION_CASES[case]
    out = tmp_path / "o.safetensors"
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    code, stdout, err = cli(*args, "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle)
    assert stdout == b"" and not out.exists()


# hyper-parameters and weights out of their declared ranges (issue 19): each of these once trained first and
# failed later (or never): a negative temperature trained to exit 0, T = 0 and weight nan stopped at step 1
# as "non-finite loss ... try a lower --lr", weight -1 diverged after 14 steps
HPARAM_CASES = {
    "kd-negative-temperature": (["-m", "kd", "--param", "kd.temperature=-4"],
                                "--param kd.temperature=-4: out of range, temperature must be a finite number > 0"),
    "kd-zero-temperature": (["-m", "kd", "--param", "kd.temperature=0"], "--param kd.temperature=0: out of range"),
    "kd-nan-weight": (["-m", "kd:nan"], "--method kd:nan: the weight must be a finite number >= 0, got nan"),
    "kd-negative-weight": (["-m", "kd:-1"], "--method kd:-1: the weight must be a finite number >= 0, got -1"),
    "pkt-infinite-weight": (["-m", "pkt:inf"], "--method pkt:inf: the weight must be a finite number >= 0"),
    "ce-nan": (["-m", "kd", "--ce", "nan"], "--ce must be a finite number >= 0, got nan"),
    "ctkd-switch": (["-m", "kd", "--param", "kd.learnable_temperature=2"], "must be an integer in [0, 1]"),
    "ctkd-start": (["-m", "kd", "--param", "kd.t_start=0"], "t_start must be a finite number > 0"),
    "dkd-warmup": (["-m", "dkd", "--param", "dkd.warmup=-1"], "--param dkd.warmup=-1: out of range"),
    "dkd-ls-beta": (["-m", "dkd-ls", "--param", "dkd-ls.beta=-72"], "beta must be a finite number >= 0"),
    "dist-tau": (["-m", "dist", "--param", "dist.tau=0"], "tau must be a finite number > 0"),
    "mlkd-temperature": (["-m", "mlkd", "--param", "mlkd.temperature=inf"], "--param mlkd.temperature=inf"),
    "cc-order": (["-m", "cc", "--param", "cc.order=0"], "order must be an integer >= 1"),
    "rkd-weight": (["-m", "rkd", "--param", "rkd.distance_weight=-25"], "distance_weight must be a finite number >= 0"),
    "crd-size": (["-m", "crd", "--param", "crd.feat_dim=0.5"], "--param crd.feat_dim=0.5: out of range"),
    "at-p": (["-m", "at", "--param", "at.p=0"], "p must be a finite number > 0"),
    "nst-degree": (["-m", "nst", "--param", "nst.degree=1.5"], "degree must be an integer >= 1"),
    "kdsvd-k": (["-m", "kdsvd", "--param", "kdsvd.k=0"], "k must be an integer >= 1"),
    "vid-variance": (["-m", "vid", "--param", "vid.init_var=1e-6"], "--param vid.init_var=1e-06: must be > eps"),
    "ft-rate": (["-m", "ft", "--param", "ft.rate=-0.5"], "rate must be a finite number > 0"),
    "ab-phase": (["-m", "ab", "--param", "ab.init_epochs=-1"], "init_epochs must be an integer >= 0"),
    "fsp-phase": (["-m", "fsp", "--param", "fsp.init_epochs=0.5"], "init_epochs must be an integer >= 0"),
    "reviewkd-warmup": (["-m", "reviewkd", "--param", "reviewkd.warmup=nan"], "--param reviewkd.warmup=nan"),
    "unknown-hparam": (["-m", "kd", "--param", "kd.temp=2"], "unknown hyper-parameter of kd (valid: temperature"),
}


@pytest.mark.parametrize("case", sorted(HPARAM_CASES))
def test_hyper_parameter_out_of_range_is_one_line_before_the_data_is_loaded(case, files, tmp_path, cli, no_data):
    args, needle = HPARAM_CASES[case]
    out = tmp_path / "o.safetensors"
    code, stdout, err = cli("distill", "-t", str(files["teacher"]), "-s", "cnn3-w0.5", *args, "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle)
    assert stdout == b"" and not out.exists()


@pytest.mark.parametrize("case", ["kd-negative-temperature", "kd-negative-weight", "ce-nan", "vid-variance"])
def test_pipeline_refuses_a_hyper_parameter_before_training_its_teacher(case, tmp_path, cli, no_data):
    args, needle = HPARAM_CASES[case]
    out = tmp_path / "run"
    code, stdout, err = cli("pipeline", "-t", "cnn3", "-s", "cnn3-w0.5", *args, "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle)
    assert stdout == b"" and not out.exists()


TAP_CASES = {
    "distill-tap-teacher": (["--tap", "block9:block1", "-m", "fitnet"], "unknown teacher tap 'block9'"),
    "distill-tap-student": (["--tap", "block1:blok1", "-m", "at"],
                            "unknown student tap 'blok1' (did you mean 'block1'?)"),
    "distill-tap-malformed": (["--tap", "block1", "-m", "fitnet"], "--tap expects TEACHER_TAP:STUDENT_TAP"),
    "distill-embedding-tap": (["--embedding-tap", "fc9:embedding", "-m", "pkt"], "fc9"),
}


@pytest.mark.parametrize("case", sorted(TAP_CASES))
def test_taps_that_do_not_exist(case, files, tmp_path, cli):
    extra, needle = TAP_CASES[case]
    out = tmp_path / "o.safetensors"
    code, _, err = cli("distill", "-t", str(files["teacher"]), "-s", "cnn3-w0.5", *extra, "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("pair, needle", [("block1:blok2", "unknown student tap 'blok2' (did you mean 'block2'?)"),
                                          ("block1", "--pair expects TEACHER_TAP:STUDENT_TAP"),
                                          ("block1:block1", None)])
def test_pair_naming_wrong_taps(pair, needle, files, tmp_path, cli):
    out = tmp_path / "o.safetensors"
    code, _, err = cli("prune", str(files["teacher"]), "--like", "cnn3-w0.5", "--pair", pair, "--pair",
                       "block1:block2" if needle is None else "block2:block2", "-o", str(out), *MINI)
    assert_one_line_error(code, err, needle or "--pair: teacher tap 'block1' is paired more than once")
    assert not out.exists()


def test_retrieve_tap_that_does_not_exist(files, cli):
    code, _, err = cli("retrieve", str(files["student"]), "--tap", "blockk2", *SYN)
    assert_one_line_error(code, err, "blockk2", "did you mean 'block2'")


def test_existing_outputs_need_force_in_every_command_before_any_work(files, tmp_path, cli, no_data):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    t, s, p = str(files["teacher"]), str(files["student"]), str(files["pruned"])
    for args in (("train", "cnn3-w0.5", "-o", out), ("prune", t, "--like", "cnn3-w0.5", "-o", out),
                 ("warmup", "-t", p, "-s", "cnn3-w0.5", "-o", out),
                 ("distill", "-t", t, "-s", s, "-m", "kd", "-o", out),
                 ("distill", "-t", t, "-s", s, "-m", "crd", "-o", tmp_path / "new.safetensors", "--adapters", out),
                 ("retrieve", s, "--export", out)):
        code, _, err = cli(*map(str, args), *MINI)
        assert_one_line_error(code, err, "exists; pass --force to overwrite it")
    assert out.read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- ImageFolder data

def _tree(root: Path, modes=("RGB",), per_class: int = 4, broken: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c, base in (("cat", 50), ("dog", 200)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                mode = modes[i % len(modes)]
                px = np.clip(base + rng.integers(-30, 30, (18, 22, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(px)
                if mode == "P":
                    im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
                    im.info["transparency"] = 0
                    im.save(d / f"{i}.png", transparency=0)
                    continue
                im = im.convert(mode)
                im.save(d / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    for i in range(broken):
        (root / "train" / "cat" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def test_missing_and_empty_image_folders(tmp_path, cli):
    out = tmp_path / "o.safetensors"
    from PIL import Image

    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "only_train" / "train" / "a" / "x.png")
    for data, needle in ((tmp_path / "nope", "folder not found"), (tmp_path / "only_train", "needs a val/ or test/"),
                         (tmp_path, "train: image folder not found")):
        code, _, err = cli("train", "cnn3-w0.5", "--data", f"imagefolder:{data}", "-o", str(out))
        assert_one_line_error(code, err, needle)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    code, _, err = cli("train", "cnn3-w0.5", "--data", f"imagefolder:{tmp_path / 'empty'}", "-o", str(out))
    assert_one_line_error(code, err, "no class sub-folders")
    assert not out.exists()


def test_corrupt_images_are_skipped_and_counted_or_stop_with_strict(tmp_path, cli):
    root = _tree(tmp_path / "imgs", broken=2)
    args = ("train", "cnn3-w0.5", "--data", f"imagefolder:{root}", "--image-size", "32", "--epochs", "1", "-b", "4",
            "--val-fraction", "0", "--no-last")
    out = tmp_path / "strict.safetensors"
    code, _, err = cli(*args, "-o", str(out), "--strict", "-q")
    assert_one_line_error(code, err, "broken", "unreadable image (--strict)")
    assert not out.exists() and not (tmp_path / "strict.resume").exists()
    out = tmp_path / "ok.safetensors"
    code, _, err = cli(*args, "-o", str(out), "-q")
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if "unreadable" in ln]
    assert len(warn) == 1 and "skipped 2 unreadable images in train" in warn[0] and "--strict" in warn[0], err
    assert "Traceback" not in err and out.exists()


def test_grayscale_rgb_rgba_palette_mix_loads_as_the_models_channels(tmp_path, cli):
    from indistill_cli.data import load_dataset
    from indistill_cli.data.folder import FolderLoader

    root = _tree(tmp_path / "mix", modes=("L", "RGB", "RGBA", "P", "LA", "CMYK"), per_class=6)
    ds = load_dataset(f"imagefolder:{root}", val_fraction=0.0, image_size=16)
    for channels in (3, 1):
        loader = FolderLoader(ds.train, ds.info, 4, workers=0, model_channels=channels, model_size=(16, 16))
        xs = [b.x for b in loader]
        assert loader.skipped == 0
        assert all(x.shape[1:] == (channels, 16, 16) and torch.isfinite(x).all() for x in xs)
        assert sum(len(x) for x in xs) == 12
    # through the CLI: an RGB model trains on the mix (no warnings), a 1-channel model evaluates on it
    out = tmp_path / "rgb.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", "--data", f"imagefolder:{root}", "--image-size", "32", "--epochs", "1",
                       "-b", "4", "--val-fraction", "0", "--no-last", "-o", str(out), "-q")
    assert code == 0 and err.strip() == "", err
    gray = _fresh(tmp_path / "gray.safetensors", "cnn3-w0.5", classes=2, channels=1, size=32)
    code, stdout, err = cli("evaluate", str(gray), "--data", f"imagefolder:{root}", "--image-size", "32",
                            "--val-fraction", "0", "--json", "-q")
    assert code == 0, err
    assert json.loads(stdout)["num_images"] == 4 if "num_images" in json.loads(stdout) else True
