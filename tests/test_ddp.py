"""Many processes: torchrun (gloo on CPU) runs the training commands, and DDP gives one big batch's step.

The equivalence tests spawn two processes with a gloo process group on 127.0.0.1 and drive the real
pieces (Engine, TensorLoader rank shards, runtime.ddp, the warmup's per-phase StudentUpTo + DDP with
the unused parameters excluded, flow_mse's reduction), then compare with one process on the whole batch.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import cli_env, image_tree

from indistill_cli.io.checkpoint import load_checkpoint

torch.set_num_threads(1)
DATA = ("--data", "synthetic:1x28x28:10:160", "--val-fraction", "0.2", "--batch-size", "32")


# ----------------------------------------------------------------------------- torchrun, the real CLI

def _torchrun(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """torchrun with 2 CPU ranks; on a timeout the whole process group (launcher, ranks, loader workers) is
    killed, so a hung run leaves nothing behind, and TimeoutExpired is raised."""
    env = cli_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "indistill_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return p.returncode, out, err


def test_torchrun_pipeline_trains_warms_up_and_distills_to_valid_checkpoints(tmp_path):
    """One torchrun launch of the whole chain: train (teacher), prune, warmup (one DDP per curriculum
    phase), distill (kd + fitnet: the regressors train in DDP with the student), evaluate, retrieve."""
    code, out, err = _torchrun("pipeline", "-t", "cnn3-w0.5", "-s", "cnn3-w0.25", "--teacher-epochs", "1",
                               "--epochs", "1", "--budget", "added", "--epochs-per-tap", "1,1,1", "-m", "kd", "-m", "fitnet", *DATA,
                               "-o", "run", "--json", cwd=tmp_path)
    assert code == 0, err[-4000:]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # only rank 0 prints the JSON result
    result = json.loads(lines[0])
    assert result["stages"] == ["teacher", "prune", "warmup", "distill", "evaluate", "retrieve"]
    text = " ".join(err.split())  # rich wraps lines
    assert text.count("stage 4/6: distill") == 1, err  # only rank 0 reports
    run = tmp_path / "run"
    for name, stage in [("teacher.safetensors", "train"), ("teacher_pruned.safetensors", "prune"),
                        ("student_warm.safetensors", "warmup"), ("student.safetensors", "distill")]:
        ck = load_checkpoint(str(run / name))
        assert ck.history[-1]["stage"] == stage, name
        assert all(torch.isfinite(v).all() for v in ck.state.values() if v.is_floating_point()), name
    assert "2 ranks" in load_checkpoint(str(run / "student.safetensors")).history[-1]["device"]
    assert (run / "student.adapters.safetensors").exists()  # the fitnet regressors
    for stage in ("teacher", "warmup", "distill"):  # the loop's throughput and peak memory in every summary
        summary = result["results"][stage]
        assert summary["images_per_sec"] > 0 and summary["peak_memory_mb"] > 0, stage
    warm = result["results"]["warmup"]
    assert warm["epochs_per_tap"] == [1, 1, 1]
    ev = json.loads((run / "evaluate.json").read_text())
    assert ev["n"] == 32 and 0 <= ev["top1"] <= 1  # rank shards all-reduced: every test image once


def test_torchrun_trains_on_an_odd_sized_image_folder(tmp_path):
    """151 training images on 2 ranks with batches of 4: both ranks read 75 of them (18 steps each). With
    shards of 76 and 75 the ranks ran 19 and 18 steps and the run hung in DDP's last all-reduce."""
    image_tree(tmp_path / "imgs", per_class=(76, 75), val_per_class=1)
    try:
        code, out, err = _torchrun("train", "cnn3-w0.5", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--image-size",
                                   "32", "--batch-size", "4", "--val-fraction", "0", "--epochs", "1", "--no-last",
                                   "-o", "m.safetensors", "--json", cwd=tmp_path, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun with an odd-sized image folder hung (the ranks' shards differ in steps)")
    assert code == 0, err[-4000:]
    assert json.loads(out)["epochs"][0]["epoch"] == 1
    assert load_checkpoint(str(tmp_path / "m.safetensors")).history[-1]["stage"] == "train"


# 2 ranks of --batch-size 64 against 1 process of 128: the same global batch and number of steps. PKT relates
# the samples of each rank's batch (64), not of the global one, so the runs are close, not equal.
PKT_NO_CE = ("-m", "pkt", "--ce", "0", "--data", "fashion-mnist-mini", "--epochs", "2", "--optimizer", "adam", "--lr",
             "1e-3", "--wd", "0", "--schedule", "none", "--seed", "0", "-q")


def _untrained_val_map(arch: str, seed: int) -> float:
    """Validation mAP (the metric --ce 0 runs select on) of the student a run with this seed starts from."""
    from indistill_cli.metrics import classify
    from indistill_cli.models import make_spec
    from indistill_cli.stages.options import RunOptions
    from indistill_cli.stages.session import open_session

    s = open_session(RunOptions(data="fashion-mnist-mini"))
    info = s.ds.info
    spec, model = make_spec(arch, info.in_channels, info.num_classes, info.image_size,
                            {"mean": info.mean, "std": info.std}, seed=seed)
    return classify(model, s.eval_loader("val", spec), s.rt, info.num_classes, spec["embedding"]["name"])["map"]


def test_torchrun_distill_without_ce_trains_like_one_process(tmp_path, trained_cnn3, cli):
    """`distill -m pkt --ce 0` under torchrun: the student's head gets no gradient, and DDP used to stop at
    the second step ("Expected to have finished reduction ..."). Now it finishes, and its students match one
    process's. Val mAP after 2 epochs, seeds 0 / 1 / 2 (2-core Xeon): 2 ranks x 64: 0.471 / 0.502 / 0.516;
    1 process x 128: 0.480 / 0.511 / 0.521; the untrained students: 0.353 / 0.300 / 0.276. Asserted (seed
    0): within 0.06 of one process, at least half of one process's gain over the untrained student, and
    that gain at least 0.08."""
    teacher = str(trained_cnn3.path)
    code, out, err = _torchrun("distill", "-t", teacher, "-s", "cnn3-w0.25", *PKT_NO_CE, "-b", "64", "-o", "s2.safetensors",
                               "--json", cwd=tmp_path)
    assert code == 0, err[-4000:]
    two = json.loads(out)
    code, out, err = cli("distill", "-t", teacher, "-s", "cnn3-w0.25", *PKT_NO_CE, "-b", "128", "-o",
                         str(tmp_path / "s1.safetensors"), "--json")
    assert code == 0, err
    one = json.loads(out)
    assert two["select"] == one["select"] == "map" and two["ce"] == 0.0
    assert "2 ranks" in load_checkpoint(str(tmp_path / "s2.safetensors")).history[-1]["device"]
    base = _untrained_val_map("cnn3-w0.25", 0)
    assert one["val_map"] - base >= 0.08, (one["val_map"], base)
    assert two["val_map"] - base >= 0.5 * (one["val_map"] - base), (two["val_map"], one["val_map"], base)
    assert abs(two["val_map"] - one["val_map"]) <= 0.06, (two["val_map"], one["val_map"])


AUX = ("--aux", "cnn3-w0.5", "--aux-epochs", "1", "--epochs", "1", "--schedule", "none", "--no-warmup", "--no-flow",
       "--no-retrieve", "--data", "fashion-mnist-mini", "-q")


def test_torchrun_pipeline_with_an_auxiliary_trains_like_one_process(tmp_path, trained_cnn3, cli):
    """`pipeline --aux` always runs PKT with --ce 0 (the auxiliary learns from the teacher), so under torchrun
    it stopped at that stage. Now the chain (auxiliary CE, auxiliary PKT, KD, evaluate) finishes under DDP
    and ends where one process does. Measured (2 ranks x 64 vs 1 x 128, 2-core Xeon): the auxiliary's val
    top-1 after CE 0.724 vs 0.735 and val mAP after PKT 0.577 vs 0.590; the student's test top-1 after its
    one KD epoch 0.367 vs 0.452 (one epoch from scratch is steep, so noisy), untrained 0.1. Asserted: the
    auxiliary within 0.05 of one process in both, the student above 0.25 in both and within 0.15."""
    teacher = str(trained_cnn3.path)
    code, out, err = _torchrun("pipeline", "-t", teacher, "-s", "cnn3-w0.25", *AUX, "-b", "64", "-o", "run2", "--json",
                               cwd=tmp_path)
    assert code == 0, err[-4000:]
    two = json.loads(out)
    code, out, err = cli("pipeline", "-t", teacher, "-s", "cnn3-w0.25", *AUX, "-b", "128", "-o", str(tmp_path / "run1"),
                         "--json")
    assert code == 0, err
    one = json.loads(out)
    assert two["stages"] == one["stages"] == ["aux-train", "aux-pkt", "distill", "evaluate"]
    aux = load_checkpoint(str(tmp_path / "run2" / "aux.safetensors")).history[-1]
    assert aux["stage"] == "distill" and "2 ranks" in aux["device"] and aux["options"]["ce"] == 0.0
    for stage, key in (("aux-train", "val_top1"), ("aux-pkt", "val_map")):
        a2, a1 = two["results"][stage][key], one["results"][stage][key]
        assert abs(a2 - a1) <= 0.05, (stage, a2, a1)
    t2, t1 = two["final"]["top1"], one["final"]["top1"]
    assert t2 >= 0.25 and t1 >= 0.25 and abs(t2 - t1) <= 0.15, (t2, t1)


# ----------------------------------------------------------------------------- spawned ranks vs one process

class Tiny(nn.Module):
    """A BatchNorm-free net with two taps, so a big batch and two half batches give the same gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


def _engine_step(rt) -> dict:
    """One Engine step of CE on TensorLoader's rank shard of 128 images (64 per rank on 2 ranks)."""
    from indistill_cli import data as D
    from indistill_cli.engine.loop import Engine
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.engine.runtime import ddp

    torch.manual_seed(123 + rt.rank)  # a different init on rank 1: DDP's wrap-time broadcast must fix it
    model = Tiny()
    g = torch.Generator().manual_seed(0)
    split = D.Split(torch.randint(0, 256, (128, 1, 8, 8), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (128,), generator=g))
    info = D.DataInfo("t", 10, 1, (8, 8), [0.5], [0.25], [str(i) for i in range(10)])
    loader = D.TensorLoader(split, info, 128 // rt.world, shuffle=True, seed=0, drop_last=True, rank=rt.rank,
                            world=rt.world)
    net = ddp(model, rt)

    def step(batch, epoch):
        logits = net(batch.x)
        return {"loss": F.cross_entropy(logits, batch.y), "_correct": (logits.argmax(1) == batch.y).sum()}

    cfg = OptimConfig("sgd", lr=0.5, momentum=0.9, weight_decay=5e-4, schedule="none")
    res = Engine(rt, cfg, 1, label="t").fit(model, model, step, loader)
    assert len(loader) == 1
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "row": res.history[0]}


def _warmup_phases(rt) -> dict:
    """Two warmup phases the way warmup.py runs them: StudentUpTo per phase, DDP over it without the
    parameters the phase cannot reach; plus flow_mse reduced over ranks."""
    from indistill_cli.metrics.flow import flow_mse, mse
    from indistill_cli.pruning.targets import FlowPair, Pair, StudentUpTo
    from indistill_cli.engine.runtime import broadcast_state, ddp, unreached

    torch.manual_seed(99)
    teacher = Tiny().eval()
    torch.manual_seed(7 + rt.rank)
    student = Tiny()
    head0 = student.head[2].weight.detach().clone()
    broadcast_state(student, rt)
    flow = FlowPair(teacher, student, [Pair("block1", "block1", None), Pair("block2", "block2", None)])
    opt = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    x_all = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = x_all[rt.rank :: rt.world]
    ignored = []
    for tap in (0, 1):
        m = StudentUpTo(flow, tap, tap)
        probe = torch.zeros_like(x[:2])
        ignore = unreached(m, lambda: sum(o.float().sum() for o in m(probe))) if rt.distributed else []
        ignored.append(ignore)
        net = ddp(m, rt, ignore)
        for _ in range(2):  # a second step: DDP would fail here if a parameter had waited for a gradient
            loss = mse(net(x)[0], flow.targets(x, tap)[tap])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        del net
        gc.collect()
    return {"state": {k: v.clone() for k, v in student.state_dict().items()}, "ignored": ignored,
            "head_untouched": bool(torch.equal(student.head[2].weight, head0)) if rt.rank == 0 else None,
            "flow": flow_mse(flow, [x_all[:50], x_all[50:]], rt)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), INDISTILL_QUIET="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from indistill_cli.engine.runtime import Runtime

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        rt = Runtime(torch.device("cpu"), "fp32", False, rank, world, rank)
        torch.save({"engine": _engine_step(rt), "warmup": _warmup_phases(rt)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two spawned ranks did not finish in 240 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def one_rank():
    from indistill_cli import progress
    from indistill_cli.engine.runtime import Runtime

    progress.set_quiet(True)
    try:
        rt = Runtime(torch.device("cpu"), "fp32", False)
        return {"engine": _engine_step(rt), "warmup": _warmup_phases(rt)}
    finally:
        progress.set_quiet(False)


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_ddp_step_on_2x64_equals_one_step_on_1x128(two_ranks, one_rank):
    r0, r1 = (r["engine"] for r in two_ranks)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # the ranks agree exactly
    _close(r0["state"], one_rank["engine"]["state"])
    # the logged epoch means are all-reduced: the same on both ranks, and the single process's
    assert r0["row"]["train_loss"] == r1["row"]["train_loss"]
    assert r0["row"]["train_loss"] == pytest.approx(one_rank["engine"]["row"]["train_loss"], rel=1e-5)
    assert r0["row"]["train_acc"] == one_rank["engine"]["row"]["train_acc"]


def test_warmup_phases_under_ddp_equal_one_process(two_ranks, one_rank):
    r0, r1 = (r["warmup"] for r in two_ranks)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    _close(r0["state"], one_rank["warmup"]["state"])
    # phase 1 (tap block1) reaches neither block2 nor the head; phase 2 not the head
    assert r0["ignored"][0] == [f"student.{n}" for n in ("block2.0.bias", "block2.0.weight", "head.2.bias",
                                                         "head.2.weight")]
    assert r0["ignored"][1] == ["student.head.2.bias", "student.head.2.weight"]
    assert r0["head_untouched"]
    # flow_mse: each rank evaluates every second image, the reduced sums equal one process's
    assert r0["flow"] == r1["flow"]
    assert r0["flow"] == pytest.approx(one_rank["warmup"]["flow"], rel=1e-6)


def _distiller(method: str, ce: float):
    """A real Distiller (cnn3-w0.5 teacher, cnn3-w0.25 student at 24x24) with one method at weight 1."""
    from indistill_cli import losses
    from indistill_cli.models import make_spec
    from indistill_cli.stages.distiller import Distiller, MethodSpec, feature_shapes, method_pairs, vector_flags

    t_spec, teacher = make_spec("cnn3-w0.5", 1, 10, (24, 24), seed=1)
    s_spec, student = make_spec("cnn3-w0.25", 1, 10, (24, 24), seed=2)
    cls = losses.get(method)
    pairs = method_pairs(cls.uses, t_spec, s_spec, [], None, cls.preact, cls.with_embedding)
    vec, x = vector_flags(cls, len(pairs)), torch.zeros(2, 1, 24, 24)
    torch.manual_seed(3)
    loss = cls(feature_shapes(student, [b for _, b in pairs], vec, x), feature_shapes(teacher, [a for a, _ in pairs], vec, x),
               10, 64, **({"nce_k": 8, "feat_dim": 8} if method == "crd" else {}))
    return Distiller(student, [MethodSpec(method, 1.0, {})], [pairs], [loss], ce), teacher.eval()


def _two_steps(method: str, ce: float, rt) -> dict:
    """Two SGD steps of distiller_step on fixed batches; what DDP was told to ignore; the state after."""
    from types import SimpleNamespace

    from indistill_cli.stages.distiller import distiller_step

    distiller, teacher = _distiller(method, ce)
    step = distiller_step(distiller, teacher, rt)
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    losses = []
    for i in range(2):  # plain DDP raises at the second forward when a parameter waited for a gradient
        batch = SimpleNamespace(x=torch.randn(8, 1, 24, 24, generator=g), y=torch.randint(0, 10, (8,), generator=g),
                                idx=torch.arange(8) + 8 * i)
        out = step(batch, 0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    extra = distiller.losses[0].extra_state_tensors()
    return {"ignored": list(getattr(distiller, "_ddp_params_and_buffers_to_ignore", [])), "losses": losses,
            "state": {k: v.clone() for k, v in distiller.state_dict().items()}, "extra": extra,
            "rng": torch.get_rng_state()}


@pytest.mark.parametrize("method, ce, unreached", [
    ("pkt", 0.0, ["student.fc.bias", "student.fc.weight"]),  # an embedding method without CE: not the head
    ("crd", 0.0, ["student.fc.bias", "student.fc.weight"]),  # crd's own embedders are reached
    ("at", 0.0, ["student.embed.0.bias", "student.embed.0.weight", "student.fc.bias", "student.fc.weight"]),
    ("fitnet", 0.0, ["student.embed.0.bias", "student.embed.0.weight", "student.fc.bias", "student.fc.weight"]),
    ("pkt", 1.0, []),  # CE reaches everything
    ("kd", 0.0, []),  # a logit method reaches everything
])
def test_distiller_step_tells_ddp_what_the_loss_leaves_without_gradient(method, ce, unreached, tmp_path):
    """The main loop's DDP is built at the first batch and told, from one probing backward, which trainable
    parameters this loss leaves without gradient (plain DDP waited for them: "Expected to have finished
    reduction" at the second step). The probe changes nothing: two steps under DDP (a one-process gloo
    group posing as two ranks) give the very state, losses, CRD sampling generator and torch RNG of the
    same steps without DDP."""
    import torch.distributed as dist

    from indistill_cli.engine.runtime import Runtime

    torch.manual_seed(0)
    plain = _two_steps(method, ce, Runtime(torch.device("cpu"), "fp32", False))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        wrapped = _two_steps(method, ce, Runtime(torch.device("cpu"), "fp32", False, 0, 2, 0))  # world 2: ddp wraps
    finally:
        gc.collect()
        dist.destroy_process_group()
    params = [n for n in wrapped["ignored"] if not n.startswith("losses.")]  # the methods' buffers come first
    assert params == unreached
    assert wrapped["losses"] == plain["losses"] and torch.equal(wrapped["rng"], plain["rng"])
    for k, v in plain["state"].items():
        assert torch.equal(wrapped["state"][k], v), k
    for k, v in plain["extra"].items():
        assert torch.equal(wrapped["extra"][k], v), k


def test_a_command_ends_its_process_group_after_collecting_ddp_wrappers(tmp_path):
    """The group is destroyed when the command's body returns (not left to interpreter exit, where a gloo
    thread of a DDP wrapper still alive once aborted a rank); the wrapper, held only in a reference cycle,
    is collected first, and a second call is a no-op."""
    import torch.distributed as dist
    import weakref

    from indistill_cli.cli.app import run
    from indistill_cli.engine import runtime

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # only the shutdown's own collection may free the cycle
    try:
        rt = runtime.Runtime(torch.device("cpu"), "fp32", False, 0, 2, 0)  # world 2: ddp() wraps
        net = runtime.ddp(nn.Linear(3, 2), rt)
        cycle = {"net": net}
        cycle["self"] = cycle
        alive = weakref.ref(net)
        del net, cycle
        run(lambda: None, as_json=False, quiet=True)
        assert alive() is None and not dist.is_initialized()
        runtime.shutdown()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
