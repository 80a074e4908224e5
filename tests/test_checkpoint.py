"""Checkpoints: round trips (file, pipe, stdin), metadata, and every corruption as one clear line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli_env

from indistill_cli.io import atomic as A
from indistill_cli.io import checkpoint as C
from indistill_cli.errors import BadInput, IndistillError, RunFailure

TINY = ("--data", "synthetic:1x28x28:10:160", "--epochs", "1", "--batch-size", "32")


# ----------------------------------------------------------------------------- helpers

def split_file(data: bytes) -> tuple[int, dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n]), data[8 + n :]


def rewrite_header(data: bytes, edit) -> bytes:
    """Re-serialise the safetensors header after `edit(header)`, tensor bytes untouched."""
    _, header, body = split_file(data)
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def with_checkpoint(data: bytes, **changes) -> bytes:
    """A validly checksummed checkpoint with some fields replaced (so only those fields are wrong)."""
    ck = C.from_bytes(data)
    return C.to_bytes(dataclasses.replace(ck, **changes))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- round trips

def test_file_round_trip_is_bitwise(trained_cnn3, tmp_path):
    ck = C.load_checkpoint(trained_cnn3.path)
    dest = tmp_path / "copy.safetensors"
    sha = C.save_checkpoint(ck, dest)
    assert sha == hashlib.sha256(dest.read_bytes()).hexdigest()
    back = C.load_checkpoint(dest)
    assert_same_tensors(ck.state, back.state)
    assert back.spec == ck.spec and back.history == ck.history and back.info == ck.info
    assert back.role == "model" and back.sha256 == sha and back.source == str(dest)
    # the checksum covers content, not the (hash-ordered) header layout: re-saving verifies again
    assert C.from_bytes(C.to_bytes(back)).state.keys() == ck.state.keys()


def test_file_is_plain_safetensors_with_documented_metadata(trained_cnn3):
    """Loadable with no project code; metadata carries format, spec, history and the checksum."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    plain = load_file(str(trained_cnn3.path))
    ck = C.load_checkpoint(trained_cnn3.path)
    assert_same_tensors(plain, ck.state)
    with safe_open(str(trained_cnn3.path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "indistill/1" and meta["role"] == "model"
    assert len(meta["checksum"]) == 64 and int(meta["checksum"], 16) >= 0
    spec = json.loads(meta["spec"])
    assert spec["arch"] == "cnn3" and spec["width"] == 0.5
    assert spec["in_channels"] == 1 and spec["input_size"] == [32, 32] and spec["num_classes"] == 10
    assert [t["channels"] for t in spec["taps"]] == [8, 16, 32]
    assert spec["embedding"] == {"name": "embed", "dim": 64}
    assert spec["norm"]["mean"] == pytest.approx([0.286]) and spec["norm"]["std"] == pytest.approx([0.353])
    history = json.loads(meta["history"])
    assert [h["stage"] for h in history] == ["train"]
    h = history[0]
    assert h["data"] == "fashion-mnist-mini" and h["parents"] == [{"arch": "cnn3-w0.5", "init_seed": 0}]
    assert h["options"]["epochs"] == 1 and h["options"]["seed"] == 0 and h["options"]["optimizer"] == "sgd"
    assert h["metrics"]["val_top1"] == trained_cnn3.summary["val_top1"]
    assert h["metrics"]["best_epoch"] == 1 and len(h["curve"]) == 1
    assert h["env"]["torch"] == torch.__version__
    assert json.loads(meta["info"])["dataset"]["name"] == "fashion-mnist-mini"
    assert ck.sha256 == trained_cnn3.summary["sha256"] == hashlib.sha256(trained_cnn3.read_bytes()).hexdigest()


def test_last_epoch_file_is_written_beside_the_best(trained_cnn3):
    last = Path(trained_cnn3.summary["last_output"])
    assert last.name == "cnn3-w0.5.last.safetensors" and last.parent == trained_cnn3.path.parent
    ck, lk = C.load_checkpoint(trained_cnn3.path), C.load_checkpoint(last)
    assert lk.history[-1]["note"] == "last epoch" and lk.spec == ck.spec
    # one epoch: the best epoch is the last one, so the weights agree bitwise
    assert_same_tensors(ck.state, lk.state)


def test_extras_round_trip_under_their_prefix():
    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    extras = {"kept.layer1": torch.tensor([0, 3, 5]), "mask": torch.tensor([True, False])}
    ck = C.Checkpoint("pruned-teacher", {"arch": "x"}, state, extras, [{"stage": "prune"}], {"pruning": {"a": 1}})
    back = C.from_bytes(C.to_bytes(ck), "mem")
    assert back.role == "pruned-teacher" and back.stage_names() == ["prune"]
    assert_same_tensors(back.state, state)
    assert_same_tensors(back.extras, extras)


def test_pipe_train_to_inspect(tmp_path):
    """`train -o - | tee | inspect -`: stdout carries exactly the checkpoint, stdin reads it back."""
    exe = f"{sys.executable} -m indistill_cli"
    cmd = (f"set -o pipefail; {exe} train cnn3-w0.5 {' '.join(TINY)} -o - | tee stream.safetensors "
           f"| {exe} inspect - --json")
    p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, env=cli_env(), timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    assert b"Traceback" not in p.stderr
    data = (tmp_path / "stream.safetensors").read_bytes()
    ck = C.from_bytes(data, "stream")  # the whole stream is one valid checkpoint, nothing mixed in
    report = json.loads(p.stdout)
    assert report["path"] == "stdin" and report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["model"] == "cnn3-w0.5" and report["spec"] == ck.spec
    assert [h["stage"] for h in report["history"]] == ["train"]
    assert report["history"][0]["options"]["data"] == "synthetic:1x28x28:10:160"
    assert report["parameters"] == sum(t.numel() for k, t in ck.state.items()
                                       if t.is_floating_point() and "running_" not in k)
    assert sorted(os.listdir(tmp_path)) == ["stream.safetensors"]  # no file named '-' nor a .last copy
    # and the streamed bytes survive a file round trip bitwise
    C.save_checkpoint(ck, tmp_path / "f.safetensors")
    assert_same_tensors(C.load_checkpoint(tmp_path / "f.safetensors").state, ck.state)


@pytest.mark.trained
def test_evaluate_reads_stdin(trained_cnn3, run_cli, cli, record):
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # so both evaluations sum in the same order
    code, out, err = run_cli("evaluate", "-", "--json", input=trained_cnn3.read_bytes(), env=threads)
    assert code == 0, err
    piped = json.loads(out)
    assert piped["checkpoint"] == "stdin" and piped["n"] == 2000
    record("top1", piped["top1"], 0.5, ">")
    code, out, err = cli("evaluate", str(trained_cnn3.path), "--json")
    assert code == 0, err
    from_file = json.loads(out)
    assert (piped["top1"], piped["top5"], piped["per_class"]) == (from_file["top1"], from_file["top5"],
                                                                  from_file["per_class"])
    assert piped["loss"] == pytest.approx(from_file["loss"], rel=1e-9)


def test_stdin_is_read_once_for_two_dashes(trained_cnn3, monkeypatch):
    import io

    data = trained_cnn3.read_bytes()
    fake = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", fake)
    monkeypatch.setattr(C, "_STDIN_CACHE", None)
    a, b = C.load_checkpoint("-"), C.load_checkpoint("-")
    assert a.source == "stdin" and a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()


def test_terminals_are_refused(monkeypatch):
    class Tty:
        buffer = None

        def isatty(self):
            return True

    tty = Tty()
    tty.buffer = tty
    monkeypatch.setattr(C, "_STDIN_CACHE", None)
    monkeypatch.setattr(sys, "stdin", tty)
    with pytest.raises(BadInput, match="stdin is a terminal"):
        C.read_source("-")
    monkeypatch.setattr(sys, "stdout", tty)
    ck = C.Checkpoint("model", {}, {"w": torch.zeros(1)})
    with pytest.raises(BadInput, match="refusing to write a binary checkpoint to a terminal"):
        C.save_checkpoint(ck, "-")


# ----------------------------------------------------------------------------- corruption via inspect

def _plain_safetensors(metadata=None) -> bytes:
    from safetensors.torch import save_file
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_file({"w": torch.ones(3, 2)}, f"{d}/p.safetensors", metadata=metadata)
        return Path(f"{d}/p.safetensors").read_bytes()


def _flip_tensor_byte(data: bytes) -> bytes:
    n, header, _ = split_file(data)
    entry = header["fc.weight"]  # a float tensor in the middle of the data
    lo, hi = entry["data_offsets"]
    b = bytearray(data)
    b[8 + n + (lo + hi) // 2] ^= 0x01
    return bytes(b)


def _edit_spec(header):
    spec = json.loads(header["__metadata__"]["spec"])
    spec["num_classes"] = 11
    header["__metadata__"]["spec"] = json.dumps(spec, sort_keys=True)  # old checksum kept


def _drop_meta(key):
    def edit(header):
        del header["__metadata__"][key]
    return edit


def _set_meta(key, value):
    def edit(header):
        header["__metadata__"][key] = value
    return edit


def _n(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


CORRUPT = {
    # name: (make(bytes) -> bytes, expected message parts)
    "empty": (lambda d: b"", ["not a safetensors checkpoint", "only 0 bytes"]),
    "random-bytes": (lambda d: random.Random(0).randbytes(4096), ["not a safetensors checkpoint", "implausible"]),
    "garbage-header": (lambda d: struct.pack("<Q", 64) + random.Random(1).randbytes(200),
                       ["not a safetensors checkpoint (header is not JSON)"]),
    "header-not-object": (lambda d: struct.pack("<Q", 8) + b"[1,2,3] ", ["header is not a JSON object"]),
    "cut-in-length": (lambda d: d[:5], ["only 5 bytes"]),
    "cut-after-length": (lambda d: d[:8], ["truncated checkpoint (header needs"]),
    "cut-in-header": (lambda d: d[: 8 + _n(d) // 2], ["truncated checkpoint (header needs"]),
    "cut-in-data": (lambda d: d[: 8 + _n(d) + 100], ["truncated checkpoint (tensor data needs"]),
    "cut-last-byte": (lambda d: d[:-1], ["truncated checkpoint (tensor data needs"]),
    "huge-header-length": (lambda d: struct.pack("<Q", 2**40) + d[8:], ["declared header of 1099511627776 bytes"]),
    "plain-safetensors": (lambda d: _plain_safetensors(), ["without indistill metadata"]),
    "foreign-metadata": (lambda d: _plain_safetensors({"format": "pt"}), ["unknown checkpoint format 'pt'"]),
    "flipped-tensor-byte": (_flip_tensor_byte, ["checksum mismatch"]),
    "edited-spec-old-checksum": (lambda d: rewrite_header(d, _edit_spec), ["checksum mismatch"]),
    "no-history-key": (lambda d: rewrite_header(d, _drop_meta("history")), ["metadata has no 'history'"]),
    "no-spec-key": (lambda d: rewrite_header(d, _drop_meta("spec")), ["metadata has no 'spec'"]),
    "spec-not-json": (lambda d: rewrite_header(d, _set_meta("spec", "{arch: cnn3")), ["metadata 'spec' is not valid JSON"]),
    "history-not-list": (lambda d: rewrite_header(d, _set_meta("history", "{}")), ["'history' should be a JSON list"]),
    "unknown-role": (lambda d: rewrite_header(d, _set_meta("role", "optimizer")), ["unknown checkpoint role 'optimizer'"]),
    "bad-offsets": (lambda d: rewrite_header(d, lambda h: h["fc.weight"].update(data_offsets=[9, 3])),
                    ["tensor 'fc.weight' has invalid offsets"]),
    "offsets-mismatch-dtype": (lambda d: rewrite_header(d, lambda h: h["fc.weight"].update(dtype="F64")),
                               ["corrupt checkpoint ("]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_checkpoint_is_one_line_exit_2(case, trained_cnn3, tmp_path, cli):
    make, needles = CORRUPT[case]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(make(trained_cnn3.read_bytes()))
    code, out, err = cli("inspect", str(bad))
    line = assert_one_line_error(code, err, *needles)
    assert str(bad) in line and out == b""
    with pytest.raises(BadInput):  # the library raises the same, for callers that are not the CLI
        C.load_checkpoint(bad)


def test_missing_file_and_directory(tmp_path, cli):
    code, _, err = cli("inspect", str(tmp_path / "nope.safetensors"))
    assert_one_line_error(code, err, "nope.safetensors: checkpoint not found")
    code, _, err = cli("inspect", str(tmp_path))
    assert_one_line_error(code, err, "is a directory, expected a .safetensors checkpoint")


def test_corruption_in_a_real_process_has_no_traceback(trained_cnn3, run_cli):
    """The same guarantee end to end through stdin in a fresh interpreter."""
    data = trained_cnn3.read_bytes()
    code, out, err = run_cli("inspect", "-", "--json", input=data[: len(data) // 2])
    assert_one_line_error(code, err, "stdin: truncated checkpoint")
    assert out == b""


# ----------------------------------------------------------------------------- spec / weights disagreement

def _ck(trained_cnn3):
    return C.from_bytes(trained_cnn3.read_bytes())


SPEC_CASES = {
    "unknown-arch": (lambda ck: {"spec": {**ck.spec, "arch": "cnn4"}},
                     ["unknown architecture 'cnn4'", "did you mean 'cnn3'"]),
    "dropped-tensor": (lambda ck: {"state": {k: v for k, v in ck.state.items() if k != "block2.0.bias"}},
                       ["weights do not match the model spec", "1 missing (e.g. block2.0.bias)"]),
    "reshaped-tensor": (lambda ck: {"state": {**ck.state, "fc.weight": ck.state["fc.weight"].reshape(64, 10)}},
                        ["weights do not match the model spec", "wrong shape (e.g. fc.weight: (64, 10) vs (10, 64))"]),
    "extra-tensor": (lambda ck: {"state": {**ck.state, "block9.weight": torch.zeros(2)}},
                     ["1 unexpected (e.g. block9.weight)"]),
    "wrong-dtype": (lambda ck: {"state": {**ck.state, "block1.1.num_batches_tracked": torch.zeros((), dtype=torch.float32)}},
                    ["wrong dtype (e.g. block1.1.num_batches_tracked)"]),
    "spec-wider-than-weights": (lambda ck: {"spec": {**ck.spec, "width": 1.0}}, ["wrong shape"]),
    "spec-without-taps": (lambda ck: {"spec": {k: v for k, v in ck.spec.items() if k != "taps"}},
                          ["model spec lacks 'taps'"]),
    "spec-without-classes": (lambda ck: {"spec": {k: v for k, v in ck.spec.items() if k != "num_classes"}},
                             ["model spec lacks 'num_classes'"]),
    "spec-unbuildable": (lambda ck: {"spec": {**ck.spec, "input_size": [8, 8]}}, ["cnn3 needs inputs of at least 22"]),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_and_weights_must_agree(case, trained_cnn3, tmp_path, cli):
    change, needles = SPEC_CASES[case]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(with_checkpoint(trained_cnn3.read_bytes(), **change(_ck(trained_cnn3))))
    C.load_checkpoint(bad)  # the file itself is valid: checksum recomputed, only the model is wrong
    code, out, err = cli("evaluate", str(bad), "--data", "synthetic:1x28x28:10:40")
    line = assert_one_line_error(code, err, *needles)
    assert str(bad) in line and out == b""


def test_inspect_survives_an_odd_spec(trained_cnn3, tmp_path, cli):
    """inspect shows what is there even when the spec lacks fields a model needs."""
    ck = _ck(trained_cnn3)
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(with_checkpoint(trained_cnn3.read_bytes(), spec={"note": "no arch"}))
    code, out, err = cli("inspect", str(odd), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["spec"] == {"note": "no arch"} and report["tensors"] == len(ck.state)


def test_checkpoint_for_other_data_is_refused(trained_cnn3, cli):
    code, _, err = cli("evaluate", str(trained_cnn3.path), "--data", "synthetic:1x28x28:4:40")
    assert_one_line_error(code, err, "has 10 classes but synthetic:1x28x28:4:40 has 4")
    code, _, err = cli("evaluate", str(trained_cnn3.path), "--data", "synthetic:3x28x28:10:40")
    assert_one_line_error(code, err, "takes 1-channel images but synthetic:3x28x28:10:40 has 3 channels")


# ----------------------------------------------------------------------------- outputs

def test_existing_output_needs_force(tmp_path, cli):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"original")
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out))
    assert_one_line_error(code, err, "exists; pass --force to overwrite it")
    assert out.read_bytes() == b"original"
    code, stdout, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--force", "--no-last", "--json")
    assert code == 0, err
    assert C.load_checkpoint(out).sha256 == json.loads(stdout)["sha256"]
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_output_into_missing_folder_or_directory(tmp_path, cli):
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(tmp_path / "no" / "such" / "m.safetensors"))
    assert_one_line_error(code, err, "folder", "does not exist")
    assert not (tmp_path / "no").exists()
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")


def test_written_file_has_the_usual_mode(tmp_path):
    """Atomic writes go through mkstemp (0600); the final file must get the mode open() would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    dest = tmp_path / "m.safetensors"
    A.atomic_write(dest, b"abc")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, fail_in):
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"original")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    if fail_in == "write":
        real_fdopen = os.fdopen

        class Failing:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            write = boom

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, fail_in, boom)
    with pytest.raises(RunFailure, match="m.safetensors: cannot write .No space left on device."):
        A.atomic_write(dest, b"new content")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.safetensors"] and dest.read_bytes() == b"original"


def no_checkpoint_left(folder: Path) -> None:
    """Neither an output nor a temp file; a resume sidecar (`*.resume`) is allowed to stay."""
    left = [p.name for p in folder.iterdir() if not p.name.endswith(".resume")]
    assert left == [], left


def test_failed_write_is_one_line_exit_1(tmp_path, monkeypatch, cli):
    import types

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    disk_full = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    disk_full.fsync = boom
    monkeypatch.setattr(A, "os", disk_full)  # only file writes fail
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--quiet")
    assert_one_line_error(code, err, "m.safetensors: cannot write (No space left on device)", exit_code=1)
    no_checkpoint_left(tmp_path)


@pytest.mark.filterwarnings("error")  # a warning would be a second stderr line
def test_diverging_run_writes_nothing(tmp_path, cli):
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "--lr", "1e30", "--quiet", "-o", str(out))
    assert_one_line_error(code, err, "non-finite loss", "--lr", exit_code=1)
    no_checkpoint_left(tmp_path)

