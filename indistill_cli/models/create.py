"""The one door to a model: `create_model(name | spec, data shape, seed)`.

Given a name and the data's shape it resolves the source (native family, timm or torchvision), builds a
fresh module for that shape (the seed alone decides its weights), lets the source declare the taps and
probes them into a `ModelSpec`. Given a spec (from a checkpoint) it rebuilds the same module, replays a
pruned teacher's structural plan, and loads the weights strictly. Either way a model that cannot be built
for the input size is one line naming `--image-size`, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint
from indistill_cli.io.spec import DataShape, EmbeddingSpec, ModelSpec, TapSpec
from indistill_cli.models.hub import TimmSource, TorchvisionSource, first_line
from indistill_cli.models.registry import NativeSource
from indistill_cli.models.source import Source
from indistill_cli.models.structural import replay_plan
from indistill_cli.models.taps import TapSet, as_vector

SOURCES: dict[str, Source] = {s.prefix: s for s in (NativeSource(), TimmSource(), TorchvisionSource())}


class Built(NamedTuple):
    spec: ModelSpec
    model: nn.Module


def source_of(arch: str) -> Source:
    prefix, sep, _ = arch.partition(":")
    return SOURCES.get(prefix, SOURCES[""]) if sep else SOURCES[""]


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_name(name: str) -> tuple[str, float, dict[str, Any] | None]:
    """'resnet20-w0.5' -> ('resnet20', 0.5, None); 'timm:vit_tiny_patch16_224,patch_size=4' ->
    ('timm:vit_tiny_patch16_224', 1.0, {'patch_size': 4}). Unknown names are one line with a suggestion."""
    base, *extra = name.split(",")
    args: dict[str, Any] = {}
    for item in extra:
        key, sep, val = item.partition("=")
        if not sep or not key.isidentifier() or not val:
            raise BadInput(f"model '{name}': constructor arguments are ,key=value (e.g. "
                           f"timm:vit_tiny_patch16_224,patch_size=4), got '{item}'")
        args[key] = _value(val)
    prefix, sep, rest = base.partition(":")
    if sep and prefix in SOURCES and prefix:
        if not rest:
            raise BadInput(f"model '{name}': give a model name after the prefix, e.g. timm:resnet18")
        arch, width = base, 1.0
    else:
        m = re.fullmatch(r"(.+?)(?:-w(\d*\.?\d+))?", base)
        arch, width = (m.group(1), float(m.group(2) or 1.0)) if m else (base, 1.0)
    source_of(arch).check(arch, width, args or None)
    return arch, width, args or None


def probe_taps(model: nn.Module, in_channels: int, input_size: tuple[int, int]) -> tuple[tuple[TapSpec, ...],
                                                                                      EmbeddingSpec]:
    """Run one dummy forward and record each tap's channels and stride, and the embedding size."""
    names = list(model.tap_names) + [model.embedding_name]
    was_training = model.training
    model.eval()
    with torch.no_grad(), TapSet(model, names) as taps:
        model(torch.zeros(2, in_channels, *input_size))
        out = dict(taps.out)
    model.train(was_training)
    taps_info = []
    for n in model.tap_names:
        t = out[n]
        if t.dim() != 4:
            raise BadInput(f"tap '{n}' gives a {t.dim()}-D tensor; taps must be feature maps (N, C, H, W)")
        taps_info.append(TapSpec(n, int(t.shape[1]), max(1, round(input_size[0] / int(t.shape[2]))),
                                 (int(t.shape[2]), int(t.shape[3]))))
    emb = as_vector(out[model.embedding_name])
    return tuple(taps_info), EmbeddingSpec(model.embedding_name, int(emb.shape[1]))


def load_state(model: nn.Module, state: Mapping[str, Any], where: str) -> None:
    """Load weights strictly; any disagreement with the spec is one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    bad_dtype = [k for k in own if k in state and k not in bad and own[k].dtype != state[k].dtype
                 and not (own[k].is_floating_point() and state[k].is_floating_point())]
    if missing or unexpected or bad or bad_dtype:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        if bad_dtype:
            parts.append(f"{len(bad_dtype)} with wrong dtype (e.g. {bad_dtype[0]})")
        raise BadInput(f"{where}: weights do not match the model spec: " + "; ".join(parts))
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def _size_error(name: str, spec: ModelSpec, source: Source, e: BaseException) -> BadInput:
    c, (h, w) = spec.in_channels, spec.input_size
    default = source.default_size(None, spec.arch)
    hint = f"; try --image-size {default} (its usual size)" if default and default != h else \
        "; try another --image-size"
    why = str(e) if isinstance(e, BadInput) else first_line(e)
    return BadInput(f"cannot build '{name}' for {c}x{h}x{w} inputs ({why}){hint}")


def _build(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """A module for a checkpoint's spec with its taps declared (the spec's own)."""
    source = source_of(spec.arch)
    model = source.build(spec, pretrained)
    source.declare(model, spec)
    if spec.taps:  # a checkpoint's taps are the ones its spec records (its widths were probed at them)
        model.tap_names = list(spec.tap_names)
        model.embedding_name = spec.embedding.name
    return model


def _fresh(name: str, shape: DataShape, pretrained: bool) -> Built:
    arch, width, args = parse_name(name)
    source = source_of(arch)
    draft = ModelSpec(arch, source.in_channels(shape.in_channels), shape.num_classes, tuple(shape.image_size), (),
                      EmbeddingSpec("", 0), width, {"mean": shape.mean, "std": shape.std} if shape.mean else {}, args)
    try:
        model = source.build(draft, pretrained)
    except BadInput as e:
        raise (e if pretrained else _size_error(name, draft, source, e)) from None  # pretrained: maybe no network
    except Exception as e:  # noqa: BLE001 - a builder rejecting the shape is the user's input
        raise _size_error(name, draft, source, e) from None
    try:
        source.declare(model, draft)
        taps, emb = probe_taps(model, draft.in_channels, draft.input_size)
    except Exception as e:  # noqa: BLE001 - a forward at this size that fails, a tap that is no feature map
        raise _size_error(name, draft, source, e) from None
    norm = (source.weights_norm(model) if pretrained else None) or draft.norm
    return Built(draft.replace(taps=taps, embedding=emb, norm=norm), model)


def _rebuild(spec: ModelSpec, where: str) -> nn.Module:
    try:
        model = _build(spec, False)
        return replay_plan(model, spec)
    except BadInput as e:
        raise BadInput(f"{where}: {e}" if where else str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"{where}: cannot build the model its spec describes ({first_line(e)})") from None


def create_model(model: str | ModelSpec | Checkpoint, shape: DataShape | None = None, seed: int | None = None, *,
                 weights: Mapping[str, Any] | None = None, pretrained: bool = False, where: str = "") -> Built:
    """(spec, module) for an architecture name at the data's `shape`, for a spec, or for a checkpoint (its
    spec and weights, verified against each other).

    With `seed`, a fresh model's initial weights are a function of (name, shape, seed) alone: they are
    drawn from a generator seeded with `seed` inside a forked RNG, so whatever a command built or drew
    before (a teacher, a data split) the same seed gives the same student, and the caller's random streams
    are left exactly as they were. Paired comparisons start every arm of a seed from one student.
    `pretrained` fetches hub weights (and records the normalisation they expect); `weights` is a state
    dict loaded strictly (a checkpoint's), `where` names its file in errors.
    """
    if isinstance(model, Checkpoint):
        return create_model(model.spec, weights=model.state, where=model.source)
    if isinstance(model, ModelSpec):
        module = _rebuild(model, where)
        if weights is not None:
            load_state(module, weights, where or model.arch)
        return Built(model, module)
    if shape is None:
        raise ValueError("create_model(name) needs the data's shape")
    if seed is None:
        return _fresh(model, shape, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _fresh(model, shape, pretrained)
