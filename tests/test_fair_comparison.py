"""What a fair comparison of the warmup needs: checkpoint selection on what a run trains, one initial
student per seed whatever command builds it, images the model sees whole, one lr plan across warmup
and KD, the keep-flow option, and the pipeline's budget views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stage_helpers import DATA, SEED, _bad, _ok, _prune, _shared_file, teacher  # noqa: F401

from indistill_cli.engine.loop import Engine
from indistill_cli.engine.schedule import OptimConfig, lr_factor, resolve_select
from indistill_cli.errors import BadInput
from indistill_cli.metrics import retrieval_metrics


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, teacher) -> str:  # noqa: F811
    return _shared_file(tmp_path_factory, "cnn3_pruned_w05", _prune(teacher, "cnn3-w0.5"))


# ---------------------------------------------------------------------------------------- selection


def test_select_auto_picks_what_the_run_trains() -> None:
    assert resolve_select("auto", True, True, True) == "top1"
    assert resolve_select("auto", False, True, True) == "map"  # PKT without CE: the head is never trained
    assert resolve_select("auto", False, False, True) == "last"  # e.g. FitNet alone: neither head nor embedding
    assert resolve_select("auto", True, True, False) == "last"  # no validation split
    with pytest.raises(BadInput, match="no loss .* reaches the classifier head"):
        resolve_select("top1", False, True, True)
    with pytest.raises(BadInput, match="needs a validation split"):
        resolve_select("map", True, True, False)
    with pytest.raises(BadInput, match="must be auto, last, top1 or map"):
        resolve_select("best", True, True, True)


def test_leave_one_out_map_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    emb, lab = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    got = retrieval_metrics(emb, lab, emb, lab, "cosine", ks=(5,), exclude_self=True)
    aps = []
    for i in range(40):
        others = [j for j in range(40) if j != i]
        sims = torch.nn.functional.cosine_similarity(emb[i : i + 1], emb[others])
        order = torch.argsort(-sims, stable=True)
        rel = (lab[others][order] == lab[i]).double()
        if rel.sum() == 0:
            continue
        prec = torch.cumsum(rel, 0) / torch.arange(1, len(rel) + 1)
        aps.append(float((prec * rel).sum() / rel.sum()))
    assert got["num_database"] == 39
    assert got["map"] == pytest.approx(sum(aps) / len(aps), abs=1e-12)
    with pytest.raises(ValueError, match="queries to be the database"):
        retrieval_metrics(emb, lab, emb[:-1], lab[:-1], exclude_self=True)


@pytest.mark.trained
def test_distill_without_ce_keeps_the_best_validation_map_epoch(teacher, tmp_path, record) -> None:  # noqa: F811
    r = _ok("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", "pkt", "--ce", "0", "--epochs", "3", "--data", DATA,
            *SEED, "-o", tmp_path / "s.safetensors")
    assert r["select"] == "map"
    maps = [row["val_map"] for row in r["epochs"]]
    assert len(maps) == 3 and all(m < 1 for m in maps)
    record("min val_map over epochs", min(maps), 0.1, ">")  # 10 classes: chance mAP is about 0.1
    assert r["best_epoch"] == 1 + maps.index(max(maps))
    assert r["val_map"] == max(maps)


def test_select_refuses_a_head_no_loss_trains(teacher, tmp_path) -> None:  # noqa: F811
    _bad("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", "pkt", "--ce", "0", "--select", "top1", "--data", DATA,
         "-o", tmp_path / "s.safetensors", needles=("--select top1", "classifier head"))
    assert not (tmp_path / "s.safetensors").exists()


def test_warmup_keeps_its_last_epoch_only(pruned, tmp_path) -> None:
    _bad("warmup", "-t", pruned, "-s", "cnn3-w0.5", "--select", "map", "-o", tmp_path / "w.safetensors",
         needles=("--select map",))


@pytest.mark.trained
def test_train_select_last_and_map(tmp_path, record) -> None:
    two = ("train", "cnn3-w0.5", "--epochs", "2", "--no-last", *SEED)
    r = _ok(*two, "--select", "last", "-o", tmp_path / "a.safetensors")
    assert r["best_epoch"] == 2
    r = _ok(*two, "--select", "map", "-o", tmp_path / "b.safetensors")
    maps = [row["val_map"] for row in r["epochs"]]
    assert r["best_epoch"] == 1 + maps.index(max(maps))
    record("max val_map", max(maps), 0.4, ">")


# ---------------------------------------------------------------------------------------- paired starts


def test_every_command_starts_from_the_same_student(teacher, pruned, tmp_path, monkeypatch) -> None:  # noqa: F811
    """train, warmup, distill and pipeline given one seed start from bitwise-equal students (the teacher is
    built before the student in distill, after it in warmup: the order must not matter)."""
    from indistill_cli.engine import loop as engine
    from indistill_cli.stages.commands import DistillSettings, PipelineSettings, TrainSettings, WarmupSettings
    from indistill_cli.stages.distill import run_distill
    from indistill_cli.stages.pipeline import run_pipeline
    from indistill_cli.stages.options import RunOptions
    from indistill_cli.stages.train import run_train
    from indistill_cli.stages.warmup import run_warmup

    class Started(Exception):
        pass

    starts: list[dict[str, torch.Tensor]] = []

    def capture(self, trainable, keep, *a, **kw):
        starts.append({k: v.detach().clone() for k, v in keep.state_dict().items()})
        raise Started

    monkeypatch.setattr(engine.Engine, "fit", capture)
    opts = lambda: RunOptions(data=DATA, seed=7)  # noqa: E731
    adam = OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="none")
    calls = [
        lambda: run_train(TrainSettings(model="cnn3-w0.5", output=str(tmp_path / "a.safetensors"), epochs=1,
                                        opts=opts())),
        lambda: run_warmup(WarmupSettings(teacher=pruned, student="cnn3-w0.5", output=str(tmp_path / "b.safetensors"),
                                          optim=adam, opts=opts(), epochs_per_tap="1,1,1")),
        lambda: run_distill(DistillSettings(teacher=teacher, student="cnn3-w0.5", output=str(tmp_path / "c.safetensors"),
                                            method=["kd"], epochs=1, optim=adam, opts=opts())),
        lambda: run_pipeline(PipelineSettings(teacher=teacher, student="cnn3-w0.5", out=str(tmp_path / "p"),
                                              opts=opts(), epochs_per_tap="1,1,1", epochs=4, retrieve=False)),
        lambda: run_pipeline(PipelineSettings(teacher=teacher, student="cnn3-w0.5", out=str(tmp_path / "q"),
                                              opts=opts(), epochs=4, warmup=False, retrieve=False)),
    ]
    for call in calls:
        with pytest.raises(Started):
            call()
    assert len(starts) == 5
    for other in starts[1:]:
        assert other.keys() == starts[0].keys()
        assert all(torch.equal(starts[0][k], other[k]) for k in starts[0])
    # and the seed matters
    with pytest.raises(Started):
        run_train(TrainSettings(model="cnn3-w0.5", output=str(tmp_path / "d.safetensors"), epochs=1,
                                opts=RunOptions(data=DATA, seed=8)))
    assert not torch.equal(starts[-1]["block1.0.weight"], starts[0]["block1.0.weight"])


# ---------------------------------------------------------------------------------------- geometry


def test_28x28_sets_are_served_zero_padded_at_32() -> None:
    from indistill_cli.data import load_dataset, make_loader

    ds = load_dataset(DATA)
    assert ds.info.image_size == (32, 32) and ds.info.stored_size == (28, 28)
    assert ds.info.as_dict()["serving"] == "28x28 images zero-padded (centred) to 32x32"
    b = next(iter(make_loader(ds.test, ds.info, 8)))
    assert b.x.shape == (8, 1, 32, 32)
    black = -ds.info.mean[0] / ds.info.std[0]  # pixel 0 after normalisation
    border = torch.cat([b.x[..., :2, :].flatten(), b.x[..., -2:, :].flatten(), b.x[..., :, :2].flatten(),
                        b.x[..., :, -2:].flatten()])
    assert torch.allclose(border, torch.full_like(border, black))
    inner = (ds.test.images[:8].float() / 255 - ds.info.mean[0]) / ds.info.std[0]
    assert torch.allclose(b.x[..., 2:30, 2:30], inner, atol=1e-6)
    assert load_dataset(DATA, image_size=28).info.image_size == (28, 28)
    with pytest.raises(BadInput, match="--image-size"):
        load_dataset(DATA, image_size=3)


def test_cnn3_sees_the_whole_image_at_32_and_a_corner_at_28() -> None:
    from indistill_cli.models import DataShape, create_model
    from indistill_cli.models.coverage import describe

    spec, model = create_model("cnn3-w0.5", DataShape(1, 10, (32, 32)))
    assert [list(t.size) for t in spec.taps] == [[15, 15], [6, 6], [2, 2]]  # the paper's taps
    d = describe(model, spec, (28, 28))
    assert d["rows"] == [0, 29] and d["cols"] == [0, 29] and d["fraction"] == 1.0
    spec, model = create_model("cnn3-w0.5", DataShape(1, 10, (28, 28)))
    assert [list(t.size) for t in spec.taps] == [[13, 13], [5, 5], [1, 1]]
    d = describe(model, spec, (28, 28))
    assert d["image_pixels_seen"] == [22, 22] and d["fraction"] == pytest.approx(22 * 22 / 28 / 28)
    assert "only 22x22 of the 28x28 image" in d["text"]


def test_the_receptive_field_probe_runs_on_a_cpu_fp32_copy_never_on_the_model() -> None:
    """The NaN probe is exact only with direct convolutions (a GPU's Winograd/FFT kernels spread a NaN over
    a tile), so it runs on an fp32 CPU copy: the model's own forward is never called, and its dtype,
    layout, mode and weights stay as they were (a bf16 channels_last model in training mode here)."""
    from indistill_cli.models import DataShape, create_model
    from indistill_cli.models.coverage import describe

    spec, model = create_model("cnn3-w0.5", DataShape(1, 10, (28, 28)))
    model = model.to(torch.bfloat16).to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    seen: list[tuple[int, torch.device, torch.dtype, bool]] = []

    def spy(module, args):  # a hook is copied with its module: it reports whichever module runs
        w = module.weight
        seen.append((id(module), w.device, w.dtype, w.is_contiguous()))

    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(spy)
    d = describe(model, spec, (28, 28))
    assert d["image_pixels_seen"] == [22, 22]  # the same answer as the fp32 model's
    assert len(seen) == 1 and seen[0][0] != id(first_conv)  # one probe forward, on another module (the copy)
    assert seen[0][1:] == (torch.device("cpu"), torch.float32, True)  # on the CPU, fp32, contiguous
    assert model.training and [id(p) for p in model.parameters()] == params
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert first_conv.weight.dtype == torch.bfloat16 and first_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_inspect_and_train_say_what_the_model_sees(tmp_path) -> None:
    from stage_helpers import _cli

    res = _cli("train", "cnn3-w0.5", "--epochs", "1", "--image-size", "28", "--no-last", "-o", tmp_path / "m.safetensors")
    assert res.exit_code == 0, res.output
    assert "only 22x22 of the 28x28 image" in res.stderr
    res = _cli("inspect", tmp_path / "m.safetensors", "--json")
    r = json.loads(res.stdout)
    assert r["sees"]["fraction"] == pytest.approx(22 * 22 / 28 / 28)
    res = _cli("inspect", tmp_path / "m.safetensors")
    assert "sees" in res.stderr and "28x28 images as they are" in res.stderr


# ---------------------------------------------------------------------------------------- one lr plan


def test_lr_plan_offsets_the_schedule() -> None:
    cfg = OptimConfig("adam", 1e-3, schedule="multistep", milestones=[6], plan_epochs=7, plan_offset=4)
    assert lr_factor(cfg, 0.0, 3) == 1.0 and lr_factor(cfg, 1.9, 3) == 1.0
    assert lr_factor(cfg, 2.0, 3) == pytest.approx(0.1)
    cos = OptimConfig("sgd", 0.1, schedule="cosine", plan_epochs=10, plan_offset=5)
    assert lr_factor(cos, 0.0, 5) == pytest.approx(0.5)


def test_a_plan_split_in_two_runs_equals_one_run() -> None:
    """Two fits that hand the optimiser state over (epochs 1-2, then 3 of a 3-epoch plan) give bitwise the
    weights of one 3-epoch fit: the continuation loses nothing (Adam moments, step count, lr, data order)."""
    from indistill_cli.data import Split, TensorLoader, load_dataset
    from indistill_cli.models import DataShape, create_model
    from indistill_cli.engine.runtime import resolve_runtime

    info = load_dataset(DATA).info
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (300, 1, 28, 28), generator=g, dtype=torch.uint8), torch.randint(0, 10, (300,), generator=g))
    rt = resolve_runtime("cpu", "fp32", "off")

    def fit(model, epochs, offset=0, state=None):
        cfg = OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="multistep", milestones=[2], plan_epochs=3,
                          plan_offset=offset)
        loader = TensorLoader(split, info, 64, shuffle=True, augment=True, seed=1, model_size=(32, 32))
        step = lambda b, e: {"loss": torch.nn.functional.cross_entropy(model(b.x), b.y)}  # noqa: E731
        return Engine(rt, cfg, epochs).fit(model, model, step, loader, opt_state=state)

    one = create_model("cnn3-w0.5", DataShape(1, 10, (32, 32)), seed=0)[1]
    fit(one, 3)
    two = create_model("cnn3-w0.5", DataShape(1, 10, (32, 32)), seed=0)[1]
    first = fit(two, 2)
    assert float(first.optimizer_state["block1.0.weight"]["step"]) == 2 * 5
    second = fit(two, 1, offset=2, state=first.optimizer_state)
    assert second.history[0]["lr"] == pytest.approx(1e-4)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))


def test_warmup_plan_continues_into_distill(teacher, pruned, tmp_path) -> None:  # noqa: F811
    w = _ok("warmup", "-t", pruned, "-s", "cnn3-w0.5", "--epochs-per-tap", "1,1,1", "--plan-epochs", "5",
            "--schedule", "multistep", "--milestones", "4", "-o", tmp_path / "w.safetensors")
    assert w["plan"] == str(tmp_path / "w.plan.safetensors") and Path(w["plan"]).exists()
    from indistill_cli.io.plan_state import load_plan

    state, plan, done = load_plan(w["plan"], w["sha256"])
    assert done == 3 and plan["plan_epochs"] == 5 and plan["milestones"] == [4]
    from indistill_cli.models import DataShape, create_model

    names = {n for n, _ in create_model("cnn3-w0.5", DataShape(1, 10, (32, 32)))[1].named_parameters()}
    tapped = {n for n in names if n.startswith("block")}  # the warmup reaches the blocks, never embed/fc
    assert tapped <= set(state) <= names
    assert float(state["block1.0.weight"]["step"]) == 3 * (9000 // 128)  # 3 epochs of 70 full batches
    d = _ok("distill", "-t", teacher, "-s", tmp_path / "w.safetensors", "-m", "kd", "--continue-plan",
            "-o", tmp_path / "s.safetensors")
    assert d["epochs_run"] == 2 and d["plan"] == {"epochs": 5, "offset": 3, "continued": True}
    assert [row["lr"] for row in d["epochs"]] == pytest.approx([1e-3, 1e-4])  # epochs 4 and 5 of the plan
    # wrong use is one line, before any training
    _bad("distill", "-t", teacher, "-s", tmp_path / "w.safetensors", "-m", "kd", "--continue-plan", "--epochs", "4",
         "-o", tmp_path / "x.safetensors", needles=("2 epochs left",))
    _bad("distill", "-t", teacher, "-s", tmp_path / "s.safetensors", "-m", "kd", "--continue-plan",
         "-o", tmp_path / "x.safetensors", needles=("no plan sidecar",))
    _bad("distill", "-t", teacher, "-s", tmp_path / "s.safetensors", "-m", "kd", "--continue-plan", "--plan", w["plan"],
         "-o", tmp_path / "x.safetensors", needles=("another checkpoint",))
    _bad("warmup", "-t", pruned, "-s", "cnn3-w0.5", "--epochs-per-tap", "1,1,1", "--plan-epochs", "3",
         "-o", tmp_path / "y.safetensors", needles=("--plan-epochs 3",))
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


# ---------------------------------------------------------------------------------------- keep-flow


def test_keep_flow_weight_decays_per_epoch() -> None:
    from indistill_cli.stages.distiller import KeepFlow

    kf = KeepFlow(flow=None, weight=2.0, decay=0.5, shared=True)
    assert [kf.weight_at(e) for e in range(4)] == [2.0, 1.0, 0.5, 0.25]


@pytest.mark.trained
def test_keep_flow_holds_the_warmed_taps_closer(teacher, pruned, tmp_path, record) -> None:  # noqa: F811
    _ok("warmup", "-t", pruned, "-s", "cnn3-w0.5", "--epochs-per-tap", "1,1,1", *SEED, "-o", tmp_path / "w.safetensors")
    common = ("distill", "-t", teacher, "-s", tmp_path / "w.safetensors", "-m", "pkt", "--ce", "0", "--epochs", "2",
              "--flow-teacher", pruned, "--optimizer", "adam", "--lr", "3e-3", *SEED)
    plain = _ok(*common, "-o", tmp_path / "a.safetensors")
    kept = _ok(*common, "--keep-flow", "1", "-o", tmp_path / "b.safetensors")
    assert kept["keep_flow"]["note"] == "ours, not in the paper"
    assert all("train_keep_flow" in row for row in kept["epochs"])
    for tap in plain["curves"]:  # per-tap validation MSE to the pruned teacher after KD: lower with the flow kept
        record(f"{tap} val MSE kept / plain", kept["curves"][tap][-1] / plain["curves"][tap][-1], 1.0, "<")
    _bad("distill", "-t", teacher, "-s", "cnn3-w0.5", "-m", "kd", "--keep-flow", "1", "-o", tmp_path / "c.safetensors",
         needles=("--flow-teacher",))


# ---------------------------------------------------------------------------------------- pipeline budgets


@pytest.mark.parametrize("budget,kd", [("equal", 2), ("added", 5)])
def test_pipeline_budget_views(teacher, tmp_path, budget, kd) -> None:  # noqa: F811
    r = _ok("pipeline", "-t", teacher, "-s", "cnn3-w0.5", "--epochs", "5", "--epochs-per-tap", "1,1,1", "--budget",
            budget, "--no-retrieve", "-o", tmp_path / "p")
    assert r["budget"]["warmup_epochs"] == 3 and r["budget"]["kd_epochs"] == kd
    assert r["budget"]["line"].startswith("budget: " + ("equal total epochs" if budget == "equal" else "warmup added"))
    d = r["results"]["distill"]
    assert d["plan"] == {"epochs": 3 + kd, "offset": 3, "continued": True} and d["epochs_run"] == kd
    manifest = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert manifest["stages"]["warmup"]["summary"]["plan"].endswith("student_warm.plan.safetensors")
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.io.history import flow_curves

    curves, n_warm = flow_curves(load_checkpoint(str(tmp_path / "p" / "student.safetensors")).history)
    assert n_warm == 3 and set(curves) == {"block1", "block2", "block3"}
    assert all(len(c) == 1 + 3 + kd for c in curves.values())  # untrained, warmup epochs, KD epochs
    assert (tmp_path / "p" / "flow.png").stat().st_size > 10_000


def test_pipeline_without_warmup_still_records_the_flow(teacher, tmp_path) -> None:  # noqa: F811
    """--no-warmup prunes the teacher for the flow view alone: the KD stage's per-tap MSE (Figure 4's baseline)."""
    r = _ok("pipeline", "-t", teacher, "-s", "cnn3-w0.5", "--epochs", "2", "--no-warmup", "--no-retrieve",
            "-o", tmp_path / "p")
    assert r["stages"] == ["prune", "distill", "evaluate"] and r["budget"]["view"] == "no-warmup"
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.io.history import flow_curves

    curves, n_warm = flow_curves(load_checkpoint(str(tmp_path / "p" / "student.safetensors")).history)
    assert n_warm == 0 and all(len(c) == 3 for c in curves.values())
    assert "flow" in r["results"]["evaluate"]


def test_pipeline_equal_budget_needs_room_for_kd(teacher, tmp_path) -> None:  # noqa: F811
    _bad("pipeline", "-t", teacher, "-s", "cnn3-w0.5", "--epochs", "3", "--epochs-per-tap", "1,1,1",
         "-o", tmp_path / "p", needles=("--budget equal", "--epochs 3"))
