"""The new KD methods on real data and through the CLI: a short run of each on `fashion-mnist-mini` from the
shared quick teacher lowers its loss and lands well above chance; their phases run inside `distill` and
resume; CTKD's temperature trains in its own lr group; `:pre` taps fail in one line where a model has
none; `indistill methods` and `distill --help` list them; the methods study runs end to end.

Every run is single-threaded and small (4000 training images, 2 epochs, the reference student optimiser).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stage_helpers import SEED, _bad, _ok, teacher  # noqa: F401 - fixtures
from test_resume import _sigint_at_call

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("--epochs", "2", "--val-fraction", "0.6", "--optimizer", "adam", "--lr", "1e-3", "--wd", "0", *SEED)
# the methods whose loss is read from their phase, and the parameters that make 2 epochs show a trend
# (no ramp: the warm-up factors would make a term grow)
PARAMS = {"reviewkd": ["reviewkd.warmup=0"], "dkd-ls": ["dkd-ls.warmup=0"], "ft": ["ft.init_epochs=1"],
          "ab": ["ab.init_epochs=2"], "fsp": ["fsp.init_epochs=2"], "ctkd": ["kd.learnable_temperature=1"]}
SLOW = ("kdsvd",)
LOW_CE = ("mlkd", "ctkd", "kd-ls")
ROWS = ["nst", "vid", "ofd", "reviewkd", "ft", "ab", "fsp", "kdsvd", "cc", "dist", "kd-ls", "dkd-ls", "mlkd", "ctkd"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods")


def _params(row: str) -> list[str]:
    return [a for p in PARAMS.get(row, []) for a in ("--param", p)]


@pytest.mark.trained
@pytest.mark.parametrize("row", ROWS)
def test_each_method_lowers_its_loss_and_trains_the_student(row, teacher, work, record):
    method = "kd" if row == "ctkd" else row
    out = work / f"{row}.safetensors"
    # 2000 images for the slowest method; all 9500 where CE has weight 0.1 (the student learns the labels slower)
    fewer = ("--val-fraction", "0.8") if row in SLOW else ("--val-fraction", "0.05") if row in LOW_CE else ()
    s = _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", method, *_params(row), "-o", out, *SHORT, *fewer)
    if row in ("ab", "fsp"):  # the transfer is the initialisation phase; the main loop is CE
        (ph,) = s["phases"]
        curve = [r[f"train_{method}.init"] for r in ph["history"]]
        assert ph["part"] == f"{method}.init" and ph["epochs"] == 2
    else:
        curve = [r[f"train_{method}"] for r in s["epochs"]]
    print(f"{row}: loss {curve}, val top-1 {s['val_top1']:.3f}")
    record("loss drop, first to last epoch (/|first|)", (curve[0] - curve[-1]) / abs(curve[0]), 0.0, ">")
    record("val_top1", s["val_top1"], 0.3, ">")
    if row == "ctkd":  # the learned temperature left its start (theta = 1) and is in the sidecar
        from safetensors.torch import load_file

        theta = load_file(str(work / f"{row}.adapters.safetensors"))["kd/ctkd.global_t"]
        assert theta.item() != 1.0


def test_phases_are_recorded_in_json_and_history(teacher, work):
    from indistill_cli.io.checkpoint import load_checkpoint

    out = work / "ft_fsp.safetensors"
    s = _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", "ft", "-m", "fsp", "--param", "ft.init_epochs=1",
            "--param", "fsp.init_epochs=1", "-o", out, "--epochs", "1", "--val-fraction", "0.8")
    assert [(p["part"], p["epochs"], len(p["history"])) for p in s["phases"]] == [("ft.paraphraser", 1, 1),
                                                                                   ("fsp.init", 1, 1)]
    assert s["phases"][0]["history"][0]["lr"] == 0.05  # its own optimiser: the run's kind and base lr, constant
    h = load_checkpoint(out).history[-1]
    assert [p["part"] for p in h["phases"]] == ["ft.paraphraser", "fsp.init"]
    from safetensors.torch import load_file

    side = load_file(str(work / "ft_fsp.adapters.safetensors"))
    assert {"ft/encoder.0.weight", "ft/decoder.0.weight", "ft/translator.0.weight", "fsp/connectors.1.0.weight"} <= set(side)


def test_ctkd_temperature_gets_its_own_lr():
    from indistill_cli.engine.optim import make_optimizer, trainable_groups
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.losses import get
    from indistill_cli.stages.distiller import Distiller, MethodSpec

    student = torch.nn.Linear(3, 4)
    kd = get("kd")([], [], 4, 10, learnable_temperature=1, temperature_lr=10)
    d = Distiller(student, [MethodSpec("kd", 0.9, {})], [[]], [kd], 0.1)
    groups = trainable_groups(d)
    assert [(len(p), m) for p, m in groups] == [(2, 1.0), (1, 10.0)]
    opt = make_optimizer(groups, OptimConfig("adam", 1e-3))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
    from indistill_cli.engine.loop import Engine
    from indistill_cli.engine.runtime import resolve_runtime

    class Loader(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    class B:
        x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])

    eng = Engine(resolve_runtime("cpu", "fp32", "off"), OptimConfig("adam", 1e-3, schedule="none"), 1)
    res = eng.fit(d, student, lambda b, e: d(b.x, b.y, None, e, _Teacher()), Loader([B()]))
    assert res.history and kd.ctkd.global_t.item() != 1.0


class _Teacher(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(3, 4)


def test_pre_relu_taps_fail_in_one_line_where_a_model_declares_none(teacher, work):
    _bad("distill", "-t", teacher, "-s", "timm:test_resnet", "-m", "ofd", "-o", work / "bad.safetensors", "--tap",
         "block3:layer4", "--val-fraction", "0.9", needles=("'layer4:pre'", "declares no pre-activation",
                                                            "OFD, AB and ReviewKD"))
    assert not (work / "bad.safetensors").exists()


def test_every_native_family_declares_its_pre_activations():
    from indistill_cli.models import list_models, make_spec
    from indistill_cli.models.taps import TapSet

    for e in list_models():
        if e.name in ("resnet110", "resnet56", "resnet44", "vgg19", "vgg16", "wrn_40_2", "resnet32x4"):
            continue  # the same code as their smaller siblings
        spec, model = make_spec(f"{e.name}-w0.25", 3, 10, (32, 32))
        names = [t["name"] for t in spec["taps"]]
        with torch.no_grad(), TapSet(model.eval(), names + [n + ":pre" for n in names]) as ts:
            model(torch.randn(2, 3, 32, 32))
            out = dict(ts.out)
        for n in names:
            assert out[n + ":pre"].shape == out[n].shape, (e.name, n)
            assert out[n + ":pre"].min() < 0, (e.name, n)  # before a ReLU: negatives survive
            if e.family in ("cnn", "vgg", "cifar-resnet"):  # the tap is the ReLU of its pre-activation
                assert torch.equal(torch.relu(out[n + ":pre"]), out[n]), (e.name, n)


def test_methods_command_lists_every_method_with_its_recipe(cli):
    from indistill_cli import losses

    code, out, err = cli("methods", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == losses.names() and len(rows) >= 20
    by = {r["name"]: r for r in rows}
    assert by["ofd"]["reads"] == "taps (pre-ReLU)" and by["reviewkd"]["reads"] == "taps (teacher's pre-ReLU) + embedding"
    assert by["kd"]["hparams"]["learnable_temperature"] == 0 and by["kd-ls"]["default_weight"] == 9.0
    assert by["mlkd"]["note"].startswith("single-view") and all(r["citation"] for r in rows)
    assert by["kd"]["ranges"]["temperature"] == {"low": 0.0, "high": None, "low_open": True, "high_open": False,
                                                 "integer": False, "text": "a finite number > 0"}
    assert by["dkd"]["ranges"]["warmup"]["text"] == "an integer >= 0"
    assert all(set(r["ranges"]) == set(r["hparams"]) for r in rows if r["name"] != "crd")  # crd: see test_methods
    code, _, err = cli("methods")
    text = " ".join(err.replace("│", " ").split())
    assert code == 0 and "22 KD methods" in err and "reviewkd" in err
    assert "temperature=4 (>0)" in text and "a weight >= 0" in text


def test_distill_help_lists_every_method(cli):
    from indistill_cli import losses

    code, out, err = cli("distill", "--help")
    assert code == 0
    text = " ".join(out.decode().replace("│", " ").split())
    assert all(re.search(rf"[ ,:]{re.escape(name)}[,;.]", text) for name in losses.names()), text


def test_methods_study_smoke_writes_results_and_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "methods.py"), "--preset", "smoke", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    rows = r["summary"]["rows"]
    assert set(rows) == {"kd", "ft"} and rows["ft"]["seeds"] == [0, 1]
    per = r["summary"]["per_seed"]["kd"]
    eq = next(c for c in rows["kd"]["comparisons"] if c["view"] == "equal total epochs")["top1"]
    assert eq["per_seed"] == [per["InD+M"][k]["top1"] - per["M+W"][k]["top1"] for k in ("0", "1")]
    assert r["runs"]["ft.ind.s0"]["phases"][0]["part"] == "ft.paraphraser"
    assert len(r["runs"]) == 2 + 2 + 2 * 2 * 3  # teacher, prune, a warmup per seed, 3 arms per method and seed
    for name in ("protocol.md", "results.md", "figure.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "Closing note" in (tmp_path / "results.md").read_text()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[methods] start" not in again.stderr


# ----------------------------------------------------------------------------- resume across phases

TINY = ("--data", "synthetic:1x28x28:10:160", "--val-fraction", "0.1", "--batch-size", "32", "--seed", "4")


@pytest.mark.parametrize("stop_at, where", [(2, "ft.paraphraser"), (7, "main")])
def test_interrupted_in_a_phase_or_after_it_resumes_bitwise(stop_at, where, tmp_path, cli, monkeypatch):
    """ft with a 1-epoch paraphraser phase (4 steps) then 2 epochs: SIGINT at step 2 (in the phase) or
    step 7 (in the main loop), then --resume: the same student and adapters as an uninterrupted run."""
    from safetensors.torch import load_file

    from indistill_cli.engine import resume

    code, _, err = cli("train", "cnn3", *TINY, "--epochs", "1", "-o", str(tmp_path / "t.safetensors"), "-q")
    assert code == 0, err
    args = ("distill", "-t", str(tmp_path / "t.safetensors"), "-s", "cnn3-w0.5", "-m", "ft", "--param",
            "ft.init_epochs=1", *TINY, "--epochs", "2", "--json")
    code, ref, err = cli(*args, "-o", str(tmp_path / "ref.safetensors"), "-q")
    assert code == 0, err
    out = tmp_path / "s.safetensors"
    with monkeypatch.context() as m:
        m.setattr(resume.RunState, "due", _sigint_at_call(stop_at))
        code, _, err = cli(*args, "-o", str(out))
    assert code == 130 and "--resume" in err, err
    side = torch.load(next((tmp_path / "s.resume").glob("state-*.pt")), weights_only=True)
    assert json.loads(side["key"])["part"] == where
    code, got, err = cli(*args, "-o", str(out), "--resume", "-q")
    assert code == 0, err
    for a, b in (("s", "ref"), ("s.adapters", "ref.adapters")):
        ta, tb = load_file(str(tmp_path / f"{a}.safetensors")), load_file(str(tmp_path / f"{b}.safetensors"))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), a
    def rows(summary: bytes) -> list:
        return [[{k: v for k, v in r.items() if k != "img_per_s"} for r in p["history"]]
                for p in json.loads(summary)["phases"]]

    assert rows(got) == rows(ref)


def test_phases_under_torchrun(tmp_path, cli):
    """Under DDP a phase that trains the student (AB) leaves its head without gradients: DDP is told so."""
    from test_ddp import _torchrun

    code, _, err = cli("train", "cnn3", *TINY, "--epochs", "1", "-o", str(tmp_path / "t.safetensors"), "-q")
    assert code == 0, err
    code, out, err = _torchrun("distill", "-t", str(tmp_path / "t.safetensors"), "-s", "cnn3-w0.5", "-m", "ab", "-m",
                               "ft", "--param", "ab.init_epochs=1", "--param", "ft.init_epochs=1", *TINY, "--epochs",
                               "1", "-o", str(tmp_path / "s.safetensors"), "--json", "-q", cwd=tmp_path)
    assert code == 0, err[:3000] + "\n...\n" + err[-3000:]  # the head too: which rank failed first, and where
    assert [p["part"] for p in json.loads(out)["phases"]] == ["ab.init", "ft.paraphraser"]
