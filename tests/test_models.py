"""Model zoo: every registered model builds, its declared taps match a real forward pass."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error

from indistill_cli.errors import BadInput
from indistill_cli.models import DataShape, ModelSpec, create_model, list_models, parse_name
from indistill_cli.models.taps import TapSet, as_vector

NATIVE = [e.name for e in list_models()]
SHAPES = {"rgb32": (3, (32, 32)), "gray28": (1, (28, 28))}


def forward_taps(model: torch.nn.Module, spec: ModelSpec, batch: int = 2) -> tuple[dict, torch.Tensor]:
    names = spec.tap_names + [spec.embedding.name]
    x = torch.randn(batch, spec.in_channels, *spec.input_size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad(), TapSet(model, names) as taps:
        logits = model(x)
        return dict(taps.out), logits


def check_spec_against_forward(spec: ModelSpec, model: torch.nn.Module) -> dict:
    out, logits = forward_taps(model, spec)
    assert logits.shape == (2, spec.num_classes)
    assert spec.taps, "a model must declare taps"
    h = spec.input_size[0]
    for t in spec.taps:
        f = out[t.name]
        assert f.dim() == 4 and f.shape[0] == 2, t
        assert f.shape[1] == t.channels, t
        assert tuple(f.shape[2:]) == t.size, t
        assert t.stride == max(1, round(h / f.shape[2])), t
    sizes = [t.size[0] for t in spec.taps]
    assert sizes == sorted(sizes, reverse=True), "taps must be ordered from shallow to deep"
    emb = as_vector(out[spec.embedding.name])
    assert emb.shape == (2, spec.embedding.dim)
    return out


def test_registry_is_populated():
    assert {"resnet8", "resnet20", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn_40_2", "wrn_16_2",
            "vgg8", "vgg13", "cnn3", "preact_resnet18"} <= set(NATIVE)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", NATIVE)
def test_native_model_taps_match_forward(name, shape):
    channels, size = SHAPES[shape]
    spec, model = create_model(name, DataShape(channels, 10, size))
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # specs travel as JSON in checkpoints
    assert spec.arch == name and spec.in_channels == channels and spec.input_size == size
    check_spec_against_forward(spec, model)
    # the spec alone rebuilds the same architecture (what loading a checkpoint relies on)
    again = create_model(spec).model
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert again.tap_names == spec.tap_names and again.embedding_name == spec.embedding.name


@pytest.mark.parametrize("name, taps, emb", [
    ("resnet20", [16, 32, 64], 64),
    ("resnet20-w0.5", [8, 16, 32], 32),
    ("cnn3", [16, 32, 64], 128),
    ("cnn3-w0.5", [8, 16, 32], 64),
    ("wrn_16_2-w0.5", [16, 32, 64], 64),
    ("resnet8x4-w0.25", [16, 32, 64], 64),
])
def test_width_multiplier_scales_channels(name, taps, emb):
    spec, model = create_model(name, DataShape(1, 10, (28, 28)))
    assert [t.channels for t in spec.taps] == taps and spec.embedding.dim == emb
    check_spec_against_forward(spec, model)
    assert spec.name == name


def test_width_changes_parameter_count():
    def n(name):
        return sum(p.numel() for p in create_model(name, DataShape(3, 10, (32, 32)))[1].parameters())

    full, half = n("resnet20"), n("resnet20-w0.5")
    assert 0.2 * full < half < 0.3 * full  # conv weights scale with width squared


def test_cnn3_structure_matches_the_paper():
    spec, model = create_model("cnn3", DataShape(1, 10, (28, 28)))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (0, 0)), (16, 32, (3, 3), (0, 0)), (32, 64, (3, 3), (0, 0))]
    assert [list(t.size) for t in spec.taps] == [[13, 13], [5, 5], [1, 1]]  # 28 -> 26/13 -> 11/5 -> 3/1


@pytest.mark.parametrize("name, rgb_only", [("timm:resnet18", False), ("tv:resnet18", True), ("tv:mobilenet_v2", True)])
def test_hub_models_expose_ordered_taps(name, rgb_only):
    spec, model = create_model(name, DataShape(1, 10, (32, 32)))
    assert spec.in_channels == (3 if rgb_only else 1)  # torchvision stems stay RGB; data gets repeated
    assert len(spec.taps) >= 4
    strides = [t.stride for t in spec.taps]
    assert strides == sorted(set(strides)), strides  # strictly increasing
    assert strides[-1] == 32
    out = check_spec_against_forward(spec, model)
    assert spec.embedding.name.endswith(":in")
    assert spec.embedding.dim == {"timm:resnet18": 512, "tv:resnet18": 512, "tv:mobilenet_v2": 1280}[name]
    assert out[spec.embedding.name].shape == (2, spec.embedding.dim)
    again = create_model(spec).model.eval()  # rebuilds from the spec with the derived taps, 10-way head included
    assert again(torch.zeros(1, spec.in_channels, 32, 32)).shape == (1, 10)


def test_parse_name():
    assert parse_name("resnet20-w0.5") == ("resnet20", 0.5, None)
    assert parse_name("cnn3") == ("cnn3", 1.0, None)
    assert parse_name("wrn_40_2-w.25") == ("wrn_40_2", 0.25, None)
    assert parse_name("timm:resnet18") == ("timm:resnet18", 1.0, None)
    assert parse_name("timm:test_vit,patch_size=4,depth=2") == ("timm:test_vit", 1.0, {"patch_size": 4, "depth": 2})
    for bad, needle in [("resnet21", "did you mean 'resnet20'"), ("resnet20-w0", "width multiplier"),
                        ("resnet20-w32", "width multiplier"), ("timm:", "give a model name after the prefix")]:
        with pytest.raises(BadInput, match=needle):
            parse_name(bad)


@pytest.mark.parametrize("name, needles", [
    ("resnet21", ["unknown architecture 'resnet21'", "did you mean 'resnet20'", "indistill models"]),
    ("cnn3-w0.5x", ["unknown architecture 'cnn3-w0.5x'"]),
    ("tv:resnet19", ["unknown torchvision model 'resnet19'", "did you mean 'resnet1"]),
    ("timm:resnet19", ["unknown timm model 'resnet19'", "did you mean 'resnet1"]),
])
def test_unknown_model_name_is_one_line(name, needles, cli, tmp_path):
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", name, "--data", "synthetic:1x28x28:4:40", "-o", str(out))
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_model_too_small_for_the_data_is_bad_input():
    with pytest.raises(BadInput, match="cannot build 'cnn3' for 1x16x16 inputs"):
        create_model("cnn3", DataShape(1, 10, (16, 16)))


def test_models_command_lists_every_native_model(cli):
    code, out, err = cli("models", "--json")
    assert code == 0, err
    assert err == ""  # --json: data only, on stdout
    rows = json.loads(out)
    assert sorted(r["name"] for r in rows) == sorted(NATIVE)
    by = {r["name"]: r for r in rows}
    assert [t["channels"] for t in by["resnet20"]["taps"]] == [16, 32, 64] and by["resnet20"]["embedding"]["dim"] == 64
    assert by["cnn3"]["embedding"] == {"name": "embed", "dim": 128}
    assert all(r["parameters"] > 0 and r["summary"] and r["family"] for r in rows)
    n20 = sum(p.numel() for p in create_model("resnet20", DataShape(3, 10, (32, 32)))[1].parameters())
    assert by["resnet20"]["parameters"] == n20


def test_models_command_table(cli):
    code, out, err = cli("models")
    assert code == 0 and out == b""  # without --json the table goes to stderr, stdout stays clean
    assert "resnet20" in err and "cnn3" in err
