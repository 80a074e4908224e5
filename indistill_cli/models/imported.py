"""Weights from outside indistill, brought into a module that `create_model` built: the imported source.

A user's teacher arrives as a `.pth`/`.pt`/`.bin` (`torch.save` of a state dict, or of a training script's
checkpoint dict) or a `.safetensors` in timm / Hugging Face layout. Reading never runs code: pickles load
with `torch.load(weights_only=True)`, so a pickled whole model is refused with the line that says how to
save its state dict. Training scripts wrap weights in containers (`state_dict`, `model`, `model_ema`,
`ema`) and prefix their keys (`module.` from DDP, `_orig_mod.` from torch.compile); both are undone and
reported. The keys then have to match the architecture exactly (strict), except what the user names:
`--ignore PATTERN` drops file keys no module wants, `--new-head` replaces a classifier trained for another
number of classes with a fresh one. The architecture's source may adapt the file first (timm resamples a
ViT's position embedding to the data's size).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput
from indistill_cli.io.spec import ModelSpec

CONTAINERS = ("state_dict", "model", "module", "net", "params")  # where training scripts keep the weights
EMA_CONTAINERS = ("model_ema", "ema", "state_dict_ema", "ema_state_dict")
PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")
SAVE_HINT = "save its weights with `torch.save(model.state_dict(), 'weights.pth')` and import that file"


@dataclass
class Foreign:
    """A state dict read from a foreign file, and how it was found."""

    path: str
    state: dict[str, torch.Tensor]
    fmt: str  # "torch.save" or "safetensors"
    sha256: str
    container: list[str] = field(default_factory=list)  # keys unwrapped, outermost first
    stripped: list[str] = field(default_factory=list)  # key prefixes removed

    def describe(self) -> str:
        parts = [f"{len(self.state)} tensors ({self.fmt})"]
        if self.container:
            parts.append("from " + " > ".join(f"['{c}']" for c in self.container))
        if self.stripped:
            parts.append("prefix " + " and ".join(f"'{p}'" for p in self.stripped) + " removed")
        return ", ".join(parts)


def _load_pickle(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a zip that is no torch file, ...
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found or "Weights only load failed" in text:
            what = f" ({found.group(1)})" if found else ""
            raise BadInput(f"{path}: holds pickled Python objects{what}, which indistill does not unpickle (no code "
                           f"runs from a checkpoint); if it is a whole model, {SAVE_HINT}") from None
        raise BadInput(f"{path}: not a file torch.load can read ({(text.splitlines() or ['?'])[0][:120]})") from None


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, ema: bool, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside a checkpoint dict (the EMA weights with `ema`), and the keys walked to it."""
    path: list[str] = []
    for _ in range(4):  # containers nest at most a few levels ({'model': {'state_dict': ...}})
        if _is_state(obj):
            return obj, path
        if not isinstance(obj, dict):
            break
        names = EMA_CONTAINERS if ema else CONTAINERS
        key = next((k for k in names if isinstance(obj.get(k), dict)), None)
        if key is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and not any(isinstance(v, dict) for v in obj.values()):
                return tensors, path  # a state dict with a few non-tensor entries (e.g. a version number)
            break
        path.append(key)
        obj = obj[key]
    keys = sorted(obj)[:6] if isinstance(obj, dict) else []
    want = "EMA weights (" + ", ".join(EMA_CONTAINERS) + ")" if ema else "a state dict"
    raise BadInput(f"{where}: no {want} found" + (f" under {' > '.join(path)}" if path else "")
                   + (f"; its keys: {', '.join(map(str, keys))}" if keys else "") + "; " + SAVE_HINT)


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keys without DDP's `module.` and torch.compile's `_orig_mod.` (any order, any repetition)."""
    stripped: list[str] = []
    out = {}
    for k, v in state.items():
        new = k
        while new.startswith(PREFIXES):
            p = next(p for p in PREFIXES if new.startswith(p))
            stripped += [p] if p not in stripped else []
            new = new[len(p):]
        out[new] = v
    return out, stripped


def read_foreign(path: str, ema: bool = False) -> Foreign:
    """A foreign file's state dict (containers unwrapped, prefixes removed) with its sha256."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: file not found" if not p.exists() else f"{path}: is not a file")
    data = p.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if p.suffix == ".safetensors":
        raw: Any = _load_safetensors(path)
        fmt = "safetensors"
    else:
        raw, fmt = _load_pickle(path), "torch.save"
    state, container = unwrap(raw, ema, path)
    state, stripped = strip_prefixes(state)
    return Foreign(path, {k: v.detach() for k, v in state.items()}, fmt, sha, container, stripped)


def file_channels(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The input channels the file's weights were trained for, when they differ from the module's (an RGB
    ImageNet model brought to grayscale data keeps its RGB stem; the data is repeated to 3 channels)."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return None
    w = state.get(f"{first[0]}.weight")
    if w is None or w.dim() != 4 or w.shape[1] == first[1].in_channels or first[1].groups != 1:
        return None
    return int(w.shape[1])


def head_keys(model: nn.Module, spec: ModelSpec) -> list[str]:
    """State-dict keys of the classifier(s): the linear layers with one output per class."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == spec.num_classes:
            out += [f"{name}.{p}" for p, _ in m.named_parameters(recurse=False)]
    return out


@dataclass
class Fit:
    """What loading a foreign state dict into the module did."""

    loaded: int
    new_head: list[str]
    ignored: list[str]


def _sample(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _head_classes(state: dict[str, torch.Tensor], head: list[str]) -> int | None:
    w = next((state[k] for k in head if k.endswith("weight") and k in state), None)
    return int(w.shape[0]) if w is not None else None


def _check_head(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], head: list[str], spec: ModelSpec,
                new_head: bool, where: str) -> list[str]:
    """The head keys to keep fresh: all of them with --new-head; refuse a head for another number of classes."""
    if new_head:
        return head
    classes = _head_classes(state, head)
    if classes is not None and classes != spec.num_classes:
        raise BadInput(f"{where}: its classifier ({head[0].rsplit('.', 1)[0]}) has {classes} classes, the data "
                       f"{spec.num_classes}; pass --new-head to give it a fresh {spec.num_classes}-way head (then "
                       f"`indistill train OUT` fine-tunes it)")
    return []


def fit_weights(model: nn.Module, spec: ModelSpec, foreign: Foreign, new_head: bool = False,
                ignore: list[str] | None = None) -> Fit:
    """Load `foreign` into `model` strictly, but for the keys `ignore` patterns name and a --new-head."""
    from indistill_cli.models.create import source_of

    where = foreign.path
    own = model.state_dict()
    ignored = [k for k in foreign.state if any(fnmatch.fnmatchcase(k, pat) for pat in ignore or [])]
    state = source_of(spec.arch).adapt_foreign(model, {k: v for k, v in foreign.state.items() if k not in ignored})
    fresh = _check_head(state, own, head_keys(model, spec), spec, new_head, where)
    state = {k: v for k, v in state.items() if k not in fresh}
    missing = [k for k in own if k not in state and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        raise BadInput(f"{where}: does not match {spec.name}: " + _mismatch(missing, unexpected, bad, state, own))
    merged = {k: (state[k].to(own[k].dtype) if k in state else own[k]) for k in own}
    model.load_state_dict(merged, strict=True)
    return Fit(len(state), fresh, ignored)


def _mismatch(missing: list[str], unexpected: list[str], bad: list[str], state: dict[str, torch.Tensor],
              own: dict[str, torch.Tensor]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_sample(missing)})")
    if unexpected:
        common = _common_prefix(unexpected)
        skip = f"--ignore '{common}*'" if common else "--ignore 'PATTERN'"
        parts.append(f"{len(unexpected)} unexpected ({_sample(unexpected)}; to skip them: {skip})")
    if bad:
        k = bad[0]
        parts.append(f"{len(bad)} with another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model)")
    hint = " (is --arch the architecture the file was trained as?)" if missing or bad else ""
    return "; ".join(parts) + hint


def _common_prefix(keys: list[str]) -> str:
    """The module path all `keys` share (e.g. 'aux_head.'), or ''."""
    first = keys[0].split(".")
    n = 0
    while n < len(first) - 1 and all(k.split(".")[: n + 1] == first[: n + 1] for k in keys):
        n += 1
    return ".".join(first[:n]) + "." if n else ""
