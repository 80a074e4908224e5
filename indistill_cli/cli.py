"""The `indistill` command line: parse options, call one function, print. No training logic here.

torch is imported only inside commands, so `--help` answers fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(
    name="indistill", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    help="InDistill: information flow-preserving knowledge distillation.\n\n"
         "Typical chain: `train` a teacher, `prune` it to the student's widths, `warmup` the student "
         "layer by layer, `distill`, then `evaluate` / `retrieve`. Checkpoints are safetensors; `-` "
         "streams one through stdin/stdout.\n\n"
         "Example:\n\n"
         "    indistill train cnn3 --data fashion-mnist-mini --epochs 2 -o cnn3.safetensors\n\n"
         "    indistill evaluate cnn3.safetensors --data fashion-mnist-mini",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ---------------------------------------------------------------------------- shared options
Data = Annotated[str, typer.Option("--data", "-d", help="fashion-mnist-mini, fashion-mnist, mnist, cifar10, "
                                   "cifar100, imagefolder:PATH, synthetic:CxHxW:K:N")]
DataRoot = Annotated[Optional[str], typer.Option(help="Folder with local datasets (default $INDISTILL_DATA "
                                                 "or ~/.cache/indistill/data).")]
ValFraction = Annotated[float, typer.Option(help="Share of train held out for checkpoint selection.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Size models see (square): smaller images are zero-padded "
                                                 "(centred), larger resized. Default: 32 for 28x28 sets (so CIFAR-style "
                                                 "models see the whole image), the stored size for others, 224 for "
                                                 "imagefolder.")]
Select = Annotated[str, typer.Option(help="Which epoch to keep: auto (validation top-1 when a loss trains the "
                                     "classifier head, else validation retrieval mAP when one trains the "
                                     "embedding, else the last), top1, map or last.")]
Epochs = Annotated[int, typer.Option("--epochs", "-e", help="Training epochs.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Training batch size.")]
EvalBatch = Annotated[int, typer.Option(help="Evaluation batch size.")]
Seed = Annotated[int, typer.Option(help="Random seed (same seed = bitwise-identical result on CPU).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Precision = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.")]
ChannelsLast = Annotated[str, typer.Option(help="auto (on for CUDA, and for CPUs with oneDNN, where it measured "
                                                "faster), on, off.")]
Augment = Annotated[bool, typer.Option("--augment/--no-augment", help="Random crop + flip while training.")]
Deterministic = Annotated[bool, typer.Option(help="Deterministic kernels on GPU (torch.use_deterministic_algorithms, "
                                             "cuDNN autotuning off): repeatable GPU runs at a cost of typically "
                                             "10-50% speed; ops without a deterministic kernel then fail. CPU runs "
                                             "are bitwise repeatable without it.")]
Optimizer = Annotated[str, typer.Option(help="sgd, adam or adamw.")]
Momentum = Annotated[float, typer.Option(help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", "--wd", help="Weight decay.")]
Nesterov = Annotated[bool, typer.Option(help="Nesterov momentum (SGD).")]
Schedule = Annotated[str, typer.Option(help="none, cosine or multistep.")]
Milestones = Annotated[str, typer.Option(help="multistep epochs, comma separated, e.g. 150,180,210.")]
Gamma = Annotated[float, typer.Option(help="multistep lr factor.")]
WarmupEpochs = Annotated[int, typer.Option(help="Linear lr warmup epochs.")]
Out = Annotated[str, typer.Option("--output", "-o", help="Output checkpoint (.safetensors) or - for stdout.")]
Force = Annotated[bool, typer.Option(help="Overwrite an existing output.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")]
SkipNonfinite = Annotated[int, typer.Option(help="Skip up to N batches whose loss or gradient is NaN/inf before "
                                            "stopping (0: stop at the first).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its saved state (same "
                                      "command and seed: the same final weights as an uninterrupted run).")]
SaveEvery = Annotated[Optional[float], typer.Option(help="Minutes between resumable states, so a hard kill loses at "
                                                    "most that much (default 10; 0 = only on SIGINT/SIGTERM).")]
StateDir = Annotated[Optional[str], typer.Option(help="Folder of the resume state (default OUT.resume/ beside the "
                                                 "output; needed with -o -). Removed after success.")]
Strict = Annotated[bool, typer.Option(help="ImageFolder data: stop at an unreadable image instead of skipping "
                                      "it (skipped images are counted on stderr).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the student's training forward (compiling "
                                       "costs about a minute; pays back on long GPU runs).")]
SyncBN = Annotated[bool, typer.Option("--sync-bn", help="Under torchrun: BatchNorm statistics over all ranks' "
                                      "batches (SyncBatchNorm; CUDA only).")]


def _milestones(text: str) -> list[int]:
    from indistill_cli.errors import BadInput

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"--milestones must be comma-separated epochs, got '{text}'") from None


def _run(fn: Callable[[], Any], as_json: bool, quiet: bool = False, output: str | None = None) -> None:
    """Call a command body; errors become one line + exit code, results JSON on stdout."""
    if as_json and output == "-":
        from indistill_cli import progress

        progress.console.print("[red]error:[/red] --json and -o - both write to stdout; write the checkpoint "
                               "to a file, or drop --json")
        raise typer.Exit(2)
    import signal

    from indistill_cli import progress
    from indistill_cli.errors import IndistillError, Interrupted

    def terminated(_signum: int, _frame: Any) -> None:  # outside training: stop now, exit 143 (128 + 15)
        raise Interrupted("terminated (SIGTERM); no output was written", 143)

    progress.set_quiet(quiet)
    try:
        old_term = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread
        old_term = None
    try:
        result = fn()
    except Interrupted as e:  # SIGINT/SIGTERM: one line saying how to resume (training saves its state first)
        progress.console.print(str(e), style="yellow", soft_wrap=True, markup=False)
        raise typer.Exit(e.exit_code) from None
    except IndistillError as e:
        progress.console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        progress.console.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if as_json and result is not None and _is_rank0():  # under torchrun only rank 0 prints the result
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_opts(**kw: Any) -> Any:
    from indistill_cli.session import RunOptions

    return RunOptions(**kw)


def _optim(**kw: Any) -> Any:
    from indistill_cli.engine import OptimConfig

    kw["milestones"] = _milestones(kw.get("milestones", ""))
    return OptimConfig(**kw)


# ---------------------------------------------------------------------------- commands
@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Architecture name (resnet56, cnn3-w0.5, timm:resnet18, tv:...) "
                                              "or a checkpoint to keep training.")],
    output: Out,
    data: Data = "fashion-mnist-mini",
    epochs: Epochs = 30,
    batch_size: BatchSize = 128,
    optimizer: Optimizer = "sgd",
    lr: Annotated[float, typer.Option(help="Base learning rate.")] = 0.05,
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    schedule: Schedule = "cosine",
    milestones: Milestones = "",
    gamma: Gamma = 0.1,
    warmup_epochs: WarmupEpochs = 0,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = "auto",
    augment: Augment = True,
    deterministic: Deterministic = False,
    compile_student: Compile = False,
    sync_bn: SyncBN = False,
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    eval_batch_size: EvalBatch = 256,
    pretrained: Annotated[bool, typer.Option(help="Start timm/tv models from hub weights (needs network).")] = False,
    last: Annotated[bool, typer.Option("--last/--no-last", help="Also write OUT.last.safetensors.")] = True,
    select: Select = "auto",
    skip_nonfinite: SkipNonfinite = 0,
    resume: Resume = False,
    save_every: SaveEvery = None,
    state_dir: StateDir = None,
    strict: Strict = False,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a model with cross-entropy (a teacher, or a baseline student).

    Keeps the best epoch on the validation split in OUT and the last epoch in OUT.last.safetensors.

    Examples:

        indistill train cnn3 --data fashion-mnist-mini --epochs 2 -o cnn3.safetensors

        indistill train resnet56 --data cifar10 --epochs 240 --lr 0.05 --schedule multistep --milestones 150,180,210 -o resnet56.safetensors
    """
    def body() -> Any:
        from indistill_cli.train import run_train

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, device=device,
                         precision=precision, channels_last=channels_last, augment=augment,
                         deterministic=deterministic, compile=compile_student, sync_bn=sync_bn,
                         skip_nonfinite=skip_nonfinite, resume=resume, save_every=save_every,
                         state_dir=state_dir, strict=strict)
        optim = _optim(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                       schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=warmup_epochs)
        return run_train(model, output, epochs, optim, opts, pretrained=pretrained, force=force, save_last=last,
                         select=select)

    _run(body, json_out, quiet, output)


@app.command()
def prune(
    teacher: Annotated[str, typer.Argument(help="Trained teacher checkpoint (or - for stdin).")],
    like: Annotated[str, typer.Option("--like", help="The student whose tap widths the teacher is pruned to: a "
                                      "checkpoint or an architecture name (built for the teacher's data).")],
    output: Out,
    criterion: Annotated[str, typer.Option(help="Channel importance: l1 (filter |W| sum, the reference), l2, "
                                           "bn-scale (|gamma|) or activation (mean |activation| on val batches).")] = "l1",
    mode: Annotated[str, typer.Option(help="probe: keep the full teacher + kept indices (targets = real teacher "
                                      "activations at the kept channels, the reference); chained: a structurally "
                                      "pruned teacher that runs on its own.")] = "probe",
    pair: Annotated[Optional[list[str]], typer.Option("--pair", help="TEACHER_TAP:STUDENT_TAP, repeatable; replaces "
                                                      "the default pairing (k-th with k-th, or proportional).")] = None,
    finetune: Annotated[int, typer.Option(help="Cross-entropy fine-tuning epochs after pruning (--mode chained "
                                          "only), with the training options below.")] = 0,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset for the accuracies, activation "
                                                "statistics and fine-tuning (default: the teacher's).")] = None,
    batch_size: BatchSize = 128,
    optimizer: Optimizer = "sgd",
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 0.01,
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    schedule: Schedule = "cosine",
    milestones: Milestones = "",
    gamma: Gamma = 0.1,
    warmup_epochs: WarmupEpochs = 0,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = "auto",
    augment: Augment = True,
    deterministic: Deterministic = False,
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    eval_batch_size: EvalBatch = 256,
    select: Select = "auto",
    skip_nonfinite: SkipNonfinite = 0,
    resume: Resume = False,
    save_every: SaveEvery = None,
    state_dir: StateDir = None,
    strict: Strict = False,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Prune a trained teacher's channels at each tap to the student's widths (InDistill stage 1a).

    Taps pair k-th with k-th (proportionally when the counts differ; see --pair). At each pair the
    teacher's channels are ranked over their coupled group (residual stages included) and the
    student's width of them kept, in original order. Prints validation top-1 before and after.

    Examples:

        indistill prune resnet56.safetensors --like resnet20-w0.5 -o t_pruned.safetensors

        indistill prune cnn3.safetensors --like cnn3-w0.5 --mode chained --finetune 2 -o aux_pruned.safetensors
    """
    def body() -> Any:
        from indistill_cli.errors import BadInput
        from indistill_cli.prune import run_prune

        if json_out and output == "-":
            raise BadInput("--json and -o - would both write to stdout; write the checkpoint to a file")
        opts = _run_opts(data=data or "fashion-mnist-mini", data_root=data_root, val_fraction=val_fraction,
                         image_size=image_size, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         device=device, precision=precision, channels_last=channels_last, augment=augment,
                         deterministic=deterministic,
                         skip_nonfinite=skip_nonfinite, resume=resume, save_every=save_every,
                         state_dir=state_dir, strict=strict)
        optim = _optim(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                       schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=warmup_epochs)
        return run_prune(teacher, like, output, opts, criterion=criterion, mode=mode, pairs=pair or [],
                         finetune=finetune, optim=optim, data_given=data is not None, force=force, select=select)

    _run(body, json_out, quiet)


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Checkpoint to evaluate (or - for stdin).")],
    data: Data = "fashion-mnist-mini",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", help="(Pruned) teacher: adds per-tap MSE "
                                                   "to its targets and prediction agreement.")] = None,
    flow_images: Annotated[int, typer.Option(help="Images used for the --teacher flow view.")] = 2000,
    plot: Annotated[Optional[str], typer.Option(help="PNG of the per-tap MSE (with --teacher).")] = None,
    batch_size: EvalBatch = 256,
    device: Device = "auto",
    precision: Precision = "auto",
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    strict: Strict = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Top-1 / top-5 accuracy, loss and per-class accuracy of a checkpoint on a split.

    With --teacher, also the information-flow view: per paired tap, the MSE between the (pruned)
    teacher's target and the student's feature map, and teacher-student agreement.

    Examples:

        indistill evaluate cnn3.safetensors --data fashion-mnist-mini --json

        indistill evaluate student.safetensors --teacher t_pruned.safetensors --split val --plot flow.png
    """
    def body() -> Any:
        from indistill_cli.evaluate import run_evaluate

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         eval_batch_size=batch_size, device=device, precision=precision, strict=strict)
        return run_evaluate(model, split, opts, teacher=teacher, flow_images=flow_images, plot=plot)

    _run(body, json_out, quiet)


@app.command()
def inspect(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or - for stdin.")],
    json_out: Json = False,
) -> None:
    """Show a checkpoint's model spec, taps, parameters, pruning record and history.

    Example:

        indistill inspect cnn3.safetensors --json | jq .history
    """
    def body() -> Any:
        from indistill_cli.inspection import inspect_checkpoint

        return inspect_checkpoint(checkpoint)

    _run(body, json_out, quiet=json_out)


@app.command()
def models(json_out: Json = False) -> None:
    """List the native architectures with parameters, taps and embedding size.

    Example:

        indistill models
    """
    def body() -> Any:
        from indistill_cli.inspection import list_models_table

        return list_models_table()

    _run(body, json_out, quiet=json_out)


@app.command()
def datasets(json_out: Json = False) -> None:
    """List the built-in datasets and which are available locally (nothing is downloaded).

    Example:

        indistill datasets
    """
    def body() -> Any:
        from indistill_cli.inspection import list_datasets

        return list_datasets()

    _run(body, json_out, quiet=json_out)


@app.command()
def warmup(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Pruned teacher checkpoint (from `prune`) or -.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student checkpoint, - or architecture name.")],
    output: Out,
    data: Data = "fashion-mnist-mini",
    a: Annotated[float, typer.Option("--a", help="Curriculum: tap l trains for round(a + b*l) epochs.")] = 2.0,
    b: Annotated[float, typer.Option("--b", help="Curriculum slope (deeper taps get more epochs).")] = 1.0,
    epochs_per_tap: Annotated[Optional[str], typer.Option(help="Explicit epochs per tap, e.g. 3,4,5.")] = None,
    cumulative: Annotated[bool, typer.Option(help="Also keep the MSE terms of earlier taps.")] = False,
    batch_size: BatchSize = 128,
    optimizer: Optimizer = "adam",
    lr: Annotated[float, typer.Option(help="Learning rate (reference: Adam 1e-3).")] = 1e-3,
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 0.0,
    schedule: Schedule = "none",
    milestones: Milestones = "",
    gamma: Gamma = 0.1,
    reset_optimizer_each_epoch: Annotated[bool, typer.Option(
        help="Re-create the optimiser every epoch (the reference code's habit).")] = False,
    plan_epochs: Annotated[int, typer.Option(help="Make the warmup the first part of ONE lr plan over this many "
                                             "student epochs (warmup + KD, as the reference runs its student): the "
                                             "lr follows the plan and the optimiser state is written to a sidecar "
                                             "that `distill --continue-plan` takes up. 0: the warmup alone.")] = 0,
    plan: Annotated[Optional[str], typer.Option(help="Where --plan-epochs writes the sidecar (default "
                                                "OUT.plan.safetensors; needed with -o -).")] = None,
    select: Annotated[str, typer.Option(help="auto or last: the warmup trains taps only (no head, no embedding), "
                                        "so it keeps its last epoch.")] = "auto",
    plot: Annotated[Optional[str], typer.Option(help="Write the per-tap MSE curves as PNG.")] = None,
    flow_images: Annotated[int, typer.Option(help="Validation images for the per-epoch flow curves.")] = 1000,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = "auto",
    augment: Augment = True,
    deterministic: Deterministic = False,
    compile_student: Compile = False,
    sync_bn: SyncBN = False,
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    skip_nonfinite: SkipNonfinite = 0,
    resume: Resume = False,
    save_every: SaveEvery = None,
    state_dir: StateDir = None,
    strict: Strict = False,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """InDistill warmup: copy the pruned teacher's feature maps into the student, tap by tap.

    Tap l (shallow to deep) trains for a + b*l epochs on MSE(student tap l, teacher tap l) only.

    Examples:

        indistill warmup --teacher t_pruned.safetensors --student cnn3-w0.5 --data fashion-mnist-mini -o warm.safetensors --plot flow.png

        indistill prune t.safetensors --like cnn3-w0.5 -o - | indistill warmup -t - -s cnn3-w0.5 -o warm.safetensors
    """
    def body() -> Any:
        from indistill_cli.warmup import run_warmup

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         batch_size=batch_size, seed=seed, device=device, precision=precision,
                         channels_last=channels_last, augment=augment, deterministic=deterministic,
                         compile=compile_student, sync_bn=sync_bn,
                         skip_nonfinite=skip_nonfinite, resume=resume, save_every=save_every,
                         state_dir=state_dir, strict=strict)
        optim = _optim(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False,
                       schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=0,
                       reset_each_epoch=reset_optimizer_each_epoch, plan_epochs=plan_epochs)
        return run_warmup(teacher, student, output, optim, opts, a, b, epochs_per_tap, cumulative, plot,
                          flow_images, force, select, plan)

    _run(body, json_out, quiet, output)


@app.command()
def distill(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Trained teacher checkpoint (or -).")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student checkpoint (e.g. from warmup), - or "
                                                                 "architecture name (fresh weights).")],
    output: Out,
    method: Annotated[list[str], typer.Option("--method", "-m", help="KD method[:weight], repeatable: kd, pkt, "
                                              "pkt-cosine, fitnet, at, sp, rkd, dkd, crd.")],
    param: Annotated[Optional[list[str]], typer.Option(help="Method hyper-parameter, e.g. kd.temperature=2.")] = None,
    ce: Annotated[Optional[float], typer.Option(help="CE weight (default: the methods' paper recipe, e.g. 0.1 "
                                                     "with kd, 1.0 otherwise).")] = None,
    tap: Annotated[Optional[list[str]], typer.Option(help="TEACHER_TAP:STUDENT_TAP for tap-based methods "
                                                          "(fitnet, at, sp); default: the paired taps.")] = None,
    embedding_tap: Annotated[Optional[str], typer.Option(help="TEACHER_TAP:STUDENT_TAP for embedding methods "
                                                              "(pkt, rkd, crd); default: the embeddings.")] = None,
    adapters: Annotated[Optional[str], typer.Option(help="Sidecar for trained adapters (default "
                                                         "OUT.adapters.safetensors).")] = None,
    flow_teacher: Annotated[Optional[str], typer.Option(help="Pruned teacher: record the per-tap MSE to its "
                                                             "targets every epoch (information flow).")] = None,
    keep_flow: Annotated[float, typer.Option(help="Ours, not in the InDistill paper: keep the warmup's per-tap "
                                             "MSE to --flow-teacher in the KD loss with this weight, decaying "
                                             "by --keep-flow-decay per epoch, so KD does not undo the warmed "
                                             "alignment at once. 0: off.")] = 0.0,
    keep_flow_decay: Annotated[float, typer.Option(help="Per-epoch factor of the --keep-flow weight, in (0, 1].")] = 1.0,
    continue_plan: Annotated[bool, typer.Option("--continue-plan", help="Continue the lr plan and optimiser state "
                                                "a `warmup --plan-epochs N` left (one schedule for warmup + KD); "
                                                "the optimiser options then come from the plan.")] = False,
    plan: Annotated[Optional[str], typer.Option(help="The warmup's plan sidecar (default: beside --student, "
                                                "STUDENT.plan.safetensors).")] = None,
    select: Select = "auto",
    data: Data = "fashion-mnist-mini",
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", help="Training epochs (default 30; with "
                                                  "--continue-plan: what the plan has left).")] = None,
    batch_size: BatchSize = 128,
    optimizer: Optimizer = "sgd",
    lr: Annotated[float, typer.Option(help="Base learning rate.")] = 0.05,
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    nesterov: Nesterov = False,
    schedule: Schedule = "cosine",
    milestones: Milestones = "",
    gamma: Gamma = 0.1,
    warmup_epochs: WarmupEpochs = 0,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = "auto",
    augment: Augment = True,
    deterministic: Deterministic = False,
    compile_student: Compile = False,
    sync_bn: SyncBN = False,
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    skip_nonfinite: SkipNonfinite = 0,
    resume: Resume = False,
    save_every: SaveEvery = None,
    state_dir: StateDir = None,
    strict: Strict = False,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Knowledge distillation (stage 2): train the student from the teacher with one or more KD methods + CE.

    Examples:

        indistill distill -t teacher.safetensors -s warm.safetensors -m kd -o student.safetensors

        indistill distill -t teacher.safetensors -s cnn3-w0.5 -m kd -m pkt:0.5 --ce 1.0 -o student.safetensors

        indistill distill -t aux.safetensors -s warm.safetensors -m pkt --ce 0 --optimizer adam --lr 1e-3 --schedule multistep --milestones 48 --epochs 58 --wd 0 -o s.safetensors
    """
    def body() -> Any:
        from indistill_cli.distill import run_distill

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         batch_size=batch_size, seed=seed, device=device, precision=precision,
                         channels_last=channels_last, augment=augment, deterministic=deterministic,
                         compile=compile_student, sync_bn=sync_bn,
                         skip_nonfinite=skip_nonfinite, resume=resume, save_every=save_every,
                         state_dir=state_dir, strict=strict)
        optim = _optim(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                       schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=warmup_epochs)
        return run_distill(teacher, student, output, method, param or [], ce, tap or [], embedding_tap, epochs,
                           optim, opts, adapters, force, flow_teacher, select=select, continue_plan=continue_plan,
                           plan=plan, keep_flow=keep_flow, keep_flow_decay=keep_flow_decay)

    _run(body, json_out, quiet, output)


@app.command()
def retrieve(
    model: Annotated[Optional[str], typer.Argument(help="Trained checkpoint (or -); optional with --index.")] = None,
    data: Data = "fashion-mnist-mini",
    tap: Annotated[Optional[str], typer.Option(help="Tap to embed (pooled to a vector); default: the embedding.")] = None,
    database: Annotated[str, typer.Option(help="Split (train/val/test) or imagefolder:PATH searched.")] = "train",
    queries: Annotated[str, typer.Option(help="Split or imagefolder:PATH of the queries.")] = "test",
    metric: Annotated[str, typer.Option(help="cosine, euclidean or both.")] = "both",
    map_mode: Annotated[str, typer.Option("--map", help="exact (full ranking) or 11pt (the reference's "
                                          "interpolated mAP).")] = "exact",
    k: Annotated[Optional[list[int]], typer.Option("--k", help="precision@k / recall@k, repeatable.")] = None,
    export: Annotated[Optional[str], typer.Option(help="Write the embeddings (with labels) to a safetensors "
                                                       "file.")] = None,
    index: Annotated[Optional[str], typer.Option(help="Reuse embeddings written by --export.")] = None,
    query: Annotated[Optional[str], typer.Option(help="An image file: print its nearest database items.")] = None,
    top_k: Annotated[int, typer.Option(help="Neighbours shown for --query.")] = 10,
    chunk_size: Annotated[Optional[int], typer.Option(help="Queries ranked at once (default: ~256 MB).")] = None,
    batch_size: EvalBatch = 256,
    device: Device = "auto",
    precision: Annotated[str, typer.Option(help="fp32 (default: exact embeddings) or bf16/fp16.")] = "fp32",
    val_fraction: Annotated[float, typer.Option(help="Validation share carved from train (0: the database "
                                                     "is the whole train split, as the paper).")] = 0.0,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Retrieval evaluation (the paper's protocol): mAP, precision@k, recall@k by cosine and Euclidean distance.

    Database = train split with test-time transforms, queries = test split, relevant = same label.

    Examples:

        indistill retrieve student.safetensors --data fashion-mnist-mini --json

        indistill retrieve student.safetensors --export emb.safetensors && indistill retrieve --index emb.safetensors --map 11pt

        indistill retrieve student.safetensors --query shoe.png --top-k 5
    """
    def body() -> Any:
        from indistill_cli.retrieve import run_retrieve

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         eval_batch_size=batch_size, device=device, precision=precision)
        return run_retrieve(model, opts, tap, database, queries, metric, map_mode, k or [100], export, index,
                            query, top_k, chunk_size, force)

    _run(body, json_out, quiet)


@app.command()
def pipeline(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher checkpoint, or an architecture name to "
                                                                 "train first.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student architecture (e.g. cnn3-w0.5).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for every checkpoint, the manifest and plots.")],
    data: Data = "fashion-mnist-mini",
    teacher_epochs: Annotated[int, typer.Option(help="Epochs when the teacher is trained here.")] = 30,
    aux: Annotated[Optional[str], typer.Option(help="Auxiliary teacher architecture for large gaps (e.g. cnn3): "
                                                    "CE-trained, then PKT from the teacher.")] = None,
    aux_epochs: Annotated[int, typer.Option(help="Epochs of each auxiliary stage.")] = 20,
    criterion: Annotated[str, typer.Option(help="Pruning criterion: l1, l2, bn-scale, activation.")] = "l1",
    prune_mode: Annotated[str, typer.Option(help="probe (reference) or chained.")] = "probe",
    a: Annotated[float, typer.Option("--a", help="Curriculum: tap l trains round(a + b*l) epochs.")] = 2.0,
    b: Annotated[float, typer.Option("--b", help="Curriculum slope.")] = 1.0,
    epochs_per_tap: Annotated[Optional[str], typer.Option(help="Explicit warmup epochs per tap, e.g. 3,4,5.")] = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="KD method[:weight] for the final "
                                                                             "stage, repeatable.")] = None,
    param: Annotated[Optional[list[str]], typer.Option(help="Method hyper-parameter, e.g. kd.temperature=2.")] = None,
    ce: Annotated[Optional[float], typer.Option(help="CE weight in distill (default: the method's recipe).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Student epochs: in all, warmup included "
                                        "(--budget equal), or of KD after the warmup (--budget added).")] = 30,
    budget: Annotated[str, typer.Option(help="equal: the warmup's epochs count inside --epochs (the strict "
                                        "comparison with --no-warmup); added: they run before an unchanged KD "
                                        "schedule of --epochs (compare with --no-warmup --epochs E+W).")] = "equal",
    schedule_mode: Annotated[str, typer.Option(help="continuous: warmup and KD are one run of one optimiser and "
                                               "lr plan (the reference); separate: KD restarts its optimiser.")]
    = "continuous",
    keep_flow: Annotated[float, typer.Option(help="Ours, not in the paper: keep the warmup's per-tap MSE in the KD "
                                             "loss with this weight (see distill --keep-flow). 0: off.")] = 0.0,
    keep_flow_decay: Annotated[float, typer.Option(help="Per-epoch factor of the --keep-flow weight.")] = 1.0,
    select: Select = "auto",
    warmup_stage: Annotated[bool, typer.Option("--warmup/--no-warmup", help="--no-warmup: the same chain without "
                                                                            "InDistill, for comparison.")] = True,
    retrieval: Annotated[bool, typer.Option("--retrieve/--no-retrieve", help="Retrieval evaluation at the end.")] = True,
    resume: Annotated[bool, typer.Option(help="Skip stages whose outputs exist and match, and continue an "
                                         "interrupted stage from its saved state.")] = False,
    skip_nonfinite: SkipNonfinite = 0,
    save_every: SaveEvery = None,
    strict: Strict = False,
    batch_size: BatchSize = 128,
    optimizer: Annotated[str, typer.Option(help="The student's optimiser (warmup + KD plan): sgd, adam, adamw.")]
    = "adam",
    lr: Annotated[float, typer.Option(help="The student's learning rate (reference: Adam 1e-3).")] = 1e-3,
    weight_decay: WeightDecay = 0.0,
    schedule: Annotated[str, typer.Option(help="The student's lr schedule: multistep (default: x0.1 for the last "
                                          "seventh of its epochs, the reference), cosine or none.")] = "multistep",
    milestones: Annotated[str, typer.Option(help="multistep epochs of the student's plan (default: the last "
                                            "seventh).")] = "",
    teacher_optimizer: Annotated[str, typer.Option(help="Optimiser when the teacher is trained here.")] = "sgd",
    teacher_lr: Annotated[float, typer.Option(help="Teacher learning rate.")] = 0.05,
    teacher_schedule: Annotated[str, typer.Option(help="Teacher lr schedule.")] = "cosine",
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = "auto",
    channels_last: ChannelsLast = "auto",
    augment: Augment = True,
    deterministic: Deterministic = False,
    compile_student: Compile = False,
    sync_bn: SyncBN = False,
    val_fraction: ValFraction = 0.1,
    data_root: DataRoot = None,
    image_size: ImageSize = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """The whole chain in one resumable command: [train teacher] -> [auxiliary] -> prune -> warmup -> distill -> evaluate -> retrieve.

    Each stage is the standalone command with the same options; outputs go to one folder.

    Examples:

        indistill pipeline -t resnet20 -s cnn3-w0.5 --data fashion-mnist-mini --teacher-epochs 8 --epochs 32 -o runs/ind

        indistill pipeline -t teacher.safetensors -s cnn3-w0.5 --no-warmup -o runs/baseline

        indistill pipeline -t preact_resnet18 -s cnn3-w0.5 --aux cnn3 -m pkt --ce 0 --data cifar10 -o runs/paper --resume
    """
    def body() -> Any:
        from indistill_cli.pipeline import PipelineConfig, run_pipeline

        opts = _run_opts(data=data, data_root=data_root, val_fraction=val_fraction, image_size=image_size,
                         batch_size=batch_size, seed=seed, device=device, precision=precision,
                         channels_last=channels_last, augment=augment, deterministic=deterministic,
                         compile=compile_student, sync_bn=sync_bn,
                         skip_nonfinite=skip_nonfinite, resume=resume, save_every=save_every, strict=strict)
        student_optim = _optim(optimizer=optimizer, lr=lr, weight_decay=weight_decay, schedule=schedule,
                               milestones=milestones)
        teacher_optim = _optim(optimizer=teacher_optimizer, lr=teacher_lr, schedule=teacher_schedule)
        cfg = PipelineConfig(teacher, student, out, opts, teacher_epochs, teacher_optim, aux, aux_epochs,
                             criterion=criterion, prune_mode=prune_mode, a=a, b=b, epochs_per_tap=epochs_per_tap,
                             methods=method or ["kd"], params=param or [], ce=ce, distill_epochs=epochs,
                             distill_optim=student_optim, warmup=warmup_stage, retrieve=retrieval, resume=resume,
                             budget=budget, schedule_mode=schedule_mode, select=select, keep_flow=keep_flow,
                             keep_flow_decay=keep_flow_decay)
        return run_pipeline(cfg)

    _run(body, json_out, quiet)


def main() -> None:
    app()
