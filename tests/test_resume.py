"""Interruption and resume: SIGINT/SIGTERM/SIGKILL mid-epoch, then `--resume`, must reach the very same
tensors (torch.equal) as a run that was never stopped; plus the divergence guard (`--skip-nonfinite`,
the term that went bad, the last good state) and the rules around the state folder.

The interrupted runs are real subprocesses (signals need a process); the references and resumes run
in-process (faster, same single thread). Everything is single-threaded: bitwise equality on CPU
needs the same thread count, and the machine is a shared 2-core box.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli_env

from indistill_cli.errors import RunFailure

DATA = ("--data", "fashion-mnist-mini", "--val-fraction", "0.05")
TRAIN = ("train", "cnn3-w0.5", *DATA, "--epochs", "2", "--seed", "3", "--no-last")
TINY = ("--data", "synthetic:1x28x28:10:160", "--val-fraction", "0.1", "--epochs", "2", "--batch-size", "32")


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers

def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_bitwise(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    diff = [k for k in ta if not (ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]))]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


class Running:
    """A CLI subprocess, signalled by a watcher thread once `when(self)` holds (plus `after` seconds).

    The test meanwhile computes the reference in-process: the two use one core each.
    """

    def __init__(self, *args: object, cwd: Path, when, sig: int, after: float = 0.0) -> None:
        self.lines: list[str] = []
        self.sent = False
        self.p = subprocess.Popen([sys.executable, "-m", "indistill_cli", *map(str, args)], cwd=cwd,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=cli_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.watcher = threading.Thread(target=self._watch, args=(when, sig, after), daemon=True)
        self.reader.start()
        self.watcher.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for raw in self.p.stderr:
            self.lines.extend(raw.decode("utf-8", "replace").replace("\r", "\n").splitlines())

    def _watch(self, when, sig: int, after: float) -> None:
        deadline = time.monotonic() + 300
        while self.p.poll() is None and time.monotonic() < deadline:
            if when(self):
                time.sleep(after)
                if self.p.poll() is None:
                    self.p.send_signal(sig)
                    self.sent = True
                return
            time.sleep(0.02)

    def saw(self, text: str) -> bool:
        return any(text in ln for ln in self.lines)

    def result(self) -> tuple[int, str]:
        rc = self.p.wait(timeout=300)
        self.reader.join(timeout=10)
        self.watcher.join(timeout=10)
        err = "\n".join(self.lines)
        assert self.sent, f"the run ended ({rc}) before it could be interrupted:\n{err}"
        return rc, err


def generations(state_dir: Path) -> int:
    """The newest generation number in a state folder (0: none)."""
    return max((int(p.stem.split("-")[1]) for p in state_dir.glob("state-*.pt")), default=0)


def fresh_checkpoint(path: Path, arch: str, seed: int = 11) -> Path:
    """An untrained model checkpoint for fashion-mnist-mini (a stand-in teacher: its weights are random)."""
    from indistill_cli.io.history import write_model
    from indistill_cli.data import load_dataset
    from indistill_cli.models import make_spec

    info = load_dataset("fashion-mnist-mini", 0.05).info
    torch.manual_seed(seed)
    spec, model = make_spec(arch, info.in_channels, info.num_classes, info.image_size,
                            {"mean": info.mean, "std": info.std})
    write_model(str(path), {k: v.detach() for k, v in model.state_dict().items()}, spec, [],
                {"dataset": info.as_dict()})
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


def resume_in_process(cli, args: tuple[str, ...], out: Path) -> str:
    code, _, err = cli(*args, "-o", str(out), "--resume", "-q")
    assert code == 0, err
    return err


def first_row(label: str):
    return lambda run: run.saw(f"{label} epoch 1 ")


# ----------------------------------------------------------------------------- kill, then resume

def test_train_sigint_and_sigkill_mid_epoch_then_resume_is_bitwise(tmp_path, cli):
    ref = tmp_path / "ref.safetensors"
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    a, b = a_dir / "m.safetensors", b_dir / "m.safetensors"
    # SIGINT a few steps into epoch 2, no periodic state: the state is the signal handler's
    run = Running(*TRAIN, "-o", a, cwd=tmp_path, when=first_row("train cnn3-w0.5"), sig=signal.SIGINT, after=0.3)
    code, _, err = cli(*TRAIN, "-o", str(ref), "-q")  # the uninterrupted reference, meanwhile
    assert code == 0, err
    rc, err = run.result()
    assert rc == 130, err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted at epoch 2 step ") and "--resume" in last and "m.resume/" in last, last
    assert not a.exists()
    state = a_dir / "m.resume"
    assert generations(state) == 1  # no periodic state by default in so short a run
    side = torch.load(next(state.glob("state-*.pt")), weights_only=True)  # the sidecar needs no pickle
    loop = json.loads(side["loop"])
    assert loop["epoch"] == 1 and loop["step"] >= 1 and len(loop["history"]) == 1
    # SIGKILL (no handler runs) with a periodic state every ~0.06 s: resumes from the newest one
    kill = Running(*TRAIN, "-o", b, "--save-every", "0.001", cwd=tmp_path, when=first_row("train cnn3-w0.5"),
                   sig=signal.SIGKILL, after=0.5)
    resume_in_process(cli, TRAIN, a)  # meanwhile
    assert_bitwise(a, ref)
    assert not state.exists() and sorted(os.listdir(a_dir)) == ["m.safetensors"]  # state removed after success
    rc, _ = kill.result()
    assert rc == -signal.SIGKILL and not b.exists()
    newest = max((b_dir / "m.resume").glob("state-*.pt"))
    assert json.loads(torch.load(newest, weights_only=True)["loop"])["epoch"] == 1  # killed inside epoch 2
    err = resume_in_process(cli, TRAIN, b)  # --save-every may differ on resume (it does not shape the run)
    assert_bitwise(b, ref)
    assert sorted(os.listdir(b_dir)) == ["m.safetensors"]  # temp files of the killed write are gone too
    from indistill_cli.io.checkpoint import load_checkpoint

    h = load_checkpoint(b).history[-1]
    assert h["seed"] == 3 and h["device"].startswith("cpu") and h["options"]["seed"] == 3
    assert {"torch", "torchvision", "timm", "indistill", "python"} <= set(h["env"])


def test_warmup_sigterm_then_resume_continues_curves_bitwise(work, tmp_path, cli):
    teacher = fresh_checkpoint(work / "teacher_w05.safetensors", "cnn3-w0.5")  # same widths: pairs 1:1
    args = ("warmup", "--teacher", str(teacher), "--student", "cnn3-w0.5", *DATA, "--epochs-per-tap", "1,1,1",
            "--lr", "1e-2", "--flow-images", "200", "--seed", "5", "-b", "256")
    out, ref = tmp_path / "w.safetensors", tmp_path / "ref.safetensors"
    run = Running(*args, "-o", out, cwd=tmp_path, when=first_row("warmup cnn3-w0.5"), sig=signal.SIGTERM,
                  after=0.3)
    code, stdout, err = cli(*args, "-o", str(ref), "-q", "--json")
    assert code == 0, err
    ref_curves = json.loads(stdout)["curves"]
    rc, err = run.result()
    assert rc == 143, err
    assert "interrupted at epoch 2 step " in err and "Traceback" not in err
    code, stdout, err = cli(*args, "-o", str(out), "-q", "--json", "--resume")
    assert code == 0, err
    assert_bitwise(out, ref)
    assert json.loads(stdout)["curves"] == ref_curves  # 1 + 3 points per tap, the first from before training
    assert all(len(c) == 4 for c in ref_curves.values())
    assert not (tmp_path / "w.resume").exists()
    from indistill_cli.io.checkpoint import load_checkpoint

    h = load_checkpoint(out).history[-1]
    assert h["stage"] == "warmup" and h["seed"] == 5 and h["device"].startswith("cpu")
    assert {"torch", "torchvision", "timm", "indistill"} <= set(h["env"])


def test_distill_crd_sigint_then_resume_restores_memory_and_sampler(work, tmp_path, cli):
    """CRD keeps memory banks (buffers) and a private negative-sampling generator: both must resume."""
    teacher = fresh_checkpoint(work / "teacher_cnn3.safetensors", "cnn3")
    args = ("distill", "--teacher", str(teacher), "--student", "cnn3-w0.5", "-m", "kd", "-m", "crd",
            "--param", "crd.nce_k=64", "--param", "crd.feat_dim=32", *DATA, "--epochs", "1", "--seed", "2", "-b", "256")
    out, ref = tmp_path / "s.safetensors", tmp_path / "ref.safetensors"
    state = tmp_path / "s.resume"
    run = Running(*args, "-o", out, "--save-every", "0.001", cwd=tmp_path, when=lambda r: generations(state) > 3,
                  sig=signal.SIGINT)
    code, _, err = cli(*args, "-o", str(ref), "-q")
    assert code == 0, err
    rc, err = run.result()
    assert rc == 130, err
    assert "interrupted at epoch 1 step " in err
    side = torch.load(max(state.glob("state-*.pt")), weights_only=True)
    names = tensors(max(state.glob("state-*.safetensors"))).keys()
    assert any(k.startswith("trainable/losses.1.memory_s") for k in names)  # CRD memory bank
    assert any(k.startswith("extra/losses.1/rng_state") for k in names)  # CRD's sampler
    assert side["optimizer"]["state"]  # momentum buffers
    code, _, err = cli(*args, "-o", str(out), "-q", "--resume")
    assert code == 0, err
    assert_bitwise(out, ref)
    assert_bitwise(tmp_path / "s.adapters.safetensors", tmp_path / "ref.adapters.safetensors")
    assert not state.exists()
    from indistill_cli.io.checkpoint import load_checkpoint

    h = load_checkpoint(out).history[-1]
    assert h["seed"] == 2 and h["device"].startswith("cpu") and "torch" in h["env"]


def test_torchrun_two_ranks_stop_at_the_same_step_and_resume_bitwise(tmp_path):
    """Under torchrun (gloo) both ranks agree on the step, rank 0 writes the state with every rank's RNG,
    and a resumed two-rank run equals an uninterrupted one."""
    args = ("train", "cnn3-w0.5", "--data", "synthetic:1x28x28:10:1200", "--val-fraction", "0.1", "--epochs", "2",
            "-b", "32", "--no-last", "--seed", "1")

    def torchrun(*extra: object) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "indistill_cli", *map(str, args), *map(str, extra)]

    env = cli_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    def finished(p: subprocess.CompletedProcess, output: Path) -> None:
        # a rank sometimes aborts in gloo's teardown at exit ("terminate called without an active
        # exception"), after the barrier that follows the write: the run itself completed
        teardown = b"terminate called without an active exception" in p.stderr and output.exists()
        assert p.returncode == 0 or teardown, p.stderr.decode()

    ref, out = tmp_path / "ref.safetensors", tmp_path / "m.safetensors"
    p = subprocess.run(torchrun("-o", ref, "-q"), env=env, capture_output=True, timeout=300, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    finished(p, ref)
    run = Running.__new__(Running)
    run.lines, run.sent = [], False
    run.p = subprocess.Popen(torchrun("-o", out), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run.reader = threading.Thread(target=run._read, daemon=True)
    run.watcher = threading.Thread(target=run._watch, args=(first_row("train cnn3-w0.5"), signal.SIGINT, 0.0),
                                   daemon=True)
    run.reader.start(), run.watcher.start()
    _, err = run.result()  # torchrun's own exit code after a SIGINT is its business; the ranks' lines are ours
    stops = [ln for ln in err.splitlines() if ln.startswith("interrupted at epoch 2 step ")]
    assert stops and len(set(stops)) == 1, err  # both ranks (if both print) name the same step
    side = torch.load(next((tmp_path / "m.resume").glob("state-*.pt")), weights_only=True)
    assert len(side["rng_ranks"]) == 2
    p = subprocess.run(torchrun("-o", out, "--resume", "-q"), env=env, capture_output=True, timeout=300,
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    finished(p, out)
    assert_bitwise(out, ref)
    assert not (tmp_path / "m.resume").exists()


# ----------------------------------------------------------------------------- the state folder's rules

def test_leftover_state_needs_resume_or_force(tmp_path, cli):
    out = tmp_path / "m.safetensors"
    state = tmp_path / "m.resume"
    state.mkdir()
    (state / "state-00000001.safetensors").write_bytes(b"x")
    (state / "state-00000001.pt").write_bytes(b"x")
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out))
    assert_one_line_error(code, err, "holds the state of an interrupted run", "--resume", "--force")
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--resume")
    assert_one_line_error(code, err, "resume state", "is unreadable", "--force")
    assert not out.exists()
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--force", "-q", "--no-last")
    assert code == 0, err
    assert not state.exists() and out.exists()


def test_resume_with_other_options_is_refused_before_loading_data(tmp_path, cli, monkeypatch):
    out = tmp_path / "m.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--lr", "1e30", "-q")
    assert code == 1 and (tmp_path / "m.resume").is_dir(), err  # divergence leaves the last good state

    def no_data(*a, **k):
        raise AssertionError("a mismatched resume must fail before the dataset is loaded")

    with monkeypatch.context() as m:
        m.setattr("indistill_cli.stages.session.load_dataset", no_data)
        code, _, err = cli("train", "cnn3-w0.5", *TINY, "--seed", "9", "-o", str(out), "--resume", "--lr", "1e-2")
        assert_one_line_error(code, err, "written by a different run", "opts.seed")
    # a lower --lr is the documented rescue: accepted, and noted (weights wrecked by --lr 1e30 cannot be
    # rescued, so this run diverges again; test_engine_resume_after_divergence shows a real rescue)
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "-o", str(out), "--resume", "--lr", "1e-2", "--no-last")
    assert code == 1 and "resuming with changed optim.lr" in err, err
    assert "written by a different run" not in err


@pytest.mark.parametrize("args, needle", [
    (("--resume",), "--resume needs to know where the state is: with -o - pass --state-dir"),
    (("--save-every", "5"), "--save-every needs somewhere to write the state: with -o - pass --state-dir"),
    (("--save-every", "-1", "--state-dir", "S"), "--save-every must be a number of minutes >= 0"),
    (("--save-every", "nan", "--state-dir", "S"), "--save-every must be a number of minutes >= 0"),
    (("--skip-nonfinite", "-1"), "--skip-nonfinite must be >= 0"),
])
def test_state_options_with_stdout(args, needle, cli, monkeypatch):
    monkeypatch.setattr("indistill_cli.stages.session.load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    code, out, err = cli("train", "cnn3-w0.5", *TINY, "-o", "-", *args)
    assert_one_line_error(code, err, needle)
    assert out == b""


def test_state_dir_with_stdout_resumes(tmp_path, cli, monkeypatch):
    """With -o -, --state-dir holds the state; the state is written on a signal even with --save-every 0."""
    from indistill_cli.engine import resume
    from indistill_cli.io.checkpoint import from_bytes

    code, ref, err = cli("train", "cnn3-w0.5", *TINY, "-o", "-", "-q")
    assert code == 0, err
    sd = tmp_path / "S"
    calls = {"n": 0}

    def sigint_at_step_3(self):  # a SIGINT delivered to this process while the third step runs
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    with monkeypatch.context() as m:
        m.setattr(resume.RunState, "due", sigint_at_step_3)
        code, out, err = cli("train", "cnn3-w0.5", *TINY, "-o", "-", "--state-dir", str(sd), "--save-every", "0")
    assert code == 130 and out == b"", err  # nothing half-written to stdout
    assert "interrupted at epoch 1 step 4; resume with the same command plus --resume" in err and str(sd) in err
    code, out, err = cli("train", "cnn3-w0.5", *TINY, "-o", "-", "--state-dir", str(sd), "--resume", "-q")
    assert code == 0, err
    a, b = from_bytes(out).state, from_bytes(ref).state
    assert all(torch.equal(a[k], b[k]) for k in a) and not sd.exists()


def _sigint_at_call(n: int):
    """A RunState.due that sends this process SIGINT on its n-th call (i.e. during step n)."""
    calls = {"n": 0}

    def due(self):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    return due


def test_sigint_with_stdout_and_no_state_dir_says_nothing_was_saved(cli, monkeypatch):
    from indistill_cli.engine import resume

    monkeypatch.setattr(resume.RunState, "due", _sigint_at_call(2))
    code, out, err = cli("train", "cnn3-w0.5", *TINY, "-o", "-", "-q")
    assert code == 130 and out == b"", err
    assert err.strip() == ("interrupted at epoch 1 step 3; no resume state was written (with -o - pass --state-dir "
                           "DIR to resume)")


def test_prune_finetune_interrupted_then_resumed_is_bitwise(work, tmp_path, cli, monkeypatch):
    from indistill_cli.engine import resume

    teacher = fresh_checkpoint(work / "teacher_cnn3_p.safetensors", "cnn3", seed=4)
    args = ("prune", str(teacher), "--like", "cnn3-w0.5", "--mode", "chained", "--finetune", "2", "--data",
            "synthetic:1x28x28:10:400", "-b", "32", "-q")
    ref, out = tmp_path / "ref.safetensors", tmp_path / "p.safetensors"
    code, _, err = cli(*args, "-o", str(ref))
    assert code == 0, err
    with monkeypatch.context() as m:
        m.setattr(resume.RunState, "due", _sigint_at_call(14))  # epoch 2 (11 steps per epoch)
        code, _, err = cli(*args, "-o", str(out))
    assert code == 130 and "interrupted at epoch 2 step " in err, err
    code, _, err = cli(*args, "-o", str(out), "--resume")
    assert code == 0, err
    assert_bitwise(out, ref)
    assert not (tmp_path / "p.resume").exists()


# ----------------------------------------------------------------------------- divergence

@pytest.mark.filterwarnings("error")
def test_divergence_names_the_term_keeps_outputs_and_last_good_state(tmp_path, cli):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"an earlier model")
    code, _, err = cli("train", "cnn3-w0.5", *TINY, "--lr", "1e30", "--quiet", "-o", str(out), "--force")
    line = assert_one_line_error(code, err, "non-finite loss (loss=", "at epoch 1 step ", "lower --lr",
                                 "--precision fp32", "--skip-nonfinite", "last good state", "--resume",
                                 exit_code=1)
    assert "m.resume/" in line
    assert out.read_bytes() == b"an earlier model"  # a failing run never truncates an existing output
    side = torch.load(next((tmp_path / "m.resume").glob("state-*.pt")), weights_only=True)
    loop = json.loads(side["loop"])
    good = tensors(next((tmp_path / "m.resume").glob("state-*.safetensors")))
    assert all(torch.isfinite(v).all() for k, v in good.items() if v.is_floating_point())
    assert loop["step"] >= 1 and loop["bad_batches"] == 0


class _Loader:
    """A tiny deterministic loader (what the engine needs: len, set_epoch, iteration)."""

    def __init__(self, n: int = 6) -> None:
        from indistill_cli.data import Batch

        g = torch.Generator().manual_seed(0)
        self.batches = [Batch(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g),
                              torch.arange(4)) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)


def _engine(skip: int = 0):
    from indistill_cli.engine.loop import Engine
    from indistill_cli.engine.schedule import OptimConfig
    from indistill_cli.engine.runtime import Runtime

    rt = Runtime(torch.device("cpu"), "fp32", False)
    return Engine(rt, OptimConfig(lr=0.1, schedule="none"), 2, skip_nonfinite=skip, label="unit")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def _step(model, bad_at: set[int], kind: str):
    calls = {"n": 0}

    def step(batch, epoch):
        i = calls["n"]
        calls["n"] += 1
        logits = model(batch.x)
        ce = torch.nn.functional.cross_entropy(logits, batch.y)
        kd = logits.pow(2).mean()
        if i in bad_at and kind == "loss":
            kd = kd * float("nan")
        if i in bad_at and kind == "grad":  # finite value (0), infinite gradient
            w = model[0].weight
            kd = kd + torch.sqrt((w - w.detach()).abs()).sum()
        return {"loss": ce + kd, "ce": ce, "kd": kd}

    return step


def test_engine_names_the_bad_term_and_skips_within_tolerance():
    m = _model()
    with pytest.raises(RunFailure) as e:
        _engine().fit(m, m, _step(m, {3}, "loss"), _Loader())
    msg = str(e.value)
    assert "non-finite loss in term kd (loss=nan, ce=" in msg and "at epoch 1 step 4" in msg, msg
    assert "lower --lr" in msg and "--skip-nonfinite" in msg
    # tolerated: the bad batch is skipped, BatchNorm statistics included, and the run finishes
    m2 = _model()
    res = _engine(skip=2).fit(m2, m2, _step(m2, {3, 8}, "loss"), _Loader())
    assert all(torch.isfinite(v).all() for v in res.best_state.values() if v.is_floating_point())
    assert len(res.history) == 2


def test_engine_counts_a_non_finite_gradient_as_a_bad_step():
    m = _model()
    with pytest.raises(RunFailure, match=r"non-finite gradient \(norm (inf|nan), loss [0-9.]+\) at epoch 1 step 2"):
        _engine().fit(m, m, _step(m, {1}, "grad"), _Loader())
    # tolerated, a bad step changes nothing (weights, optimiser, BatchNorm statistics): the run equals
    # one that never saw that batch
    a = _model()
    res_a = _engine(skip=1).fit(a, a, _step(a, {0}, "grad"), _Loader())

    class WithoutFirst(_Loader):
        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            return iter(self.batches[1:] if self.epoch == 0 else self.batches)

    b = _model()
    res_b = _engine().fit(b, b, _step(b, set(), "loss"), WithoutFirst())
    assert all(torch.equal(res_a.best_state[k], res_b.best_state[k]) for k in res_a.best_state)
    assert all(torch.isfinite(v).all() for v in res_a.best_state.values() if v.is_floating_point())


def test_engine_without_per_step_sync_detects_bad_steps_when_logging():
    """The GPU path (exercised here on CPU): flags accumulate on the device, read at the log cadence."""
    m = _model()
    eng = _engine()
    eng.check_every_step, eng.log_every = False, 4
    with pytest.raises(RunFailure, match=r"non-finite loss or gradient in \d of the steps up to here \(loss=") as e:
        eng.fit(m, m, _step(m, {1}, "grad"), _Loader())
    assert "at epoch 1 step 4" in str(e.value)  # step 2 went bad (and spoilt the next), seen when logging
    m2 = _model()
    eng2 = _engine(skip=5)
    eng2.check_every_step = False
    res = eng2.fit(m2, m2, _step(m2, set(), "loss"), _Loader())
    clean = _model()
    ref = _engine().fit(clean, clean, _step(clean, set(), "loss"), _Loader())
    # the deferred mode steps with torch's fused SGD (it takes the device found_inf flag), which rounds
    # differently from the for-each kernels of the CPU default: equal to float rounding (seen: 6e-8)
    assert all(torch.allclose(res.best_state[k].double(), ref.best_state[k].double(), rtol=0, atol=1e-6)
               for k in ref.best_state)


def test_engine_resume_after_divergence_continues_from_the_last_good_state(tmp_path):
    """A bad batch stops the run with the state from just before it; resuming (here with the cause gone)
    gives exactly the weights of a run in which that batch was fine."""
    from types import SimpleNamespace

    from indistill_cli.engine.resume import RunState

    def state(resume: bool) -> RunState:
        opts = SimpleNamespace(resume=resume, save_every=0, state_dir=None)
        return RunState("unit", str(tmp_path / "u.safetensors"), {"stage": "unit"}, opts)

    clean = _model()
    ref = _engine().fit(clean, clean, _step(clean, set(), "loss"), _Loader())
    m = _model()
    eng = _engine()
    eng.state = state(False)
    with pytest.raises(RunFailure, match="last good state is in"):
        eng.fit(m, m, _step(m, {9}, "loss"), _Loader())  # epoch 2, step 4
    m2 = _model()  # a fresh process would rebuild the model from scratch
    eng2 = _engine()
    eng2.state = state(True)
    res = eng2.fit(m2, m2, _step(m2, set(), "loss"), _Loader())
    assert eng2.state.resumed_from == (1, 3)
    assert all(torch.equal(res.best_state[k], ref.best_state[k]) for k in ref.best_state)
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in ref.history]


def test_deterministic_help_says_what_it_costs(cli):
    code, out, _ = cli("train", "--help")
    text = " ".join(out.decode().split())
    for needle in ("--deterministic", "speed", "--resume", "--save-every", "--state-dir", "--skip-nonfinite"):
        assert needle in text, needle


def test_resume_sets_only_the_cuda_generator_of_the_device_in_use(monkeypatch):
    """A state keeps the CUDA stream of the run's device alone, and a resume sets the stream of the device it
    now uses: on a machine with fewer GPUs (or another index) no other device is touched. A state written
    before (every visible device's stream) gives the device in use its own entry. torch.cuda is faked here
    (no GPU), the calls are recorded."""
    from indistill_cli.engine import resume

    calls: list[tuple] = []
    cuda = torch.device("cuda", 0)

    def state(i: int) -> torch.Tensor:
        return torch.full((8,), i, dtype=torch.uint8)

    def get_one(device="cuda"):
        calls.append(("get", torch.device(device)))
        return state(torch.device(device).index or 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the machine resumed on has one GPU
    monkeypatch.setattr(torch.cuda, "get_rng_state", get_one)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: calls.append(("get all",)) or [state(i) for i in range(4)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": calls.append(("set", torch.device(device),
                                                                                             int(s[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("set all", len(states))))

    saved = resume.capture_rng(torch.device("cuda", 3))  # rank 3 of a 4-GPU machine
    assert calls == [("get", torch.device("cuda", 3))] and torch.equal(saved["cuda"], state(3))
    calls.clear()
    resume.restore_rng(saved, cuda)  # resumed on the 1-GPU machine: its stream goes to the device in use
    assert calls == [("set", cuda, 3)]
    calls.clear()
    resume.restore_rng({**saved, "cuda": [state(i) for i in range(4)]}, cuda)  # a state from before the fix
    assert calls == [("set", cuda, 0)]
    calls.clear()
    resume.restore_rng({**saved, "cuda": [state(i) for i in range(2)]}, torch.device("cuda", 2))  # not saved there
    cpu = resume.capture_rng(torch.device("cpu"))
    resume.restore_rng(saved, torch.device("cpu"))
    assert calls == [] and "cuda" not in cpu  # a CPU run neither reads nor sets a CUDA generator
