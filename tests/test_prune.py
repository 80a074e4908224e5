"""Tests for `indistill prune` (indistill_cli.pruning, indistill_cli.stages.prune), checked against hand computations.

A real cnn3 teacher is trained for one epoch on the embedded Fashion-MNIST subset; a resnet20
"teacher" gets seeded random weights and BN statistics (training it would take too long here), which
is all that importance ranking and structural pruning need. Everything runs single-threaded: on a
shared 2-core machine two OpenMP threads are many times slower than one.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn as nn

from conftest import suite_seed
from stage_helpers import DATA, _bad, _cli, _ok, info  # noqa: F401 - info is a fixture

from indistill_cli import pruning as P
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.io.history import write_model
from indistill_cli.models import DataShape, ModelSpec, create_model
from indistill_cli.models.structural import replay_plan
from indistill_cli.models.taps import TapSet
from indistill_cli.pruning.targets import FlowPair, pairs_from_teacher

VAL = ["--val-fraction", "0.02"]  # 200 validation images: enough to evaluate, cheap on a CPU

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights and BN statistics/affines that differ per channel (like a trained network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def _fake_teacher(path, name: str, info, seed: int = 0, classes: int | None = None) -> str:
    spec, model = create_model(name, DataShape(info.in_channels, classes or info.num_classes, info.image_size, info.mean, info.std))
    _randomise(model, seed)
    d = info.as_dict()
    d["num_classes"] = classes or info.num_classes
    write_model(str(path), {k: v.detach() for k, v in model.state_dict().items()}, spec, [], {"dataset": d})
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("prune")


@pytest.fixture(scope="module")
def cnn3_teacher(work) -> str:
    """A real (1 epoch) cnn3 teacher trained through the library."""
    from indistill_cli.stages.commands import TrainSettings
    from indistill_cli.stages.options import RunOptions
    from indistill_cli.stages.train import run_train

    out = work / "cnn3.safetensors"
    os.environ["INDISTILL_QUIET"] = "1"
    try:
        run_train(TrainSettings(model="cnn3", output=str(out), epochs=1, last=False,
                                opts=RunOptions(data=DATA, val_fraction=0.02, seed=suite_seed())))
    finally:
        os.environ.pop("INDISTILL_QUIET", None)
    return str(out)


@pytest.fixture(scope="module")
def r20_teacher(work, info) -> str:
    return _fake_teacher(work / "resnet20.safetensors", "resnet20", info, seed=1)


def _teacher_model(path: str) -> tuple[nn.Module, dict]:
    ck = load_checkpoint(path)
    return create_model(ck).model.eval(), ck.spec


def _spec(name: str, info) -> ModelSpec:
    return create_model(name, DataShape(info.in_channels, info.num_classes, info.image_size))[0]


def _topk_sorted(imp: torch.Tensor, k: int) -> list[int]:
    """Hand selection: the k largest, ties to the lower index, listed in original order."""
    order = sorted(range(len(imp)), key=lambda i: (-float(imp[i]), i))
    return sorted(order[:k])


# ----------------------------------------------------------------------------- importance and selection

def test_select_channels_ties_and_order():
    imp = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    assert P.select_channels(imp, 2).tolist() == [1, 2]
    assert P.select_channels(imp, 4).tolist() == [1, 2, 3, 4]
    assert P.select_channels(imp, 6).tolist() == list(range(6))
    assert P.select_channels(imp, 2).dtype == torch.int64


@pytest.mark.trained
def test_l1_keeps_top_filters_cnn3(cnn3_teacher, work, record):
    """Kept indices = top-L1 filters of each block's conv (sum |W[k]|), in original order."""
    teacher, spec = _teacher_model(cnn3_teacher)
    out = work / "cnn3_probe.safetensors"
    summary = _ok("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, *VAL, "--seed", str(suite_seed()))
    ck = load_checkpoint(out, role="pruned-teacher")
    widths = {"block1": 8, "block2": 16, "block3": 32}
    for tap, k in widths.items():
        w = teacher.get_submodule(tap)[0].weight.detach()
        hand = _topk_sorted(w.abs().sum(dim=(1, 2, 3)), k)
        kept = ck.extras[f"keep/{tap}"]
        assert kept.dtype == torch.int64
        assert kept.tolist() == hand
        assert kept.tolist() == sorted(kept.tolist())
    # the checkpoint layout: the full teacher, the pruning record, the teacher's history + prune
    assert ck.spec == spec and set(ck.state) == set(teacher.state_dict())
    pr = ck.info["pruning"]
    assert pr["criterion"] == "l1" and pr["mode"] == "probe" and pr["student"] == "cnn3-w0.5"
    assert pr["student_spec"]["taps"][0]["channels"] == 8
    assert [(p["teacher_tap"], p["student_tap"], p["before"], p["kept"]) for p in pr["pairs"]] == [
        ("block1", "block1", 16, 8), ("block2", "block2", 32, 16), ("block3", "block3", 64, 32)]
    assert pr["pairs"][0]["teacher_size"] == [15, 15] and pr["pairs"][0]["student_size"] == [15, 15]
    assert ck.info["dataset"]["name"] == DATA
    assert ck.stage_names() == ["train", "prune"]
    m = ck.history[-1]["metrics"]
    assert m["top1_before"] == m["top1_after"]  # probe checkpoint = the (trained) teacher
    record("top1_before", m["top1_before"], 0.3, ">")
    # JSON summary
    assert summary["mode"] == "probe" and summary["criterion"] == "l1"
    assert [(p["before"], p["after"]) for p in summary["pairs"]] == [(16, 8), (32, 16), (64, 32)]
    assert summary["accuracy"]["teacher"] == m["top1_before"]
    assert 0 <= summary["accuracy"]["chained"] <= 1 and summary["wall_s"] > 0
    # `indistill evaluate` runs a probe checkpoint as the full teacher
    ev = _ok("evaluate", out, "--split", "val", *VAL)
    assert ev["top1"] == pytest.approx(summary["accuracy"]["teacher"])


def test_resnet_group_importance_is_sum_over_coupled_producers(r20_teacher, info):
    teacher, spec = _teacher_model(r20_teacher)
    student = _spec("resnet20-w0.5", info)
    pairs = P.pair_taps(spec, student)
    mods = dict(teacher.named_modules())
    producers = {
        "layer1": ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
        "layer2": ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2"],
        "layer3": ["layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2", "layer3.2.conv2"],
    }
    bns = {
        "layer1": ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"],
        "layer2": ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2", "layer2.2.bn2"],
        "layer3": ["layer3.0.bn2", "layer3.0.downsample.1", "layer3.1.bn2", "layer3.2.bn2"],
    }
    for criterion in ("l1", "l2", "bn-scale"):
        plans = P.plan_pruning(teacher, spec, student, pairs, criterion)
        for p in plans:
            assert sorted(p.group_producers) == sorted(producers[p.teacher_tap])
            if criterion == "bn-scale":
                hand = sum(mods[n].weight.detach().abs().double() for n in bns[p.teacher_tap])
            else:
                ws = [mods[n].weight.detach().double().flatten(1) for n in producers[p.teacher_tap]]
                hand = sum(w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt() for w in ws)
            torch.testing.assert_close(p.importance, hand, rtol=1e-12, atol=1e-12)
            assert p.keep.tolist() == _topk_sorted(hand, p.kept)


def test_producers_of_native_and_timm_models(info):
    """The conv found for each tap and its coupled group, for plain, residual, pre-activation and hub models."""
    cases = {
        "wrn_16_1": {"block1": ("block1.1.conv2", {"conv1", "block1.0.conv2", "block1.1.conv2"}),
                     "relu": ("block3.1.conv2", {"block3.0.conv2", "block3.0.shortcut", "block3.1.conv2"})},
        "vgg8-w0.25": {"stage0": ("stage0.0", {"stage0.0"}), "stage4": ("stage4.0", {"stage4.0"})},
        "preact_resnet18-w0.25": {"layer2": ("layer2.1.conv2", {"layer2.0.conv2", "layer2.0.shortcut",
                                                                "layer2.1.conv2"}),
                                  "relu": ("layer4.1.conv2", {"layer4.0.conv2", "layer4.0.shortcut",
                                                              "layer4.1.conv2"})},
        "timm:resnet18": {"act1": ("conv1", {"conv1", "layer1.0.conv2", "layer1.1.conv2"}),
                          "layer2": ("layer2.1.conv2", {"layer2.0.conv2", "layer2.0.downsample.0",
                                                        "layer2.1.conv2"})},
    }
    for name, expect in cases.items():
        spec, model = create_model(name, DataShape(info.in_channels, info.num_classes, info.image_size))
        assert set(expect) <= set(spec.tap_names), (name, spec.taps)
        prods = P.find_producers(model, spec, list(expect))
        dg = P.build_graph(model, spec)
        mods = dict(model.named_modules())
        for tap, (producer, group) in expect.items():
            assert prods[tap] == producer, (name, tap)
            g = P.tap_group(dg, model, producer)
            assert set(P.group_producers(dg, g, model)) == group, (name, tap)
            c = spec.tap(tap).channels
            hand = sum(mods[n].weight.detach().double().abs().flatten(1).sum(1) for n in group)
            torch.testing.assert_close(P.group_importance(dg, g, c, "l1"), hand)


def test_activation_and_bn_scale_by_hand(cnn3_teacher, info):
    teacher, spec = _teacher_model(cnn3_teacher)
    student = _spec("cnn3-w0.5", info)
    pairs = P.pair_taps(spec, student)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 1, 32, 32, generator=g) for _ in range(2)]
    plans = P.plan_pruning(teacher, spec, student, pairs, "activation", batches=batches)
    with torch.no_grad(), TapSet(teacher, ["block2"]) as ts:
        acts = []
        for x in batches:
            ts.forward(x)
            acts.append(ts.out["block2"])
    hand = torch.cat(acts).double().abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(plans[1].importance, hand)
    assert plans[1].keep.tolist() == _topk_sorted(hand, 16)
    plans = P.plan_pruning(teacher, spec, student, pairs, "bn-scale")
    gamma = teacher.block3[1].weight.detach().abs().double()
    torch.testing.assert_close(plans[2].importance, gamma)


@pytest.mark.parametrize("criterion", ["l2", "bn-scale", "activation"])
def test_each_criterion_runs(cnn3_teacher, work, criterion):
    out = work / f"cnn3_{criterion}.safetensors"
    s = _ok("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, "--criterion", criterion, *VAL)
    ck = load_checkpoint(out)
    assert ck.info["pruning"]["criterion"] == criterion == s["criterion"]
    assert [len(ck.extras[f"keep/block{i}"]) for i in (1, 2, 3)] == [8, 16, 32]


# ----------------------------------------------------------------------------- probe targets

def test_probe_targets_are_the_teachers_activations_at_kept_channels(cnn3_teacher, r20_teacher, work):
    for teacher_path, like, name in ((cnn3_teacher, "cnn3-w0.5", "cnn3"), (r20_teacher, "resnet20-w0.5", "r20")):
        out = work / f"{name}_probe_targets.safetensors"
        if not out.exists():
            _ok("prune", teacher_path, "--like", like, "-o", out, *VAL)
        ck = load_checkpoint(out, role="pruned-teacher")
        full, _ = _teacher_model(teacher_path)
        model = create_model(ck).model.eval()  # what warmup loads: the full teacher
        pairs = pairs_from_teacher(ck, ModelSpec.from_dict(ck.info["pruning"]["student_spec"]))
        taps = [p.teacher_tap for p in pairs]
        x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
        flow = FlowPair(model, nn.Identity(), pairs)  # the warmup's target path
        targets = flow.targets(x, len(pairs) - 1)
        with torch.no_grad(), TapSet(full, taps) as ref:
            ref.forward(x)
        assert len(targets) == len(taps)
        for tap, tgt in zip(taps, targets):
            keep = ck.extras[f"keep/{tap}"]
            assert not tgt.requires_grad
            assert torch.equal(tgt, ref.out[tap][:, keep])


# ----------------------------------------------------------------------------- chained

def _tap_widths(model: nn.Module, taps: list[str], x: torch.Tensor) -> dict[str, int]:
    with torch.no_grad(), TapSet(model, taps) as ts:
        ts.forward(x)
        return {t: int(ts.out[t].shape[1]) for t in taps}


@pytest.mark.trained
def test_chained_cnn3_round_trip(cnn3_teacher, work, info, record):
    teacher, spec = _teacher_model(cnn3_teacher)
    student = _spec("cnn3-w0.5", info)
    plans = P.plan_pruning(teacher, spec, student, P.pair_taps(spec, student), "l1", "chained")
    pruned, pspec = P.chained_model(teacher, spec, plans)
    pruned.eval()
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    assert _tap_widths(pruned, ["block1", "block2", "block3"], x) == {"block1": 8, "block2": 16, "block3": 32}
    assert [t.channels for t in pspec.taps] == [8, 16, 32]
    assert pspec.embedding.dim == 128  # the fc after the last block keeps its width
    # the first block has no pruned input: its kept channels are exactly the teacher's
    keep1 = plans[0].keep
    with torch.no_grad(), TapSet(pruned, ["block1"]) as a, TapSet(teacher, ["block1"]) as b:
        a.forward(x)
        b.forward(x)
    assert torch.equal(a.out["block1"], b.out["block1"][:, keep1])
    # save + load rebuilds the same network (plan replayed, state dict loads strictly)
    path = work / "cnn3_chained_api.safetensors"
    write_model(str(path), pruned.state_dict(), pspec, [], {"pruning": {}}, role="pruned-teacher")
    again = create_model(load_checkpoint(path)).model.eval()
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    # and through the CLI, with fine-tuning
    out = work / "cnn3_chained.safetensors"
    s = _ok("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, "--mode", "chained", "--finetune", "1",
            "--batch-size", "256", *VAL, "--seed", str(suite_seed()))
    ck = load_checkpoint(out, role="pruned-teacher")
    assert ck.spec.structural_prune[0]["module"] == "block1.0"
    assert [e["keep"] for e in ck.spec.structural_prune] == [p.keep.tolist() for p in plans]
    assert s["accuracy"]["finetuned"] == s["accuracy"]["pruned_checkpoint"]
    record("accuracy finetuned", s["accuracy"]["finetuned"], 0.3, ">")
    rebuilt = create_model(ck).model
    assert _tap_widths(rebuilt.eval(), ["block1", "block2", "block3"], x) == {"block1": 8, "block2": 16, "block3": 32}
    ev = _ok("evaluate", out, "--split", "val", *VAL)
    assert ev["top1"] == pytest.approx(s["accuracy"]["pruned_checkpoint"])


def test_chained_resnet20_coupled_residual_channels(r20_teacher, work):
    out = work / "r20_chained.safetensors"
    s = _ok("prune", r20_teacher, "--like", "resnet20-w0.5", "-o", out, "--mode", "chained", *VAL)
    assert [(p["teacher_tap"], p["before"], p["after"]) for p in s["pairs"]] == [
        ("layer1", 16, 8), ("layer2", 32, 16), ("layer3", 64, 32)]
    ck = load_checkpoint(out, role="pruned-teacher")
    teacher, _ = _teacher_model(r20_teacher)
    pruned = create_model(ck).model.eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    assert _tap_widths(pruned, ["layer1", "layer2", "layer3"], x) == {"layer1": 8, "layer2": 16, "layer3": 32}
    k1, k2, k3 = (ck.extras[f"keep/layer{i}"] for i in (1, 2, 3))
    t, p = teacher.state_dict(), pruned.state_dict()
    # every producer of a stage's channels kept the same filters; consumers kept the same inputs
    for prod in ("conv1.weight", "layer1.0.conv2.weight", "layer1.2.conv2.weight", "bn1.running_mean"):
        assert torch.equal(p[prod], t[prod][k1])
    assert torch.equal(p["layer1.1.conv1.weight"], t["layer1.1.conv1.weight"][:, k1])
    assert torch.equal(p["layer2.0.downsample.0.weight"], t["layer2.0.downsample.0.weight"][k2][:, k1])
    assert torch.equal(p["fc.weight"], t["fc.weight"][:, k3])
    # the block-internal widths (not taps) are untouched
    assert p["layer1.0.conv1.weight"].shape[0] == 16
    # the rebuilt network is the one pruning made in memory (same plan, same weights)
    spec = load_checkpoint(r20_teacher).spec
    plans = P.plan_pruning(teacher, spec, ModelSpec.from_dict(ck.info["pruning"]["student_spec"]),
                           P.pruned_pairs(ck.info["pruning"]), "l1", "chained")
    in_memory, pspec = P.chained_model(teacher, spec, plans)
    assert pspec == ck.spec
    with torch.no_grad():
        assert torch.equal(in_memory.eval()(x), pruned(x))
    ev = _ok("evaluate", out, "--split", "val", *VAL)
    assert ev["top1"] == pytest.approx(s["accuracy"]["pruned_checkpoint"])


def test_structural_plan_errors(info):
    spec, model = create_model("cnn3", DataShape(info.in_channels, info.num_classes, info.image_size))
    bad = spec.replace(structural_prune=[{"module": "block9.0", "keep": [0], "channels": 16}])
    with pytest.raises(BadInput, match="block9.0"):
        replay_plan(model, bad)
    bad = spec.replace(structural_prune=[{"module": "block1.0", "keep": [3, 1], "channels": 16}])
    with pytest.raises(BadInput, match="ascending"):
        replay_plan(model, bad)


# ----------------------------------------------------------------------------- pairing

def test_pairing_equal_proportional_override(info, capsys):
    cnn = _spec("cnn3", info)
    small = _spec("cnn3-w0.5", info)
    assert P.pair_taps(cnn, small) == [("block1", "block1"), ("block2", "block2"), ("block3", "block3")]
    pre = _spec("preact_resnet18-w0.25", info)  # 4 taps
    assert pre.tap_names == ["layer1", "layer2", "layer3", "relu"]
    capsys.readouterr()
    assert P.pair_taps(pre, small) == [("layer1", "block1"), ("layer3", "block2"), ("relu", "block3")]
    assert "proportionally" in capsys.readouterr().err
    vgg = _spec("vgg8-w0.25", info)  # 5 taps, student with more taps than the teacher: each teacher tap once
    assert P.pair_taps(cnn, vgg) == [("block1", "stage1"), ("block2", "stage2"), ("block3", "stage4")]
    assert P.pair_taps(pre, vgg) == [("layer1", "stage0"), ("layer2", "stage2"), ("layer3", "stage3"),
                                     ("relu", "stage4")]
    # --pair replaces the default pairing, listed in student order
    assert P.pair_taps(pre, small, ["relu:block3", "layer2:block1"]) == [("layer2", "block1"), ("relu", "block3")]
    with pytest.raises(BadInput, match="did you mean 'layer2'"):
        P.pair_taps(pre, small, ["layr2:block1"])
    with pytest.raises(BadInput, match="unknown student tap 'blok1'"):
        P.pair_taps(pre, small, ["layer2:blok1"])
    with pytest.raises(BadInput, match="embedding"):
        P.pair_taps(pre, small, ["pool:block1"])
    with pytest.raises(BadInput, match="more than once"):
        P.pair_taps(pre, small, ["layer2:block1", "layer3:block1"])
    with pytest.raises(BadInput, match="TEACHER_TAP:STUDENT_TAP"):
        P.pair_taps(pre, small, ["layer2"])


def test_spatial_and_width_checks(info):
    cnn = _spec("cnn3", info)
    small = _spec("cnn3-w0.5", info)
    P.check_pairs(cnn, small, [("block1", "block2")])  # different sizes, same aspect: pooled later
    P.check_pairs(cnn, small, [("block3", "block1")])  # student larger spatially is fine
    with pytest.raises(BadInput, match="fewer than student"):
        P.check_pairs(small, cnn, [("block1", "block1")])
    odd = small.replace(taps=(dataclasses.replace(small.taps[0], size=(13, 6)), *small.taps[1:]))
    with pytest.raises(BadInput, match="aspect"):
        P.check_pairs(cnn, odd, [("block1", "block1")])
    odd = small.replace(taps=(dataclasses.replace(small.taps[0], size=(0, 0)), *small.taps[1:]))
    with pytest.raises(BadInput, match="empty"):
        P.check_pairs(cnn, odd, [("block1", "block1")])


# ----------------------------------------------------------------------------- CLI errors and streams

def test_cli_errors_are_one_line(cnn3_teacher, work, info):
    out = work / "never.safetensors"
    line = _bad("prune", "cnn3", "--like", "cnn3-w0.5", "-o", out)
    assert "trained weights" in line
    narrow = _fake_teacher(work / "narrow.safetensors", "cnn3-w0.25", info)
    assert "fewer than student" in _bad("prune", narrow, "--like", "cnn3-w0.5", "-o", out, *VAL)
    assert "did you mean" in _bad("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, "--pair", "blok1:block1")
    five = _fake_teacher(work / "five.safetensors", "cnn3-w0.5", info, classes=5)
    assert "classes" in _bad("prune", cnn3_teacher, "--like", five, "-o", out)
    assert "--mode chained" in _bad("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, "--finetune", "1")
    assert "criterion" in _bad("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", out, "--criterion", "l3")
    probe = work / "cnn3_probe.safetensors"
    if probe.exists():  # a pruned teacher is not a teacher
        assert "pruned-teacher" in _bad("prune", probe, "--like", "cnn3-w0.5", "-o", out)
    assert not out.exists()


def test_prune_to_stdout(cnn3_teacher):
    from indistill_cli.io.checkpoint import from_bytes

    res = _cli("prune", cnn3_teacher, "--like", "cnn3-w0.5", "-o", "-", "-q", *VAL)
    assert res.exit_code == 0, res.output
    ck = from_bytes(res.stdout_bytes)
    assert ck.role == "pruned-teacher" and ck.extras["keep/block2"].shape == (16,)
