"""Training throughput: our engine against the same math written by hand (and against torchdistill).

Two tasks (`--task`):
  kd   KD resnet56 -> resnet20 (3x32x32 synthetic images, batch 128; the default);
  ce   CE training of cnn3-w0.5 on the embedded Fashion-MNIST subset (served at 32x32, batch 128):
       the smallest step the tool runs, where the engine's own per-step work weighs the most.
       `--ce-model` trains another model the same way, e.g. a ViT-tiny student at 32 px:
       `--task ce --ce-model timm:vit_tiny_patch16_224,patch_size=4` (the issue's >= 0.9x bar: ours/bare).

Three ways to run one knowledge-distillation step (teacher resnet56 frozen, student resnet20,
loss 0.1 * CE + 0.9 * T^2 KL at T = 4, SGD with momentum, random crop (pad 4) + flip):

  ours          `indistill_cli.stages.distill.run_distill` itself on `synthetic:3x32x32:10:N`: the real
                data path (uint8 tensors, the epoch's plan, batched crop + flip), Distiller, Engine
                (NaN guard, lr schedule, logging cadence) with the CLI's defaults for the device. Two
                epochs of --batches steps each; the second epoch's img/s is taken (the first warms up).
  bare          a plain PyTorch loop written here: batched crop + flip on uint8 tensors, teacher in
                eval mode under no_grad, fp32 eager, NCHW (PyTorch's default layout),
                zero_grad/backward/step.
  ours-nchw     ours with --channels-last off: the engine against the bare loop in the same layout, so
                the ratio shows what the engine itself costs or saves (also ours-cl, ours-bf16, ...).
  torchdistill  torchdistill's DistillationBox (when installed: pip install -e '.[bench]') used as its
                sample CIFAR-10 KD config and example training loop do: a CIFAR10-like dataset of PIL
                images with torchvision's RandomCrop/RandomHorizontalFlip/ToTensor/Normalize, a
                DataLoader with workers, KDLoss (T=4) in a WeightedSumLoss, loss.item() per step.
                The teacher is passed as built, like the example does (its default handling freezes
                the parameters and never calls .eval()).

For `--task ce`: ours is `run_train` itself on `fashion-mnist-mini` (second epoch's img/s), bare a plain
loop over the same uint8 images zero-padded to 32x32 once (crop pad 4 + flip, normalise, CE, SGD); no
torchdistill (it has no CE-only box).

All models are the project's builders, so only the training machinery differs.
Engines run interleaved in one process, round after round (order rotated each round), so a busy
machine slows them alike; the summary is the median of the per-round ratios. Peak memory is taken
per engine in a child process (CPU: the child's max RSS, which includes ~0.7 GB for importing torch;
CUDA: the allocator's peak), plus one `indistill distill` CLI run for the whole command's peak.

    python benchmarks/throughput.py [--task kd|ce] [--ce-model NAME] [--device cpu|cuda] [--rounds 7] [--batches 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:
    import indistill_cli  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT))

from indistill_cli.models import DataShape, create_model  # noqa: E402

MEAN, STD = [0.5, 0.5, 0.5], [0.289, 0.289, 0.289]  # what synthetic:3x32x32 declares
T, CE_W, KD_W, LR, MOMENTUM, WD = 4.0, 0.1, 0.9, 0.05, 0.9, 5e-4
CE_MODEL = "cnn3-w0.5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="kd", choices=["kd", "ce"],
                   help="kd: KD resnet56 -> resnet20 on synthetic 3x32x32; ce: CE of cnn3-w0.5 on fashion-mnist-mini")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the summary is their median)")
    p.add_argument("--batches", type=int, default=5, help="timed steps per engine per round (kd)")
    p.add_argument("--ce-data", default="fashion-mnist-mini",
                   help="the dataset of --task ce (its whole training split is one epoch of every engine)")
    p.add_argument("--ce-model", default=CE_MODEL,
                   help="the model of --task ce (any name `indistill train` takes, e.g. a timm ViT)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--engines", default="ours,bare,torchdistill",
                   help="comma-separated subset of ours, bare, torchdistill (ours-cl, ours-nchw, ours-bf16, "
                        "ours-fp32: ours with that channels_last/precision setting instead of the CLI default)")
    p.add_argument("--td-workers", type=int, default=None,
                   help="torchdistill DataLoader workers (default: min(16, cpus), its sample config uses 16)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-engine peak-memory child runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one engine, one round: peak memory
    return p.parse_args(argv)


def _models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    t_spec, teacher = create_model("resnet56", DataShape(3, 10, (32, 32), MEAN, STD))
    _, student = create_model("resnet20", DataShape(3, 10, (32, 32), MEAN, STD))
    return teacher.to(device), student.to(device), t_spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


# ----------------------------------------------------------------------------- ours

class Ours:
    """`run_distill` end to end (teacher checkpoint written once with untrained resnet56 weights)."""

    name = "ours"
    VARIANTS = {"ours": {}, "ours-cl": {"channels_last": "on"}, "ours-nchw": {"channels_last": "off"},
                "ours-bf16": {"precision": "bf16"}, "ours-fp32": {"precision": "fp32"}}

    def __init__(self, args: argparse.Namespace, device: torch.device, work: Path, name: str = "ours") -> None:
        from indistill_cli import progress
        from indistill_cli.io.history import write_model

        progress.set_quiet(True)
        teacher, _, spec = _models(torch.device("cpu"))
        self.teacher = str(work / "teacher.safetensors")
        write_model(self.teacher, teacher.state_dict(), spec, [], {})
        self.args, self.device, self.work, self.round = args, device, work, 0
        self.name, self.extra = name, self.VARIANTS[name]

    def run(self) -> float:
        from indistill_cli.engine.schedule import OptimConfig
        from indistill_cli.stages.commands import DistillSettings
        from indistill_cli.stages.distill import run_distill
        from indistill_cli.stages.options import RunOptions

        a = self.args
        if a.task == "ce":
            return self.run_ce()
        n = a.batches * a.batch_size
        opts = RunOptions(data=f"synthetic:3x32x32:10:{n}", val_fraction=0.0, batch_size=a.batch_size,
                          device=self.device.type, seed=self.round, save_every=0, **self.extra)
        optim = OptimConfig("sgd", LR, MOMENTUM, WD, schedule="none")
        self.round += 1
        s = run_distill(DistillSettings(teacher=self.teacher, student="resnet20", method=["kd"], epochs=2,
                                        output=str(self.work / "student.safetensors"), optim=optim, opts=opts,
                                        force=True))
        assert s["ce"] == CE_W and s["methods"][0]["weight"] == KD_W, s["methods"]  # the same loss as the others
        return float(s["epochs"][1]["img_per_s"])

    def run_ce(self) -> float:
        """`run_train` of cnn3-w0.5 on the CE data, two epochs; the second's img/s."""
        from indistill_cli.engine.schedule import OptimConfig
        from indistill_cli.stages.commands import TrainSettings
        from indistill_cli.stages.options import RunOptions
        from indistill_cli.stages.train import run_train

        a = self.args
        opts = RunOptions(data=a.ce_data, val_fraction=0.0, batch_size=a.batch_size, device=self.device.type,
                          seed=self.round, save_every=0, **self.extra)
        self.round += 1
        s = run_train(TrainSettings(model=a.ce_model, output=str(self.work / "ce.safetensors"), epochs=2,
                                    optim=OptimConfig("sgd", LR, MOMENTUM, WD, schedule="none"), opts=opts, force=True,
                                    last=False))
        return float(s["epochs"][1]["img_per_s"])


# ----------------------------------------------------------------------------- bare PyTorch

class Bare:
    """The same math as a plain loop: what one would write by hand (fp32, eager, NCHW)."""

    name = "bare"

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.teacher, self.student, _ = _models(device)
        self.teacher.eval()
        self.opt = torch.optim.SGD(self.student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.args, self.device = args, device
        images, labels = _data((args.batches + 1) * args.batch_size, 1)
        self.images, self.labels = images.to(device), labels.to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.ar = torch.arange(32, device=device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop of the zero-padded (4) batch and horizontal flip, in one gather."""
        b = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4))
        oy = torch.randint(0, 9, (b,), device=x.device)
        ox = torch.randint(0, 9, (b,), device=x.device)
        flip = torch.rand(b, device=x.device) < 0.5
        rows = oy[:, None] + self.ar
        cols = torch.where(flip[:, None], ox[:, None] + 31 - self.ar, ox[:, None] + self.ar)
        bi = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return out.contiguous()  # NCHW, PyTorch's default layout (the gather leaves NHWC strides)

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.augment(self.images[idx]).float().div_(255).sub_(self.mean).div_(self.std)
        y = self.labels[idx]
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
        loss = CE_W * F.cross_entropy(s_logits, y) + KD_W * kd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def run(self) -> float:
        a = self.args
        order = torch.randperm(len(self.labels), device=self.device)
        self.student.train()
        self.step(order[: a.batch_size])  # warm-up
        _sync(self.device)
        t0 = time.perf_counter()
        for i in range(1, a.batches + 1):
            self.step(order[i * a.batch_size : (i + 1) * a.batch_size])
        _sync(self.device)
        return a.batches * a.batch_size / (time.perf_counter() - t0)


class BareCE:
    """CE of cnn3-w0.5 as a plain loop: the CE data's uint8 images padded to the served size once, then per
    batch crop (pad 4) + flip in one gather, normalise, forward, CE, SGD step (fp32, eager, NCHW)."""

    name = "bare"

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from indistill_cli.data import load_dataset
        from indistill_cli.data.pixels import fit_size

        ds = load_dataset(args.ce_data, val_fraction=0.0)
        info = ds.info
        self.images = fit_size(ds.train.images, tuple(info.image_size)).to(device)  # zero padding, once
        self.labels = ds.train.labels.to(device)
        _, self.model = create_model(args.ce_model, DataShape(info.in_channels, info.num_classes, tuple(info.image_size), info.mean, info.std))
        self.model.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        self.args, self.device, self.flip = args, device, info.flip
        h, w = self.images.shape[-2:]
        self.ar_h, self.ar_w = torch.arange(h, device=device), torch.arange(w, device=device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = F.pad(x, (4, 4, 4, 4))
        oy = torch.randint(0, 9, (b,), device=x.device)
        ox = torch.randint(0, 9, (b,), device=x.device)
        flip = (torch.rand(b, device=x.device) < 0.5) & self.flip
        rows = oy[:, None] + self.ar_h
        cols = torch.where(flip[:, None], ox[:, None] + w - 1 - self.ar_w, ox[:, None] + self.ar_w)
        bi = torch.arange(b, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    def step(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.augment(self.images[idx]).float().div_(255).sub_(self.mean).div_(self.std)
        loss = F.cross_entropy(self.model(x), self.labels[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def run(self) -> float:
        """One epoch over the training split; its first step (warm-up) is not timed."""
        bs = self.args.batch_size
        order = torch.randperm(len(self.labels), device=self.device)
        self.model.train()
        self.step(order[:bs])
        _sync(self.device)
        t0, done = time.perf_counter(), 0
        for start in range(bs, len(order), bs):
            idx = order[start : start + bs]
            self.step(idx)
            done += len(idx)
        _sync(self.device)
        return done / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- torchdistill

class CifarLike(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def torchdistill_available() -> bool:
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return False
    return True


class TorchDistill:
    """torchdistill's DistillationBox with its sample CIFAR-10 KD config (T=4, WeightedSumLoss of KDLoss)
    and the train_one_epoch loop of its image-classification example."""

    name = "torchdistill"

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        import torchvision.transforms as T_
        from torchdistill.core.distillation import get_distillation_box

        teacher, student, _ = _models(device)
        self.student = student
        images, labels = _data((args.batches + 1) * args.batch_size, 2)
        tf = T_.Compose([T_.RandomCrop(32, padding=4), T_.RandomHorizontalFlip(p=0.5), T_.ToTensor(),
                         T_.Normalize(MEAN, STD)])
        dataset = {"synthetic/train": CifarLike(images, labels, tf)}
        workers = args.td_workers if args.td_workers is not None else min(16, os.cpu_count() or 1)
        train_config = {
            "log_freq": 100, "num_epochs": 10_000,
            "train_data_loader": {"dataset_id": "synthetic/train",
                                  "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
                                  "kwargs": {"batch_size": args.batch_size, "num_workers": workers,
                                             "pin_memory": device.type == "cuda", "drop_last": False}},
            "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "wrapper": "DataParallel",
                        "requires_grad": False, "frozen_modules": []},
            "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                        "wrapper": "DistributedDataParallel", "requires_grad": True, "frozen_modules": []},
            "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD}},
            "scheduler": {"key": "MultiStepLR", "kwargs": {"milestones": [91, 136], "gamma": 0.1}},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
                "criterion": {"key": "KDLoss", "kwargs": {
                    "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                    "teacher_module_io": "output", "temperature": T, "alpha": CE_W, "reduction": "batchmean"}},
                "weight": 1.0}}}},
        }
        self.box = get_distillation_box(teacher, student, dataset, train_config, device,
                                        [device.index or 0] if device.type == "cuda" else None, False, 1)
        self.args, self.device, self.epoch = args, device, 0

    def run(self) -> float:
        """One 'epoch' of the example's train_one_epoch; the first batch (worker start-up) is not timed."""
        box, device = self.box, self.device
        box.pre_epoch_process(epoch=self.epoch)
        self.epoch += 1
        done, t0 = 0, 0.0
        for i, (sample_batch, targets, supp_dict) in enumerate(box.train_data_loader):
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            _ = loss.item(), box.optimizer.param_groups[0]["lr"]  # the example's MetricLogger.update
            if torch.isnan(loss) or torch.isinf(loss):
                raise ValueError(f"The training loop was broken due to loss = {loss}")
            if i >= 1:
                done += sample_batch.shape[0]
        _sync(device)
        box.post_epoch_process()
        return done / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- driver

def make_engine(name: str, args: argparse.Namespace, device: torch.device, work: Path) -> Any:
    if name.startswith("ours"):
        return Ours(args, device, work, name)
    if name == "bare":
        return BareCE(args, device) if args.task == "ce" else Bare(args, device)
    return TorchDistill(args, device)


def peak_mb(device: torch.device) -> float:
    from indistill_cli.engine.runtime import peak_memory_mb  # CUDA allocator peak, or this process image's VmHWM

    return peak_memory_mb(device)


def child(args: argparse.Namespace, device: torch.device) -> None:
    """One engine, one round, in a process of its own: its peak memory."""
    with tempfile.TemporaryDirectory() as work:
        eng = make_engine(args.child, args, device, Path(work))
        ips = eng.run()
    print(json.dumps({"engine": args.child, "img_s": ips, "peak_mb": peak_mb(device)}))


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INDISTILL_QUIET="1", PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def memory_runs(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--batches", str(args.batches),
            "--batch-size", str(args.batch_size), "--task", args.task, "--ce-data", args.ce_data,
            "--ce-model", args.ce_model]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.td_workers is not None:
        base += ["--td-workers", str(args.td_workers)]
    for name in names:
        p = subprocess.run(base + ["--child", name], capture_output=True, text=True, env=_child_env(args))
        if p.returncode != 0:
            raise SystemExit(f"memory run of {name} failed:\n{p.stderr[-3000:]}")
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])["peak_mb"]
    p = subprocess.run([sys.executable, "-c", "import torch; from indistill_cli.engine.runtime import peak_memory_mb; "
                        "print(peak_memory_mb(torch.device('cpu')))"], capture_output=True, text=True,
                       env=_child_env(args), cwd=ROOT)
    out["import_torch_rss"] = float(p.stdout.strip() or "nan")
    out["cli_distill"] = _cli_run(args)
    return out


def _cli_run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole command (`distill` for kd, `train` for ce: CLI, dataset, checkpoints, validation) in a
    process of its own: its peak memory and img/s."""
    if args.task == "ce":
        with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, "-m", "indistill_cli", "train", args.ce_model, "--data", args.ce_data, "--epochs", "1",
                   "--batch-size", str(args.batch_size), "--device", args.device, "-o",
                   str(Path(work) / "m.safetensors"), "--json", "--quiet"]
            p = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(args), cwd=ROOT)
        if p.returncode != 0:
            raise SystemExit(f"the CLI train run failed:\n{p.stderr[-3000:]}")
        s = json.loads(p.stdout)
        return {"peak_memory_mb": s["peak_memory_mb"], "images_per_sec": s["images_per_sec"],
                "command": " ".join(["indistill"] + cmd[3:])}
    with tempfile.TemporaryDirectory() as work:
        w = Path(work)
        teacher, _, spec = _models(torch.device("cpu"))
        from indistill_cli.io.history import write_model

        write_model(str(w / "t.safetensors"), teacher.state_dict(), spec, [], {})
        n = args.batches * args.batch_size
        cmd = [sys.executable, "-m", "indistill_cli", "distill", "-t", str(w / "t.safetensors"), "-s", "resnet20",
               "-m", "kd", "--data", f"synthetic:3x32x32:10:{n + n // 9 + 1}", "--epochs", "1", "--batch-size",
               str(args.batch_size), "--device", args.device, "-o", str(w / "s.safetensors"), "--json", "--quiet"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(args), cwd=ROOT)
        if p.returncode != 0:
            raise SystemExit(f"the CLI distill run failed:\n{p.stderr[-3000:]}")
        s = json.loads(p.stdout)
        return {"peak_memory_mb": s["peak_memory_mb"], "images_per_sec": s["images_per_sec"],
                "command": " ".join(["indistill"] + cmd[3:])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.child:
        child(args, device)
        return {}
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    skipped = []
    if "torchdistill" in names and args.task == "ce":
        names.remove("torchdistill")
        skipped.append("torchdistill (--task ce: it has no CE-only training box)")
    if "torchdistill" in names and not torchdistill_available():
        names.remove("torchdistill")
        skipped.append("torchdistill (not installed: pip install -e '.[bench]')")
    log = sys.stderr
    what = (f"CE {args.ce_model} on {args.ce_data}" if args.task == "ce" else "KD resnet56 -> resnet20, 3x32x32")
    print(f"{what}, batch {args.batch_size}, {args.device}"
          f"{f' x{torch.get_num_threads()} threads' if device.type == 'cpu' else ''}, torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.batches} batches", file=log)
    with tempfile.TemporaryDirectory() as work:
        engines = [make_engine(n, args, device, Path(work)) for n in names]
        ips: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            k = r % len(engines)
            for eng in engines[k:] + engines[:k]:  # rotate the order each round
                ips[eng.name].append(eng.run())
            line = "  ".join(f"{n} {ips[n][-1]:7.1f}" for n in names)
            ratios = "  ".join(f"ours/{n} {ips['ours'][-1] / ips[n][-1]:.3f}" for n in names
                               if n != "ours" and "ours" in ips)
            print(f"round {r + 1}: img/s  {line}   {ratios}", file=log)
    result: dict[str, Any] = {
        "task": args.task, "device": args.device, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__, "batch_size": args.batch_size, "rounds": args.rounds, "batches": args.batches,
        "img_s": ips, "median_img_s": {n: statistics.median(v) for n, v in ips.items()}, "skipped": skipped}
    if "ours" in ips:
        result["ratios"] = {n: [a / b for a, b in zip(ips["ours"], ips[n])] for n in names if n != "ours"}
        result["median_ratio"] = {n: statistics.median(v) for n, v in result["ratios"].items()}
    print("median img/s: " + "  ".join(f"{n} {v:.1f}" for n, v in result["median_img_s"].items()), file=log)
    for n, v in result.get("median_ratio", {}).items():
        print(f"median of per-round ratios ours/{n}: {v:.3f}", file=log)
    if not args.no_memory:
        mem = memory_runs(args, names)
        result["peak_memory_mb"] = mem
        print("peak memory (MB, " + ("max RSS of a process of its own" if device.type == "cpu" else
                                     "CUDA allocator peak") + "): " +
              "  ".join(f"{n} {mem[n]:.0f}" for n in names) +
              f"  | `indistill {'train' if args.task == 'ce' else 'distill'}` CLI run {mem['cli_distill']['peak_memory_mb']:.0f}"
              f"  | python -c 'import torch' {mem['import_torch_rss']:.0f}", file=log)
    for s in skipped:
        print(f"skipped: {s}", file=log)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
