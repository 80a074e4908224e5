"""Safetensors checkpoints that carry their own model spec and history.

A checkpoint is one pickle-free safetensors file: the model's state dict (plus extra tensors such as
the channels a pruning kept, stored under an `@` prefix no module path can take) and string metadata:
format version, role, model spec, dataset, history and a sha256 over metadata + tensors, so any
edit or corruption is caught on load. `-` means stdin/stdout so stages chain in shell pipes; file
writes are atomic (temp file, fsync, rename) so a failing run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indistill_cli.errors import BadInput
from indistill_cli.io import jsontext
from indistill_cli.io.atomic import atomic_write
from indistill_cli.io.spec import ModelSpec

FORMAT = "indistill/1"
EXTRA_PREFIX = "@"
MAX_HEADER = 100 * 1024 * 1024  # a larger declared header is corruption, not a model
ROLES = ("model", "pruned-teacher", "embeddings")
IMPORT = "indistill import {where} --arch NAME --data D -o model.safetensors"


def foreign(where: str, what: str) -> BadInput:
    """The one line for a file indistill did not write: what it is, and the command that brings it in."""
    return BadInput(f"{where}: {what}, not an indistill checkpoint; bring it in with `{IMPORT.format(where=where)}`")


def _torch_file(data: bytes) -> bool:
    """torch.save output: a zip archive (torch >= 1.6) or a bare pickle (protocol 2+)."""
    return data[:4] == b"PK\x03\x04" or (len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5)


@dataclass
class Checkpoint:
    """What a stage reads and writes: spec + weights + history."""

    role: str
    spec: ModelSpec
    state: dict[str, Any]  # model state dict (torch tensors)
    extras: dict[str, Any] = field(default_factory=dict)  # non-model tensors (e.g. kept indices)
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # role-specific metadata (pruning, dataset)
    sha256: str = ""  # of the file bytes, for lineage in children's history
    source: str = ""

    def stage_names(self) -> list[str]:
        return [h.get("stage", "?") for h in self.history]


def _tensor_digest(tensors: dict[str, Any], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def to_bytes(ckpt: Checkpoint) -> bytes:
    """Serialise with a checksum; returns the file bytes."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.state.items()}
    for k, v in ckpt.extras.items():
        tensors[EXTRA_PREFIX + k] = v.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "role": ckpt.role,
        "spec": json.dumps(ckpt.spec.to_dict(), sort_keys=True),
        "history": json.dumps(ckpt.history),
        "info": json.dumps(ckpt.info, sort_keys=True),
    }
    meta["checksum"] = _tensor_digest(tensors, meta)
    return save(tensors, metadata=meta)


def save_checkpoint(ckpt: Checkpoint, dest: str | Path) -> str:
    """Write to a path or '-' (stdout); returns the sha256 of the bytes written."""
    data = to_bytes(ckpt)
    if str(dest) == "-":
        out = sys.stdout.buffer
        if out.isatty():
            raise BadInput("refusing to write a binary checkpoint to a terminal: redirect stdout or pass -o FILE")
        out.write(data)
        out.flush()
    else:
        atomic_write(dest, data)
    return hashlib.sha256(data).hexdigest()


_STDIN_CACHE: bytes | None = None


def read_source(src: str | Path) -> bytes:
    """The bytes of a path or of stdin ('-', read once and cached so two options may both say '-')."""
    global _STDIN_CACHE
    if str(src) == "-":
        if _STDIN_CACHE is None:
            if sys.stdin.isatty():
                raise BadInput("'-' reads a checkpoint from stdin, but stdin is a terminal: pipe one in")
            _STDIN_CACHE = sys.stdin.buffer.read()
        return _STDIN_CACHE
    p = Path(src)
    if not p.exists():
        raise BadInput(f"{src}: checkpoint not found")
    if p.is_dir():
        raise BadInput(f"{src}: is a directory, expected a .safetensors checkpoint")
    try:
        return p.read_bytes()
    except OSError as e:
        raise BadInput(f"{src}: cannot read ({e.strerror})") from None


def parse_header(data: bytes, where: str) -> dict[str, Any]:
    """Validate the safetensors framing ourselves so every malformation is one clear line."""
    if len(data) < 8:
        raise BadInput(f"{where}: not a safetensors checkpoint (only {len(data)} bytes; truncated or empty?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER and _torch_file(data):
        raise foreign(where, "a PyTorch file (torch.save)")
    if n > MAX_HEADER:
        raise BadInput(f"{where}: not a safetensors checkpoint (declared header of {n} bytes is implausible)")
    if 8 + n > len(data):
        raise BadInput(f"{where}: truncated checkpoint (header needs {8 + n} bytes, file has {len(data)})")
    header = _parsed(data[8 : 8 + n], dict, lambda why: f"{where}: not a safetensors checkpoint (header {why})",
                     "not JSON", "is not a JSON object")
    body = len(data) - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = entry["data_offsets"]
            lo, hi = int(lo), int(hi)
        except (TypeError, KeyError, ValueError):
            raise BadInput(f"{where}: corrupt checkpoint (tensor '{name}' has no valid offsets)") from None
        if not 0 <= lo <= hi:
            raise BadInput(f"{where}: corrupt checkpoint (tensor '{name}' has invalid offsets)")
        end = max(end, hi)
    if end > body:
        raise BadInput(f"{where}: truncated checkpoint (tensor data needs {end} bytes, file has {body})")
    return header


def _parsed(text: Any, kind: type, message: Callable[[str], str], not_json: str, wrong_kind: str) -> Any:
    """JSON of the header or of a metadata field, each failure one line (`message` of what is wrong);
    nesting is bounded (jsontext), so a forged file cannot raise RecursionError."""
    try:
        value = jsontext.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except jsontext.TooDeep as e:
        raise BadInput(message(f"is {e}; corrupt or forged")) from None
    except (UnicodeDecodeError, TypeError, json.JSONDecodeError):
        raise BadInput(message(f"is {not_json}")) from None
    if not isinstance(value, kind):
        raise BadInput(message(wrong_kind))
    return value


def _json_field(meta: dict[str, str], key: str, where: str, kind: type) -> Any:
    if key not in meta:
        raise BadInput(f"{where}: metadata has no '{key}' (not written by indistill?)")
    return _parsed(meta[key], kind, lambda why: f"{where}: metadata '{key}' {why}", "not valid JSON",
                   f"should be a JSON {kind.__name__}")


def from_bytes(data: bytes, where: str = "<bytes>") -> Checkpoint:
    """Parse and verify: framing, metadata, checksum. Model/spec agreement is checked by `models`."""
    import hashlib as _h

    from safetensors import SafetensorError
    from safetensors.torch import load

    header = parse_header(data, where)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise foreign(where, "a safetensors file without indistill metadata")
    if meta.get("format") == "indistill-adapters/1":
        raise BadInput(f"{where}: is a KD adapters sidecar (written by `indistill distill --adapters`), not a model "
                       f"checkpoint")
    if meta.get("format") != FORMAT:
        raise foreign(where, f"a safetensors file of unknown checkpoint format {meta.get('format')!r} (indistill "
                             f"writes {FORMAT!r})")
    role = meta.get("role")
    if role not in ROLES:
        raise BadInput(f"{where}: unknown checkpoint role {role!r}")
    spec = _json_field(meta, "spec", where, dict)
    history = _json_field(meta, "history", where, list)
    info = _json_field(meta, "info", where, dict)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise BadInput(f"{where}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
    if meta.get("checksum") != _tensor_digest(tensors, meta):
        raise BadInput(f"{where}: checksum mismatch: the file was modified or corrupted after it was written")
    spec = ModelSpec.from_dict(spec, where)  # validated once, here: every reader gets a typed, plausible spec
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    extras = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return Checkpoint(role, spec, state, extras, history, info, _h.sha256(data).hexdigest(), where)


def load_checkpoint(src: str | Path, role: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint from a path or '-'; `role` demands a kind of checkpoint."""
    where = "stdin" if str(src) == "-" else str(src)
    ckpt = from_bytes(read_source(src), where)
    if role is not None and ckpt.role != role:
        raise BadInput(f"{where}: is a {ckpt.role} checkpoint, expected a {role} checkpoint")
    return ckpt


def looks_like_checkpoint(arg: str) -> bool:
    """True when an argument names a checkpoint (path or '-') rather than an architecture."""
    return arg == "-" or arg.endswith(".safetensors") or os.sep in arg or Path(arg).exists()
