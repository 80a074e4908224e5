"""Property-based fuzzing of checkpoint bytes: whatever the bytes, loading raises BadInput (one clear
line, exit 2) or returns a verified checkpoint; never another exception, never a traceback.

In-process (`checkpoint.from_bytes`, then building the model) for volume; a handful through the CLI,
in-process and in a real process, for the exit code and the single stderr line.
"""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch
from conftest import assert_one_line_error, forge_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indistill_cli.io import checkpoint as C
from indistill_cli.errors import BadInput



def fuzz(n: int) -> settings:
    """Reproducible runs (derandomized, no example database) of n examples, no deadline."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X99", "", 7, None]


pytestmark = pytest.mark.usefixtures("one_thread")


def _valid() -> bytes:
    """A real checkpoint: a fresh cnn3-w0.5 for 1x28x28 inputs and 10 classes."""
    from indistill_cli.models import DataShape, create_model

    torch.manual_seed(0)
    spec, model = create_model("cnn3-w0.5", DataShape(1, 10, (28, 28), [0.286], [0.353]))
    ck = C.Checkpoint("model", spec, {k: v.detach() for k, v in model.state_dict().items()},
                      extras={"keep/x": torch.arange(4)}, history=[{"stage": "train", "seed": 0}],
                      info={"dataset": {"name": "fashion-mnist-mini"}})
    return C.to_bytes(ck)


VALID = _valid()
N = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8 : 8 + N])
HEADER_SPEC = json.loads(HEADER["__metadata__"]["spec"])


def load_or_bad_input(data: bytes) -> C.Checkpoint | None:
    """The property: BadInput or a checkpoint whose model builds (or is refused with BadInput)."""
    from indistill_cli.models import create_model

    try:
        ck = C.from_bytes(data, "fuzz.safetensors")
    except BadInput as e:
        assert str(e).startswith("fuzz.safetensors: ") and "\n" not in str(e), str(e)
        return None
    try:
        create_model(ck)
    except BadInput:
        pass
    return ck


# ----------------------------------------------------------------------------- mutations of real bytes

def _apply(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[: op[1] % (len(data) + 1)]
    if kind == "flip":
        b = bytearray(data)
        for pos, x in op[1]:
            b[pos % len(b)] ^= x or 1
        return bytes(b)
    if kind == "extend":
        return data + op[1]
    if kind == "splice":  # drop or insert a chunk somewhere (shifts every later offset)
        pos = op[1] % len(data)
        return data[:pos] + op[2] + data[pos + op[3] :]
    if kind == "length":  # a different declared header length, same bytes after it
        return struct.pack("<Q", op[1]) + data[8:]
    raise AssertionError(kind)


OPS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2**20)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1,
                                        max_size=8)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("splice"), st.integers(0, 2**20), st.binary(max_size=16), st.integers(0, 64)),
    st.tuples(st.just("length"), st.one_of(st.integers(0, 2 * N), st.integers(0, 2**64 - 1))),
)


@fuzz(160)
@given(ops=st.lists(OPS, min_size=1, max_size=3))
def test_mutated_checkpoint_bytes_only_raise_bad_input(ops):
    data = VALID
    for op in ops:
        data = _apply(data, op)
    ck = load_or_bad_input(data)
    if ck is not None:  # loading succeeded: then the tensors must be the original ones (checksum)
        ref = C.from_bytes(VALID)
        assert all(torch.equal(ck.state[k], ref.state[k]) for k in ref.state)


# ----------------------------------------------------------------------------- forged headers

JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                   max_size=3), max_leaves=8)
DIM = st.one_of(st.integers(0, 8), st.integers(-3, 2**64 + 5))
ENTRY = st.fixed_dictionaries({"dtype": st.sampled_from(DTYPES),
                               "shape": st.one_of(st.lists(DIM, max_size=4), JSONISH),
                               "data_offsets": st.one_of(st.tuples(DIM, DIM).map(list), JSONISH)})
META = st.one_of(JSONISH, st.fixed_dictionaries({
    "format": st.sampled_from([C.FORMAT, "indistill/0", "pt"]), "role": st.sampled_from([*C.ROLES, "x"]),
    "spec": st.one_of(st.just(HEADER["__metadata__"]["spec"]), st.text(max_size=20), JSONISH.map(json.dumps)),
    "history": st.one_of(st.just("[]"), JSONISH.map(json.dumps)), "info": st.just("{}"),
    "checksum": st.text(max_size=4)}))


@fuzz(120)
@given(entries=st.dictionaries(st.text(min_size=1, max_size=8), ENTRY, max_size=4), meta=META,
       body=st.binary(max_size=256), pad=st.integers(0, 7), raw=st.booleans())
def test_forged_headers_only_raise_bad_input(entries, meta, body, pad, raw):
    header = dict(entries)
    if not raw:
        header["__metadata__"] = meta
    text = json.dumps(header).encode() + b" " * pad
    load_or_bad_input(struct.pack("<Q", len(text)) + text + body)


@fuzz(40)
@given(junk=st.binary(max_size=512), n=st.integers(0, 2**64 - 1))
def test_random_bytes_and_lengths_only_raise_bad_input(junk, n):
    load_or_bad_input(junk)
    load_or_bad_input(struct.pack("<Q", n) + junk)


# ----------------------------------------------------------------------------- edited specs, valid checksum

SPEC_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.integers(-2**62, 2**62), st.floats(-2, 4),
                        st.floats(), st.text(max_size=10),
                        st.lists(st.integers(-2, 70), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                   st.integers(), max_size=2))


@fuzz(80)
@given(edits=st.dictionaries(st.sampled_from(["arch", "width", "in_channels", "num_classes", "input_size", "taps",
                                              "embedding", "norm", "structural_prune"]), SPEC_VALUES,
                             min_size=1, max_size=3))
def test_edited_specs_with_a_valid_checksum_only_raise_bad_input(edits):
    """The checksum is recomputed (a deliberate forgery): the model builder must still refuse cleanly."""
    load_or_bad_input(forge_spec(VALID, {**HEADER_SPEC, **edits}))


@pytest.mark.parametrize("edit, needle", [
    ({"num_classes": 2**40}, "'num_classes' must be an integer in [1, 1000000]"),
    ({"width": 1e9}, "'width' must be a number in (0, 16]"),
    ({"input_size": [2**31, 2**31]}, "'input_size' must be [H, W] with 1..8192 pixels"),
    ({"in_channels": 10**6}, "'in_channels' must be an integer in [1, 64]"),
    ({"arch": ["cnn3"]}, "'arch' must be a name"),
])
def test_a_forged_giant_model_is_refused_before_building(edit, needle):
    """A spec declaring a model of terabytes is refused from its numbers when the checkpoint is read, not by
    running out of memory."""
    with pytest.raises(BadInput, match=needle.replace("[", r"\[").replace("(", r"\(")):
        C.from_bytes(forge_spec(VALID, {**HEADER_SPEC, **edit}), "x")


# ----------------------------------------------------------------------------- through the CLI

def _cli_cases() -> list[bytes]:
    rng = random.Random(7)
    out = [VALID[: rng.randrange(len(VALID))] for _ in range(3)]
    b = bytearray(VALID)
    b[8 + N + rng.randrange(len(VALID) - 8 - N)] ^= 0x40
    out.append(bytes(b))
    out.append(struct.pack("<Q", N + 3) + VALID[8:])
    out.append(VALID[:8] + VALID[8 : 8 + N].replace(b'"F32"', b'"I64"', 1) + VALID[8 + N :])
    out.append(rng.randbytes(300))
    return out


@pytest.mark.parametrize("i", range(7))
def test_fuzzed_files_through_the_cli_are_one_line_exit_2(i, tmp_path, cli):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_cli_cases()[i])
    for args in (("inspect", bad), ("evaluate", bad, "--data", "synthetic:1x28x28:10:40")):
        code, out, err = cli(*args)
        line = assert_one_line_error(code, err)
        assert str(bad) in line and out == b""


def test_fuzzed_files_in_a_real_process(tmp_path, run_cli):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_cli_cases()[5])
    out = tmp_path / "never.safetensors"
    code, stdout, err = run_cli("distill", "--teacher", bad, "--student", "cnn3-w0.5", "-m", "kd", "-o", out,
                                "--data", "synthetic:1x28x28:10:40")
    assert_one_line_error(code, err, str(bad))
    assert stdout == b"" and not out.exists()
