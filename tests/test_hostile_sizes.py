"""Hostile inputs a new user can type that used to end in a traceback: JSON nested absurdly deep in a
checkpoint's metadata (RecursionError), and sizes that cannot fit in memory (MemoryError or an allocator
error) from a synthetic set, the batch at an image size, or an image folder's pixels. Each is one line,
exit 2, nothing written, and refused before anything of that size is allocated."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import assert_one_line_error

from indistill_cli.errors import BadInput
from indistill_cli.io import checkpoint as C
from indistill_cli.io import jsontext

pytestmark = pytest.mark.usefixtures("one_thread")


def _forged(meta_edit: dict[str, str]) -> bytes:
    """A real checkpoint whose metadata fields are replaced (with a valid checksum over the forgery)."""
    from indistill_cli.models import DataShape, create_model

    torch.manual_seed(0)
    spec, model = create_model("cnn3-w0.5", DataShape(1, 10, (28, 28), [0.286], [0.353]))
    data = C.to_bytes(C.Checkpoint("model", spec, {k: v.detach() for k, v in model.state_dict().items()}))
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = {**header["__metadata__"], **meta_edit}
    from safetensors.torch import load, save

    tensors = load(data)
    meta["checksum"] = C._tensor_digest(tensors, meta)
    return save(tensors, metadata=meta)


def test_history_nested_100000_deep_is_one_line(tmp_path, cli, run_cli):
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_forged({"history": "[" * 100_000 + "]" * 100_000}))
    for args in (("inspect", str(path)), ("evaluate", str(path), "--data", "fashion-mnist-mini")):
        code, _, err = cli(*args)
        assert_one_line_error(code, err, "metadata 'history' is nested more than 64 levels deep")
    code, _, err = run_cli("inspect", path)  # a real process: no RecursionError traceback either
    assert_one_line_error(code, err, "nested more than 64 levels deep")


def test_nesting_below_the_recursion_limit_is_bounded_too(tmp_path, cli):
    """900 levels parse, but would break the checksum's json.dumps or printing later: refused at load."""
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_forged({"info": "{\"a\":" * 900 + "1" + "}" * 900}))
    code, _, err = cli("inspect", str(path))
    assert_one_line_error(code, err, "metadata 'info' is nested more than 64 levels deep")
    assert jsontext.loads("[" * 64 + "]" * 64)  # 64 levels are fine
    with pytest.raises(jsontext.TooDeep):
        jsontext.loads("[" * 65 + "]" * 65)


def test_adapters_sidecar_is_named_as_such(tmp_path, cli):
    from safetensors.torch import save

    path = tmp_path / "s.adapters.safetensors"
    path.write_bytes(save({"kd/w": torch.zeros(2)}, metadata={"format": "indistill-adapters/1", "methods": "[]"}))
    code, _, err = cli("inspect", str(path))
    assert_one_line_error(code, err, "is a KD adapters sidecar", "not a model checkpoint")


@pytest.mark.parametrize("data, needle", [
    ("synthetic:3x100000x100000:10:10", "20 images of 3x100000x100000 (train + test) would take 558.8 GiB"),
    ("synthetic:1x28x28:10:100000000000", "images of 1x28x28 (train + test) would take"),
    ("synthetic:1x28x28:100000000000:10", "100000000000 classes; at most 1,000,000"),
])
def test_synthetic_sets_too_big_for_memory(data, needle, tmp_path, cli, monkeypatch):
    def no_alloc(*a, **k):
        raise AssertionError("allocated before checking the size")

    monkeypatch.setattr("indistill_cli.data.builtin.torch.randint", no_alloc)
    out = tmp_path / "m.safetensors"
    code, stdout, err = cli("train", "cnn3-w0.5", "--data", data, "--epochs", "1", "-o", str(out))
    assert_one_line_error(code, err, needle, "memory free here" if "GiB" in needle or "would take" in needle else "")
    assert stdout == b"" and not out.exists() and not (tmp_path / "m.resume").exists()


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path, cli, monkeypatch):
    """The batch's activations (measured on the meta device, nothing allocated) against free memory."""
    monkeypatch.setattr("indistill_cli.data.memory.available", lambda device="cpu": 64 * 2**20)
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", "cnn3", "--data", "synthetic:1x64x64:10:300", "--epochs", "1", "-b", "256", "-q",
                       "-o", str(out))
    assert_one_line_error(code, err, "a training batch of 256 1x64x64 images through cnn3", "64 MiB of memory",
                          "lower --batch-size or --image-size")
    assert not out.exists()
    monkeypatch.setattr("indistill_cli.data.memory.available", lambda device="cpu": 8 * 2**20)
    code, _, err = cli("train", "cnn3", "--data", "synthetic:1x64x64:10:300", "--epochs", "1", "-b", "1", "-q",
                       "--eval-batch-size", "100000", "-o", str(out))
    assert_one_line_error(code, err, "an evaluation batch of 30 1x64x64 images", "lower --eval-batch-size")


def test_footprint_of_a_model_is_measured_without_allocating():
    from indistill_cli.models import DataShape, create_model
    from indistill_cli.models.footprint import activation_bytes

    spec, _ = create_model("cnn3-w0.5", DataShape(1, 10, (32, 32)))
    total, largest = activation_bytes(lambda: create_model(spec).model, 1, (32, 32))
    assert largest == 4 * 8 * 30 * 30  # conv1's output: 8 channels at 30x30 (unpadded 3x3 conv)
    big = activation_bytes(lambda: create_model(spec.replace(input_size=(4096, 4096))).model, 1, (4096, 4096))
    assert big is not None and big[0] > 2 * 2**30  # > 2 GiB an image (a 1 GB linear layer too): nothing allocated


def test_datasets_takes_data_root(tmp_path, cli):
    from test_data import make_idx_dir

    make_idx_dir(tmp_path / "mnist")
    code, out, err = cli("datasets", "--data-root", str(tmp_path), "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["mnist"]["available"] and rows["mnist"]["where"] == str(tmp_path / "mnist")
    assert "downloads into " + str(tmp_path) in rows["cifar10"]["note"] or rows["cifar10"]["available"]


def test_deep_spec_is_bad_input():
    with pytest.raises(BadInput, match="metadata 'spec' is nested"):
        C.from_bytes(_forged({"spec": "[" * 10_000 + "]" * 10_000}), "x.safetensors")
