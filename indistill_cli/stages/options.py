"""The options every stage that trains shares, each declared once with its command-line flag and help.

Torch-free: the CLI builds its commands' signatures from these declarations (`cli.options`), so a new
shared option is one field here (and its name in the `cli.options` group that lists it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.errors import BadInput
from indistill_cli.optionspec import option, shaping, tunable


@dataclass
class RunOptions:
    """Options shared by every stage that trains (CLI flags of the same names)."""

    data: str = option("fashion-mnist-mini", "--data", "-d", help="fashion-mnist-mini, fashion-mnist, mnist, "
                       "cifar10, cifar100, imagefolder:PATH, synthetic:CxHxW:K:N")
    data_root: str | None = option(None, help="Folder with local datasets (default $INDISTILL_DATA or "
                                   "~/.cache/indistill/data).", tunable=True)
    val_fraction: float = option(0.1, help="Share of train held out for checkpoint selection.")
    train_fraction: float = option(1.0, help="Train on this share of the training split (0 < F <= 1): a fixed, "
                                   "class-stratified subset, nested (the 1% subset lies inside the 10% one); "
                                   "validation and test splits unchanged.")
    image_size: int | None = option(None, help="Size models see (square): smaller images are zero-padded "
                                    "(centred), larger resized. Default: 32 for 28x28 sets (so CIFAR-style models "
                                    "see the whole image), the stored size for others; for imagefolder the images' "
                                    "own size when they share one, else 224.")
    cache: str = option("auto", help="Image folders: ram decodes the images once into memory and serves them like "
                        "the built-in sets (on the training device: a GPU must hold them too); off streams them from "
                        "disk every epoch; auto: ram when they fit in 2 GiB and half the free memory (host and GPU).")
    batch_size: int = option(128, "--batch-size", "-b", help="Training batch size.")
    eval_batch_size: int = option(256, help="Evaluation batch size.", tunable=True)
    seed: int = option(0, help="Random seed (same seed = bitwise-identical result on CPU).")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", tunable=True)
    precision: str = option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.", tunable=True)
    channels_last: str = option("auto", help="auto (on for CUDA, and for CPUs with oneDNN, where it measured "
                                "faster), on, off.", tunable=True)
    augment: bool = option(True, "--augment/--no-augment", help="Random crop + flip while training.")
    deterministic: bool = option(False, help="Deterministic kernels on GPU (torch.use_deterministic_algorithms, "
                                 "cuDNN autotuning off): repeatable GPU runs at a cost of typically 10-50% speed; "
                                 "ops without a deterministic kernel then fail. CPU runs are bitwise repeatable "
                                 "without it.", tunable=True)
    # batches with a non-finite loss or gradient tolerated (skipped) before failing
    skip_nonfinite: int = option(0, help="Skip up to N batches whose loss or gradient is NaN/inf before stopping "
                                 "(0: stop at the first).", tunable=True)
    # ImageFolder: an unreadable image is an error instead of being skipped and counted
    strict: bool = option(False, help="ImageFolder data: stop at an unreadable image instead of skipping it "
                          "(skipped images are counted on stderr).", tunable=True)
    # continue from the state an interrupted run left (see engine/resume.py)
    resume: bool = option(False, "--resume", help="Continue an interrupted run from its saved state (same command "
                          "and seed: the same final weights as an uninterrupted run).", tunable=True, role="run")
    # minutes between resume states (None: the default, 0: off)
    save_every: float | None = option(None, help="Minutes between resumable states, so a hard kill loses at most "
                                      "that much (default 10; 0 = only on SIGINT/SIGTERM).", tunable=True, role="run")
    # where the resume state lives (default OUT.resume/ beside the output)
    state_dir: str | None = option(None, help="Folder of the resume state (default OUT.resume/ beside the output; "
                                   "needed with -o -). Removed after success.", tunable=True, role="run")
    compile: bool = option(False, "--compile", param="compile_student", help="torch.compile the student's training "
                           "forward (compiling costs about a minute; pays back on long GPU runs). The backend is "
                           "$INDISTILL_COMPILE_BACKEND (default inductor; aot_eager needs no compiler); the graphs and "
                           "graph breaks are reported on stderr and in --json.")
    sync_bn: bool = option(False, "--sync-bn", help="Under torchrun: BatchNorm statistics over all ranks' batches "
                           "(SyncBatchNorm; CUDA only).")

    def check(self) -> None:
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise BadInput(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if not 0 <= self.val_fraction < 1:
            raise BadInput(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.train_fraction <= 1:
            raise BadInput(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.cache not in ("auto", "ram", "off"):
            raise BadInput(f"--cache must be auto, ram or off, got '{self.cache}'")
        if self.skip_nonfinite < 0:
            raise BadInput(f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")

    def as_dict(self) -> dict[str, Any]:
        """The options that shape results (recorded in history); where state goes and resuming do not."""
        return shaping(self)


# what a resumed run may change: the options whose declaration says so
TUNABLE = tunable(RunOptions, OptimConfig)
