"""`indistill export`: ONNX files and torch.export programs that give the checkpoint's outputs (logits or
embedding, normalisation outside or folded in, any batch size), proved by the parity check, which fails
(exit 1, nothing written) when the exported graph and the eager model disagree; bad input is one line,
exit 2, nothing written; ONNX without the extra names `pip install 'indistill[export]'`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


def _fresh(path: Path, arch: str, channels: int = 1, size: int = 32, classes: int = 10) -> Path:
    """An untrained checkpoint of `arch` for fashion-mnist-mini's shape (parity needs real, not trained, weights)."""
    from indistill_cli.io.history import write_model
    from indistill_cli.models import DataShape, create_model

    torch.manual_seed(0)
    spec, model = create_model(arch, DataShape(channels, classes, (size, size), [0.286], [0.353]))
    write_model(str(path), {k: v.detach() for k, v in model.state_dict().items()}, spec, [],
                {"dataset": {"name": "fashion-mnist-mini", "mean": [0.286], "std": [0.353],
                             "classes": [str(i) for i in range(classes)]}})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("export")
    return {"timm": _fresh(d / "timm.safetensors", "timm:test_resnet"),
            "tv": _fresh(d / "tv.safetensors", "tv:mobilenet_v2"),
            "teacher": _fresh(d / "teacher.safetensors", "cnn3")}


def _eager(ckpt: Path, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.models.taps import TapSet, as_vector
    from indistill_cli.models import create_model

    ck = load_checkpoint(ckpt)
    model = create_model(ck).model.eval()
    tap = ck.spec.embedding.name
    with torch.no_grad(), TapSet(model, [tap]) as taps:
        y = model(x)
        return y if output == "logits" else as_vector(taps.out[tap])


def _batch(ckpt: Path, n: int) -> torch.Tensor:
    """n test images of fashion-mnist-mini as the model sees them (normalised, 32x32, its channels)."""
    from indistill_cli.data import load_dataset, make_loader
    from indistill_cli.io.checkpoint import load_checkpoint

    spec = load_checkpoint(ckpt).spec
    ds = load_dataset("fashion-mnist-mini", 0.0)
    loader = make_loader(ds.test, ds.info, n, model_channels=spec.in_channels, model_size=spec.input_size)
    return next(iter(loader)).x.contiguous()


def _run(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The exported file on x: onnxruntime for .onnx, torch.export.load for .pt2; with its metadata."""
    from indistill_cli.models import export as ex

    if path.suffix == ".onnx":
        return ex.onnx_runner(str(path))(x), ex.onnx_metadata(str(path))
    run, meta = ex.pt2_runner(str(path))
    return run(x), meta


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_native_model_exports_logits_with_metadata_and_a_dynamic_batch(suffix, trained_cnn3, tmp_path, cli):
    out = tmp_path / f"m{suffix}"
    code, stdout, err = cli("export", str(trained_cnn3.path), "-o", str(out), "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["parity"]["max_abs_diff"] <= 1e-4 and s["parity"]["images"] == 32
    assert s["parity"]["inputs"] == "32 test images of fashion-mnist-mini"
    assert "parity: max |exported - eager| =" in err and "tolerance 1e-04" in err
    x = _batch(trained_cnn3.path, 5)  # neither the trace's batch (2) nor the parity batch (32)
    for xb in (x, x[:1]):
        got, meta = _run(out, xb)
        assert torch.allclose(got, _eager(trained_cnn3.path, xb), atol=1e-4)
    meta = {k: json.loads(v) if k in ("mean", "std", "input_size", "classes") and isinstance(v, str) else v
            for k, v in meta.items()}
    assert meta["mean"] == [0.286] and meta["std"] == [0.353] and meta["input_size"] == [32, 32]
    assert meta["normalization"] == "outside" and meta["output"] == "logits"
    assert meta["source_sha256"] == s["metadata"]["source_sha256"] and meta["classes"][1] == "Trouser"
    assert meta["serving"] == "28x28 images zero-padded (centred) to 32x32"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_embedding_with_normalisation_folded_in(suffix, trained_cnn3, tmp_path, cli):
    out = tmp_path / f"emb{suffix}"
    code, stdout, err = cli("export", str(trained_cnn3.path), "-o", str(out), "--output", "embedding",
                            "--include-normalize", "--json", "-q")
    assert code == 0, err
    assert json.loads(stdout)["metadata"]["output_dim"] == 64
    x = _batch(trained_cnn3.path, 4)
    pixels = x * 0.353 + 0.286  # what a deployer feeds: pixels scaled to [0, 1]
    got, meta = _run(out, pixels)
    assert got.shape == (4, 64)
    assert torch.allclose(got, _eager(trained_cnn3.path, x, "embedding"), atol=1e-4)
    assert meta["normalization"] == "inside" and meta["output"] == "embedding" and meta["embedding_tap"] == "embed"


@pytest.mark.parametrize("kind", ["timm", "tv"])
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_timm_and_torchvision_models_export_with_parity(kind, suffix, models, tmp_path, cli):
    out = tmp_path / f"{kind}{suffix}"
    code, stdout, err = cli("export", str(models[kind]), "-o", str(out), "--json", "--parity-images", "8")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["parity"]["max_abs_diff"] <= 1e-4 and out.exists()
    x = _batch(models[kind], 3)
    got, _ = _run(out, x)
    assert torch.allclose(got, _eager(models[kind], x), atol=1e-4)


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_parity_fails_when_the_eager_model_changes_after_export(suffix, trained_cnn3, tmp_path, cli, monkeypatch):
    """A weight perturbed between export and check: exit 1, the difference named, nothing written."""
    from indistill_cli.stages import export as stage

    name = "to_onnx" if suffix == ".onnx" else "to_pt2"
    original = getattr(stage.ex, name)

    def export_then_perturb(module, example, meta):
        result = original(module, example, meta)
        with torch.no_grad():
            next(module.model.parameters()).add_(0.5)
        return result

    monkeypatch.setattr(stage.ex, name, export_then_perturb)
    out = tmp_path / f"m{suffix}"
    code, stdout, err = cli("export", str(trained_cnn3.path), "-o", str(out))
    line = assert_one_line_error(code, err, "parity: max |exported - eager| =", "does not reproduce the checkpoint",
                                 "nothing written", exit_code=1)
    assert float(line.split("= ")[1].split(" ")[0]) > 1e-4
    assert stdout == b"" and list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_line_and_write_nothing(trained_cnn3, models, tmp_path, cli):
    ck = str(trained_cnn3.path)
    pruned, emb = tmp_path / "pruned.safetensors", tmp_path / "emb.safetensors"
    assert cli("prune", str(models["teacher"]), "--like", "cnn3-w0.5", "-o", str(pruned), "-q")[0] == 0
    assert cli("retrieve", ck, "--data", "synthetic:1x28x28:10:40", "--export", str(emb), "-q")[0] == 0
    from safetensors.torch import save

    adapters = tmp_path / "s.adapters.safetensors"
    adapters.write_bytes(save({"kd/w": torch.zeros(2)}, metadata={"format": "indistill-adapters/1", "methods": "[]"}))
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    out = tmp_path / "m.onnx"
    cases = [((str(pruned), "-o", str(out)), "is a pruned teacher in probe mode"),
             ((str(emb), "-o", str(out)), "is an embeddings file"),
             ((str(adapters), "-o", str(out)), "is a KD adapters sidecar"),
             ((str(tmp_path / "nope.safetensors"), "-o", str(out)), "checkpoint not found"),
             ((ck, "-o", str(existing)), "exists; pass --force"),
             ((ck, "-o", str(tmp_path / "m.bin")), "name it .onnx, .pt2 or .safetensors (a plain state dict), or give --format"),
             ((ck, "-o", str(out), "--format", "tflite"), "--format must be auto, onnx, torch-export or state-dict"),
             ((ck, "-o", str(out), "--output", "features"), "--output must be logits or embedding"),
             ((ck, "-o", str(tmp_path / "w.safetensors"), "--output", "embedding"), "--format state-dict writes"),
             ((ck, "-o", str(out), "--tolerance", "0"), "--tolerance must be a positive number"),
             ((ck, "-o", str(out), "--parity-images", "0"), "--parity-images must be in 1..4096")]
    for args, needle in cases:
        code, stdout, err = cli("export", *args)
        assert_one_line_error(code, err, needle)
        assert stdout == b""
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pruned.safetensors", "emb.safetensors",
                                                                "s.adapters.safetensors", "exists.onnx"])


def test_an_unsupported_op_is_one_line(trained_cnn3, tmp_path, cli, monkeypatch):
    """An op neither ONNX exporter knows (the TorchScript one's C++ graph dump kept off stdout)."""
    from indistill_cli.stages import export as stage

    build = stage.create_model

    def odd(ck):
        built = build(ck)
        forward = built.model.forward
        built.model.forward = lambda x: forward(x) + torch.special.bessel_j0(x).mean()
        return built

    monkeypatch.setattr(stage, "create_model", odd)
    out = tmp_path / "m.onnx"
    code, stdout, err = cli("export", str(trained_cnn3.path), "-o", str(out), "-q")
    assert_one_line_error(code, err, "cannot export to ONNX", "special_bessel_j0")
    assert stdout == b"" and not out.exists()


def test_onnx_without_the_extra_names_the_pip_command(trained_cnn3, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    out = tmp_path / "m.onnx"
    code, _, err = cli("export", str(trained_cnn3.path), "-o", str(out))
    assert_one_line_error(code, err, "ONNX export needs onnx and onnxruntime: pip install 'indistill[export]'")
    assert not out.exists()
    code, _, err = cli("export", str(trained_cnn3.path), "-o", str(tmp_path / "m.pt2"), "-q")  # .pt2 needs neither
    assert code == 0, err


def test_parity_on_random_inputs_when_the_dataset_is_not_here(tmp_path, cli):
    from indistill_cli.io.history import write_model
    from indistill_cli.models import DataShape, create_model

    spec, model = create_model("cnn3-w0.5", DataShape(3, 10, (32, 32), [0.5] * 3, [0.25] * 3))
    ck = tmp_path / "c.safetensors"
    write_model(str(ck), model.state_dict(), spec, [], {"dataset": {"name": "imagefolder:/nowhere"}})
    code, stdout, err = cli("export", str(ck), "-o", str(tmp_path / "c.onnx"), "--json")
    assert code == 0, err
    assert "warning: parity checked on random inputs" in err
    assert json.loads(stdout)["parity"]["inputs"] == "32 random inputs"
