"""`indistill import`: a teacher trained elsewhere (a torch.save state dict, a DDP training checkpoint, a
timm safetensors file) becomes an indistill checkpoint whose logits are the eager model's; a pickled whole
model, a wrong head, mismatched keys and an offline hub id are one line, exit 2, nothing written; every
command handed a foreign file names the import command; `export --format state-dict` is the way back
(timm loads it with `checkpoint_path=`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = ("--data", "fashion-mnist-mini")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Real foreign files made the ways users make them, and the eager models behind them."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("import")
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    for m in r18.modules():  # non-trivial running statistics, so eval-mode logits test them too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(r18.state_dict(), d / "r18.pth")
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in r18.state_dict().items()}},
               d / "r18_ddp.pth")
    torch.save(r18, d / "whole.pth")
    tm = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(d / "timm.safetensors"))
    return {"dir": d, "r18": r18, "timm": tm}


def _imported_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.models import create_model

    model = create_model(load_checkpoint(path)).model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["r18.pth", "r18_ddp.pth"])
def test_state_dict_import_gives_the_eager_logits(cli, files, name):
    d = files["dir"]
    out = d / f"{name}.safetensors"
    code, stdout, err = cli("import", str(d / name), "--arch", "tv:resnet18", *DATA, "-o", str(out), "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["tensors"] == 122 and s["split"] == "val" and s["n"] == 1000 and 0 <= s["top1"] <= 1
    assert "val top-1" in err and ("prefix 'module.' removed" in err) == (name == "r18_ddp.pth")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = files["r18"](x)
    assert torch.equal(_imported_logits(out, x), want)
    from indistill_cli.io.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    assert ck.spec.in_channels == 3 and list(ck.spec.input_size) == [32, 32]  # RGB weights keep their stem
    assert ck.spec.norm == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    import hashlib

    entry = ck.history[-1]
    assert entry["parents"][0]["sha256"] == hashlib.sha256((d / name).read_bytes()).hexdigest()


def test_timm_safetensors_round_trip_through_state_dict_export(cli, files):
    import timm

    d = files["dir"]
    ck, back = d / "timm_in.safetensors", d / "timm_back.safetensors"
    code, _, err = cli("import", str(d / "timm.safetensors"), "--arch", "timm:resnet10t", *DATA, "-o", str(ck))
    assert code == 0, err
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        want = files["timm"](x)
    assert torch.equal(_imported_logits(ck, x), want)
    code, _, err = cli("export", str(ck), "--format", "state-dict", "-o", str(back))
    assert code == 0, err
    assert "parity: max |exported - eager| = 0.00e+00" in err and "checkpoint_path=" in err
    m = timm.create_model("resnet10t", num_classes=10, in_chans=1, checkpoint_path=str(back)).eval()
    with torch.no_grad():
        assert torch.equal(m(x), want)


def test_compiled_weights_and_their_ema_from_one_training_checkpoint(cli, tmp_path):
    """A timm-style training checkpoint: the live weights saved from a torch.compile'd model (`_orig_mod.`)
    under 'model', the EMA weights from a DDP one (`module.`) under 'model_ema'. Plain import takes the live
    weights, `--ema` the EMA ones, each giving exactly its own model's logits."""
    from indistill_cli.models import DataShape, create_model

    shape = DataShape(1, 10, (32, 32))
    _, live = create_model("cnn3-w0.5", shape, seed=0)
    _, ema = create_model("cnn3-w0.5", shape, seed=1)
    torch.save({"epoch": 9, "model": {"_orig_mod." + k: v for k, v in live.state_dict().items()},
                "model_ema": {"module." + k: v for k, v in ema.state_dict().items()}}, tmp_path / "ckpt.pth")
    x = torch.randn(3, 1, 32, 32)
    for flag, want in (((), live), (("--ema",), ema)):
        out = tmp_path / f"in{len(flag)}.safetensors"
        code, _, err = cli("import", str(tmp_path / "ckpt.pth"), "--arch", "cnn3-w0.5", *DATA, *flag, "-o", str(out))
        assert code == 0, err
        assert ("'_orig_mod.'" if not flag else "'module.'") in err
        with torch.no_grad():
            assert torch.equal(_imported_logits(out, x), want.eval()(x))


def test_pickled_whole_model_refused_in_one_line(cli, files):
    d = files["dir"]
    code, _, err = cli("import", str(d / "whole.pth"), "--arch", "tv:resnet18", *DATA, "-o", str(d / "w.safetensors"))
    assert_one_line_error(code, err, "whole.pth", "torch.save(model.state_dict()")
    assert not (d / "w.safetensors").exists()


def test_foreign_file_names_the_import_command(cli, files):
    d = files["dir"]
    for name in ("r18.pth", "timm.safetensors"):
        code, _, err = cli("evaluate", str(d / name), *DATA)
        assert_one_line_error(code, err, f"indistill import {d / name} --arch")


def test_wrong_arch_lists_missing_and_unexpected_keys(cli, files):
    d = files["dir"]
    code, _, err = cli("import", str(d / "r18.pth"), "--arch", "tv:resnet34", *DATA, "-o", str(d / "x.safetensors"))
    assert_one_line_error(code, err, "does not match tv:resnet34", "missing (layer1.2.")
    code, _, err = cli("import", str(d / "r18.pth"), "--arch", "tv:mobilenet_v2", *DATA, "-o", str(d / "x.safetensors"))
    assert_one_line_error(code, err, "unexpected", "--ignore")
    assert not (d / "x.safetensors").exists()


def test_hub_id_offline_is_one_line(cli, files):
    code, _, err = cli("import", "timm:resnet18.a1_in1k", *DATA, "-o", str(files["dir"] / "hub.safetensors"))
    assert_one_line_error(code, err, "HF_HUB_OFFLINE")


def test_import_records_its_command_and_rerun_repeats_it(cli, files, tmp_path):
    """`import` is a settings command like the others: its checkpoint records the command (`inspect --command`
    prints it with the file's sha256), `rerun` gives the same tensors; an import of a hub id, whose weights may
    change, is refused in one line."""
    from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    d, out = files["dir"], tmp_path / "imp.safetensors"
    code, _, err = cli("import", str(d / "r18.pth"), "--arch", "tv:resnet18", *DATA, "-o", str(out))
    assert code == 0, err
    code, stdout, err = cli("inspect", str(out), "--command", "--json")
    assert code == 0, err
    shown = json.loads(stdout)
    assert shown["argv"][:4] == ["indistill", "import", str(d / "r18.pth"), "--arch"]
    assert "--expect-sha256" in shown["argv"] and shown["config"]["arch"] == "tv:resnet18"
    code, stdout, err = cli("rerun", str(out), "-o", str(tmp_path / "again.safetensors"), "--json")
    assert code == 0, err
    same = json.loads(stdout)
    assert same["bitwise_equal"] and same["tensors"] == 122 and same["differing"] == 0
    ck = load_checkpoint(out)  # as if it had come from the hub: no file read
    rec = ck.history[-1]["command"]
    rec["config"] = {**rec["config"], "source": "timm:resnet18.a1_in1k", "arch": None}
    rec["inputs"] = {}
    hub = tmp_path / "hub.safetensors"
    save_checkpoint(Checkpoint(ck.role, ck.spec, ck.state, ck.extras, ck.history, ck.info), hub)
    code, _, err = cli("rerun", str(hub), "-o", str(tmp_path / "h2.safetensors"))
    assert_one_line_error(code, err, "imported from the hub id timm:resnet18.a1_in1k", "rerun repeats imports of files")
    assert not (tmp_path / "h2.safetensors").exists()


def test_wrong_head_refused_then_new_head_trains(cli, tmp_path):
    """A 7-class head on 10-class data: one line; --new-head gives a fresh head that `train CKPT` fine-tunes
    well above chance (the body's weights are the file's)."""
    from indistill_cli.models import DataShape, create_model

    _, m = create_model("cnn3-w0.5", DataShape(1, 7, (32, 32)), seed=0)
    src = tmp_path / "seven.pth"
    torch.save({"model": m.state_dict()}, src)
    out = tmp_path / "new.safetensors"
    code, _, err = cli("import", str(src), "--arch", "cnn3-w0.5", *DATA, "-o", str(out))
    assert_one_line_error(code, err, "7 classes, the data 10", "--new-head")
    assert not out.exists()
    code, stdout, err = cli("import", str(src), "--arch", "cnn3-w0.5", *DATA, "--new-head", "-o", str(out), "--json")
    assert code == 0, err
    assert "indistill train" in err and json.loads(stdout)["new_head"]
    from indistill_cli.io.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    body = [k for k in m.state_dict() if k in ck.state and m.state_dict()[k].shape == ck.state[k].shape]
    assert body and all(torch.equal(m.state_dict()[k], ck.state[k]) for k in body)
    tuned = tmp_path / "tuned.safetensors"
    code, stdout, err = cli("train", str(out), *DATA, "--epochs", "1", "--batch-size", "64", "-o", str(tuned), "--json")
    assert code == 0, err
    assert json.loads(stdout)["val_top1"] > 0.4  # chance 0.1


@pytest.mark.trained
def test_readme_own_teacher_block_runs_as_written(tmp_path, record):
    """README's "Your own teacher" block, run by bash as written: the student comes back through timm."""
    import os
    import re
    import subprocess
    import sys

    import timm
    from safetensors.torch import load_file

    from indistill_cli.io.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[1]
    block = re.search(r"<!-- own-teacher-example -->\s*```bash\n(.*?)```", (root / "README.md").read_text(), re.S)
    assert block, "README lost its own-teacher example"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("INDISTILL_QUIET", None)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [h["stage"] for h in load_checkpoint(tmp_path / "teacher.safetensors").history] == ["import"]
    s = load_checkpoint(tmp_path / "student.safetensors")
    assert [h["stage"] for h in s.history] == ["warmup", "distill"]
    m = timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=32, patch_size=8,
                          embed_dim=32, depth=2, num_heads=2, checkpoint_path=str(tmp_path / "student-weights.safetensors"))
    assert all(torch.equal(v, s.state[k]) for k, v in m.state_dict().items())
    assert load_file(str(tmp_path / "student-weights.safetensors")).keys() == m.state_dict().keys()
    # 10 classes: chance 0.1; measured 0.401 (AVX2/default ISA: 0.376)
    record("student val_top1", s.history[-1]["metrics"]["val_top1"], 0.2, ">=")
