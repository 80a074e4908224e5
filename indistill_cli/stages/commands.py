"""One settings dataclass per command: its options, each declared once (flag, help, default, role).

Torch-free, so the CLI builds every command's options, `--config` keys and `--help` from these without
loading a model. A new command is one class here (its fields, `command`, `order`), one stage module and
a few lines in `cli/`; `--config`, `--print-config`, the history record, `inspect --command` and `rerun`
then need nothing more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.errors import BadInput
from indistill_cli.optionspec import get, group, option
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.settings import (CHECKS, OPTIM, OUTPUT, RESUMABLE, RUNTIME, SPLIT, TRACKING,
                                           StageSettings)

MISSING = dataclasses.MISSING
SELECT_HELP = ("Which epoch to keep: auto (validation top-1 when a loss trains the classifier head, else validation "
               "retrieval mAP when one trains the embedding, else the last), top1, map or last.")
OUTPUT_HELP = "Output checkpoint (.safetensors) or - for stdout."


def _output(help: str = OUTPUT_HELP) -> Any:
    return option(MISSING, "--output", "-o", help=help, role="output")


def _texts(help: str, *flags: str, role: str = "shape") -> Any:
    """A repeatable text option (an empty list when not given)."""
    return option(MISSING, *flags, help=help, role=role, default_factory=list, cli_type=Optional[list[str]],
                  cli_default=None)


# ---------------------------------------------------------------------------------------------- training


@dataclass(kw_only=True)
class TrainSettings(StageSettings):
    command: ClassVar[str] = "train"
    order: ClassVar[tuple[str, ...]] = (
        "model", "output", "data", "epochs", "batch_size", *OPTIM, *RUNTIME, *SPLIT, "train_fraction",
        "eval_batch_size", "pretrained",
        "last", "select", *RESUMABLE, *OUTPUT, *TRACKING, *CHECKS)

    model: str = option(MISSING, argument=True, role="input", help="Architecture name (resnet56, cnn3-w0.5, "
                        "timm:resnet18, tv:...) or a checkpoint to keep training.")
    output: str = _output()
    epochs: int = option(30, "--epochs", "-e", help="Training epochs.")
    pretrained: bool = option(False, help="Start timm/tv models from hub weights (needs network).")
    last: bool = option(True, "--last/--no-last", help="Also write OUT.last.safetensors.", role="output")
    select: str = option("auto", help=SELECT_HELP)
    opts: RunOptions = group(RunOptions)
    optim: OptimConfig = group(OptimConfig)


@dataclass(kw_only=True)
class PruneSettings(StageSettings):
    command: ClassVar[str] = "prune"
    order: ClassVar[tuple[str, ...]] = (
        "teacher", "like", "output", "criterion", "mode", "pair", "finetune", "data", "batch_size", *OPTIM,
        *RUNTIME[:-2], *SPLIT, "train_fraction", "eval_batch_size", "select", *RESUMABLE, *OUTPUT, *TRACKING, *CHECKS)

    teacher: str = option(MISSING, argument=True, role="input", help="Trained teacher checkpoint (or - for stdin).")
    like: str = option(MISSING, "--like", role="input", help="The student whose tap widths the teacher is pruned to: "
                       "a checkpoint or an architecture name (built for the teacher's data).")
    output: str = _output()
    criterion: str = option("l1", help="Channel importance: l1 (filter |W| sum, the reference), l2, bn-scale (|gamma|) "
                            "or activation (mean |activation| on val batches).")
    mode: str = option("probe", help="probe: keep the full teacher + kept indices (targets = real teacher activations "
                       "at the kept channels, the reference); chained: a structurally pruned teacher that runs on its "
                       "own.")
    pair: list[str] = _texts("TEACHER_TAP:STUDENT_TAP, repeatable; replaces the default pairing (k-th with k-th, or "
                             "proportional).", "--pair")
    finetune: int = option(0, help="Cross-entropy fine-tuning epochs after pruning (--mode chained only), with the "
                           "training options below.")
    data: str | None = option(None, "--data", "-d", help="Dataset for the accuracies, activation statistics and "
                              "fine-tuning (default: the teacher's).")
    select: str = option("auto", help=SELECT_HELP)
    opts: RunOptions = group(RunOptions)
    optim: OptimConfig = group(lambda: OptimConfig(lr=0.01), help={"lr": "Fine-tuning learning rate."})

    def run_options(self) -> RunOptions:
        """The session's options: --data when given (else the teacher's, which the stage reads)."""
        return dataclasses.replace(self.opts, data=self.data or self.opts.data)


@dataclass(kw_only=True)
class WarmupSettings(StageSettings):
    command: ClassVar[str] = "warmup"
    order: ClassVar[tuple[str, ...]] = (
        "teacher", "student", "output", "data", "a", "b", "epochs_per_tap", "cumulative", "batch_size", "optimizer",
        "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma", "reset_optimizer_each_epoch",
        "plan_epochs", "plan", "select", "plot", "flow_images", *RUNTIME, *SPLIT, "train_fraction", *RESUMABLE, *OUTPUT,
        *TRACKING,
        *CHECKS)

    teacher: str = option(MISSING, "--teacher", "-t", role="input", help="Pruned teacher checkpoint (from `prune`) "
                          "or -.")
    student: str = option(MISSING, "--student", "-s", role="input", help="Student checkpoint, - or architecture name.")
    output: str = _output()
    a: float = option(2.0, "--a", help="Curriculum: tap l trains for round(a + b*l) epochs.")
    b: float = option(1.0, "--b", help="Curriculum slope (deeper taps get more epochs).")
    epochs_per_tap: str | None = option(None, help="Explicit epochs per tap, e.g. 3,4,5.")
    cumulative: bool = option(False, help="Also keep the MSE terms of earlier taps.")
    plan: str | None = option(None, role="output", help="Where --plan-epochs writes the sidecar (default "
                              "OUT.plan.safetensors; needed with -o -).")
    select: str = option("auto", help="auto or last: the warmup trains taps only (no head, no embedding), so it keeps "
                         "its last epoch.")
    plot: str | None = option(None, role="output", help="Write the per-tap MSE curves as PNG.")
    flow_images: int = option(1000, help="Validation images for the per-epoch flow curves.")
    opts: RunOptions = group(RunOptions)
    optim: OptimConfig = group(lambda: OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="none"),
                               help={"lr": "Learning rate (reference: Adam 1e-3)."})


METHOD_HELP = ("KD method[:weight], repeatable. Logits: kd, kd-ls, dkd, dkd-ls, dist, mlkd; features: fitnet, at, sp, "
               "nst, vid, ofd, reviewkd, ft, ab, fsp, kdsvd; embedding: pkt, pkt-cosine, rkd, crd, cc. `indistill "
               "methods` lists their parameters and defaults.")


@dataclass(kw_only=True)
class DistillSettings(StageSettings):
    command: ClassVar[str] = "distill"
    order: ClassVar[tuple[str, ...]] = (
        "teacher", "student", "output", "method", "param", "ce", "tap", "embedding_tap", "adapters", "flow_teacher",
        "keep_flow", "keep_flow_decay", "continue_plan", "plan", "select", "data", "epochs", "batch_size", *OPTIM,
        *RUNTIME, *SPLIT, "train_fraction", *RESUMABLE, *OUTPUT, *TRACKING, *CHECKS)

    teacher: str = option(MISSING, "--teacher", "-t", role="input", help="Trained teacher checkpoint (or -).")
    student: str = option(MISSING, "--student", "-s", role="input", help="Student checkpoint (e.g. from warmup), - or "
                          "architecture name (fresh weights).")
    output: str = _output()
    method: list[str] = option(MISSING, "--method", "-m", help=METHOD_HELP)
    param: list[str] = _texts("Method hyper-parameter, e.g. kd.temperature=2, kd.learnable_temperature=1 (CTKD), "
                              "ft.init_epochs=2.")
    ce: float | None = option(None, help="CE weight (default: the methods' paper recipe, e.g. 0.1 with kd, 1.0 "
                              "otherwise).")
    tap: list[str] = _texts("TEACHER_TAP:STUDENT_TAP for feature methods (fitnet, at, sp, ...); default: the paired "
                            "taps.")
    embedding_tap: str | None = option(None, help="TEACHER_TAP:STUDENT_TAP for embedding methods (pkt, rkd, crd, cc); "
                                       "default: the embeddings.")
    adapters: str | None = option(None, role="output", help="Sidecar for trained adapters (default "
                                  "OUT.adapters.safetensors).")
    flow_teacher: str | None = option(None, role="input", help="Pruned teacher: record the per-tap MSE to its targets "
                                      "every epoch (information flow).")
    keep_flow: float = option(0.0, help="Ours, not in the InDistill paper: keep the warmup's per-tap MSE to "
                              "--flow-teacher in the KD loss with this weight, decaying by --keep-flow-decay per epoch, "
                              "so KD does not undo the warmed alignment at once. 0: off.")
    keep_flow_decay: float = option(1.0, help="Per-epoch factor of the --keep-flow weight, in (0, 1].")
    continue_plan: bool = option(False, "--continue-plan", help="Continue the lr plan and optimiser state a `warmup "
                                 "--plan-epochs N` left (one schedule for warmup + KD); the optimiser options then "
                                 "come from the plan.")
    plan: str | None = option(None, role="input", help="The warmup's plan sidecar (default: beside --student, "
                              "STUDENT.plan.safetensors).")
    select: str = option("auto", help=SELECT_HELP)
    epochs: int | None = option(None, "--epochs", "-e", help="Training epochs (default 30; with --continue-plan: what "
                                "the plan has left).")
    flow_images: int = 1000  # validation images of the --flow-teacher curves
    opts: RunOptions = group(RunOptions)
    optim: OptimConfig = group(OptimConfig)


@dataclass(kw_only=True)
class ImportSettings(StageSettings):
    command: ClassVar[str] = "import"
    order: ClassVar[tuple[str, ...]] = (
        "source", "arch", "output", "data", "new_head", "mean", "std", "ema", "ignore", "val_fraction", "data_root",
        "image_size", "cache", "eval_batch_size", "seed", "device", "precision", *OUTPUT, *CHECKS)

    source: str = option(MISSING, argument=True, role="input", help="Weights to bring in: a .pth / .pt / .bin "
                         "(torch.save of a state dict or of a training checkpoint), a .safetensors (timm / Hugging "
                         "Face), or a hub id: timm:NAME or hf-hub:ORG/NAME (published weights).")
    arch: str | None = option(None, "--arch", "-a", help="The architecture the file was trained as: timm:NAME, "
                              "tv:NAME or a native name (not for hub ids).")
    output: str = _output()
    new_head: bool = option(False, "--new-head", help="Replace a classifier trained for another number of classes "
                            "with a fresh one for the data's (fine-tune it with `indistill train OUT`).")
    mean: str | None = option(None, help="Per-channel mean the weights expect, e.g. 0.485,0.456,0.406 (default: the "
                              "architecture's published configuration, else the data's).")
    std: str | None = option(None, help="Per-channel std the weights expect (with --mean).")
    ema: bool = option(False, "--ema", help="Take the EMA weights of a training checkpoint (model_ema, ema, "
                       "state_dict_ema).")
    ignore: list[str] = _texts("Glob of file keys to leave out (e.g. 'aux_head.*'), repeatable; everything else must "
                               "match the architecture exactly.", "--ignore")
    opts: RunOptions = group(lambda: RunOptions(augment=False))


# ---------------------------------------------------------------------------------------------- measuring


@dataclass(kw_only=True)
class EvaluateSettings(StageSettings):
    command: ClassVar[str] = "evaluate"
    order: ClassVar[tuple[str, ...]] = ("model", "data", "split", "teacher", "flow_images", "plot", "batch_size",
                                        "device", "precision", *SPLIT, "strict", "json_out", "quiet", *CHECKS)

    model: str = option(MISSING, argument=True, role="input", help="Checkpoint to evaluate (or - for stdin).")
    split: str = option("test", help="train, val or test.")
    teacher: str | None = option(None, "--teacher", "-t", role="input", help="(Pruned) teacher: adds per-tap MSE to "
                                 "its targets and prediction agreement.")
    flow_images: int = option(2000, help="Images used for the --teacher flow view.")
    plot: str | None = option(None, role="output", help="PNG of the per-tap MSE (with --teacher).")
    batch_size: int = option(256, help="Evaluation batch size.")
    per_class: bool = True  # the per-class table (compare and rerun leave it out)
    opts: RunOptions = group(RunOptions)

    def run_options(self) -> RunOptions:
        return dataclasses.replace(self.opts, eval_batch_size=self.batch_size)


@dataclass(kw_only=True)
class RetrieveSettings(StageSettings):
    command: ClassVar[str] = "retrieve"
    order: ClassVar[tuple[str, ...]] = (
        "model", "data", "tap", "database", "queries", "metric", "map_mode", "k", "export", "index", "query", "top_k",
        "chunk_size", "batch_size", "device", "precision", *SPLIT, *OUTPUT, *CHECKS)

    model: str | None = option(None, argument=True, role="input", help="Trained checkpoint (or -); optional with "
                               "--index.")
    tap: str | None = option(None, help="Tap to embed (pooled to a vector); default: the embedding.")
    database: str = option("train", help="Split (train/val/test) or imagefolder:PATH searched.")
    queries: str = option("test", help="Split or imagefolder:PATH of the queries.")
    metric: str = option("both", help="cosine, euclidean or both.")
    map_mode: str = option("exact", "--map", help="exact (full ranking) or 11pt (the reference's interpolated mAP).")
    k: list[int] = option(MISSING, "--k", help="precision@k / recall@k, repeatable.", default_factory=lambda: [100],
                          cli_type=Optional[list[int]], cli_default=None)
    export: str | None = option(None, role="output", help="Write the embeddings (with labels) to a safetensors file.")
    index: str | None = option(None, role="input", help="Reuse embeddings written by --export.")
    query: str | None = option(None, role="input", help="An image file: print its nearest database items.")
    top_k: int = option(10, help="Neighbours shown for --query.")
    chunk_size: int | None = option(None, help="Queries ranked at once (default: ~256 MB).")
    batch_size: int = option(256, help="Evaluation batch size.")
    opts: RunOptions = group(lambda: RunOptions(precision="fp32", val_fraction=0.0), help={
        "precision": "fp32 (default: exact embeddings) or bf16/fp16.",
        "val_fraction": "Validation share carved from train (0: the database is the whole train split, as the paper)."})

    def run_options(self) -> RunOptions:
        return dataclasses.replace(self.opts, eval_batch_size=self.batch_size)


@dataclass(kw_only=True)
class CompareSettings(StageSettings):
    command: ClassVar[str] = "compare"
    order: ClassVar[tuple[str, ...]] = ("models", "data", "batch", "runs", "warmup", "threads", "optimized", "plot",
                                        "eval_batch_size", "device", *SPLIT, "json_out", "quiet")

    models: list[str] = option(MISSING, argument=True, role="input", help="Checkpoints; the first is the reference "
                               "(usually the teacher) the others are compared with.")
    data: str | None = option(None, "--data", "-d", help="Also score every model on this dataset's test split: top-1 "
                              "(evaluate) and retrieval mAP (retrieve). The models must have its classes.")
    batch: int = option(64, help="The serving batch timed beside batch 1.")
    runs: int = option(30, help="Timed runs per measurement (median and p90 are reported).")
    warmup: int = option(5, help="Untimed runs before timing.")
    threads: int | None = option(None, help="Torch (and onnxruntime) threads; default: torch's.")
    optimized: str = option("auto", help="Optimised path timed beside eager: auto (onnxruntime when installed), "
                            "onnxruntime, compile (torch.compile) or none.")
    plot: str | None = option(None, role="output", help="PNG of top-1 against latency, one point per model (needs "
                              "--data).")
    opts: RunOptions = group(RunOptions, help={
        "eval_batch_size": "Evaluation batch size (with --data).",
        "val_fraction": "Validation share carved from train, as the models were trained (top-1 is on the test split "
                        "either way; retrieval searches the whole train split)."})

    def run_options(self) -> RunOptions:
        return dataclasses.replace(self.opts, data=self.data or self.opts.data)


@dataclass(kw_only=True)
class ExportSettings(StageSettings):
    command: ClassVar[str] = "export"
    output_field: ClassVar[str] = "out"
    order: ClassVar[tuple[str, ...]] = ("checkpoint", "out", "fmt", "output", "include_normalize", "check", "tolerance",
                                        "parity_images", "data", "data_root", *OUTPUT)

    checkpoint: str = option(MISSING, argument=True, role="input", help="Model checkpoint to export (or - for stdin).")
    out: str = option(MISSING, "--out", "-o", role="output", help="Output file: model.onnx or model.pt2.")
    fmt: str = option("auto", "--format", help="auto (from the file name), onnx, or torch-export (a .pt2 program for "
                      "torch.export.load).")
    output: str = option("logits", "--output", help="What the exported model returns: logits, or embedding (the "
                         "pooled embedding tap, for retrieval).")
    include_normalize: bool = option(False, help="Fold the normalisation into the graph: the input is then pixels "
                                     "scaled to [0, 1].")
    check: bool = option(True, "--check/--no-check", help="Run the exported model against the eager one on a real "
                         "batch before writing (exit 1 past --tolerance).")
    tolerance: float = option(1e-4, help="Largest absolute difference the parity check accepts.")
    parity_images: int = option(32, help="Images in the parity batch.")
    data: str | None = option(None, "--data", "-d", help="Dataset whose test images the parity check runs on (default: "
                              "the checkpoint's own; random inputs, with a warning, when it is not here).")
    opts: RunOptions = group(RunOptions)


# ---------------------------------------------------------------------------------------------- views


@dataclass(kw_only=True)
class InspectSettings(StageSettings):
    command: ClassVar[str] = "inspect"
    order: ClassVar[tuple[str, ...]] = ("checkpoint", "show_command", "config_out", "output", "json_out")

    checkpoint: str = option(MISSING, argument=True, role="input", help="Checkpoint file, or - for stdin.")
    show_command: bool = option(False, "--command", help="Print the command line that reproduces the checkpoint's "
                                "last stage from its recorded parents (their sha256 checked when it runs).")
    config_out: str | None = option(None, role="output", help="With --command: also write that command's options as "
                                    "a config file (YAML, or TOML for a .toml name) for `--config`.")
    output: str | None = option(None, "--output", "-o", role="output", help="With --command: the output the printed "
                                "command writes (default: NAME.rerun.safetensors beside the recorded output).")


@dataclass(kw_only=True)
class RerunSettings(StageSettings):
    command: ClassVar[str] = "rerun"
    order: ClassVar[tuple[str, ...]] = ("checkpoint", "output", "force", "json_out", "quiet")

    checkpoint: str = option(MISSING, argument=True, role="input", help="A checkpoint written by train, import (of a "
                             "file), prune, warmup or distill.")
    output: str = option(MISSING, "--output", "-o", role="output", help="Where the rerun writes its checkpoint.")


@dataclass(kw_only=True)
class ListingSettings(StageSettings):
    """`models`, `methods`: no options but --json."""

    command: ClassVar[str] = "models"
    order: ClassVar[tuple[str, ...]] = ("json_out",)


@dataclass(kw_only=True)
class MethodsSettings(ListingSettings):
    command: ClassVar[str] = "methods"


@dataclass(kw_only=True)
class DatasetsSettings(StageSettings):
    command: ClassVar[str] = "datasets"
    order: ClassVar[tuple[str, ...]] = ("data_root", "json_out")
    opts: RunOptions = group(RunOptions)


# ---------------------------------------------------------------------------------------------- the chain


def reference_student_optim() -> OptimConfig:
    """The reference's student schedule: Adam 1e-3 without weight decay, 10x lower for the last seventh
    (its 70 CIFAR epochs: 60 at 1e-3, 10 at 1e-4); the milestone is placed on the whole plan."""
    return OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="multistep", milestones=[])


def _adam_plain() -> OptimConfig:
    return OptimConfig("adam", 1e-3, weight_decay=0.0, schedule="none")


@dataclass(kw_only=True)
class PipelineSettings(StageSettings):
    command: ClassVar[str] = "pipeline"
    output_field: ClassVar[str] = "out"
    order: ClassVar[tuple[str, ...]] = (
        "teacher", "student", "out", "data", "teacher_epochs", "aux", "aux_epochs", "criterion", "prune_mode", "a", "b",
        "epochs_per_tap", "method", "param", "ce", "epochs", "budget", "schedule_mode", "keep_flow", "keep_flow_decay",
        "flow", "select", "warmup_stage", "retrieval", "resume", "skip_nonfinite", "save_every", "strict", "batch_size",
        "optimizer", "lr", "weight_decay", "schedule", "milestones", "teacher_optimizer", "teacher_lr",
        "teacher_schedule", *RUNTIME, *SPLIT, "train_fraction", "json_out", "quiet", *TRACKING)
    # a config file may group the stages' options (`teacher: {epochs: 20, lr: 0.1}`, `warmup: {a: 2}`)
    sections: ClassVar[dict[str, tuple[str, ...]]] = {
        "teacher": ("teacher_epochs", "teacher_optimizer", "teacher_lr", "teacher_schedule"),
        "aux": ("aux_epochs",),
        "prune": ("criterion", "prune_mode"),
        "warmup": ("a", "b", "epochs_per_tap"),
        "distill": ("method", "param", "ce", "keep_flow", "keep_flow_decay", "flow", "select"),
    }

    teacher: str = option(MISSING, "--teacher", "-t", role="input", help="Teacher checkpoint, or an architecture name "
                          "to train first.")
    student: str = option(MISSING, "--student", "-s", role="input", help="Student architecture (e.g. cnn3-w0.5).")
    out: str = option(MISSING, "--out", "-o", role="output", help="Folder for every checkpoint, the manifest and "
                      "plots.")
    teacher_epochs: int = option(30, help="Epochs when the teacher is trained here.")
    aux: str | None = option(None, help="Auxiliary teacher architecture for large gaps (e.g. cnn3): CE-trained, then "
                             "PKT from the teacher.")
    aux_epochs: int = option(20, help="Epochs of each auxiliary stage.")
    criterion: str = option("l1", help="Pruning criterion: l1, l2, bn-scale, activation.")
    prune_mode: str = option("probe", help="probe (reference) or chained.")
    a: float = option(2.0, "--a", help="Curriculum: tap l trains round(a + b*l) epochs.")
    b: float = option(1.0, "--b", help="Curriculum slope.")
    epochs_per_tap: str | None = option(None, help="Explicit warmup epochs per tap, e.g. 3,4,5.")
    method: list[str] = option(MISSING, "--method", "-m", help="KD method[:weight] for the final stage, repeatable.",
                               default_factory=lambda: ["kd"], cli_type=Optional[list[str]], cli_default=None)
    param: list[str] = _texts("Method hyper-parameter, e.g. kd.temperature=2.")
    ce: float | None = option(None, help="CE weight in distill (default: the method's recipe).")
    epochs: int = option(30, "--epochs", "-e", help="Student epochs: in all, warmup included (--budget equal), or of "
                         "KD after the warmup (--budget added).")
    budget: str = option("equal", help="equal: the warmup's epochs count inside --epochs (compare with --no-warmup); "
                         "added: they precede --epochs of KD (vs --epochs E+W).")
    schedule_mode: str = option("continuous", help="continuous: warmup and KD share one optimiser and lr plan (the "
                                "reference); separate: KD restarts them.")
    keep_flow: float = option(0.0, help="Ours, not in the paper: keep the warmup's per-tap MSE in the KD loss with "
                              "this weight (see distill --keep-flow). 0: off.")
    keep_flow_decay: float = option(1.0, help="Per-epoch factor of the --keep-flow weight.")
    flow: bool = option(True, "--flow/--no-flow", help="Record the per-tap MSE to the pruned teacher every epoch "
                        "(flow.png; pruned for this alone with --no-warmup).")
    select: str = option("auto", help=SELECT_HELP)
    warmup: bool = option(True, "--warmup/--no-warmup", param="warmup_stage", help="--no-warmup: the same chain "
                          "without InDistill, for comparison.")
    retrieve: bool = option(True, "--retrieve/--no-retrieve", param="retrieval", help="Retrieval evaluation at the "
                            "end.")
    opts: RunOptions = group(RunOptions, help={
        "resume": "Skip stages whose outputs exist and match, and continue an interrupted stage from its saved state."},
        flags={"resume": ("--resume/--no-resume",)})
    optim: OptimConfig = group(reference_student_optim, help={
        "optimizer": "The student's optimiser (warmup + KD plan): sgd, adam, adamw.",
        "lr": "The student's learning rate (reference: Adam 1e-3).",
        "schedule": "The student's lr schedule: multistep (default: x0.1 for the last seventh of its epochs, the "
                    "reference), cosine or none.",
        "milestones": "multistep epochs of the student's plan (default: the last seventh)."})
    teacher_optim: OptimConfig = group(OptimConfig, prefix="teacher_", help={
        "optimizer": "Optimiser when the teacher is trained here.", "lr": "Teacher learning rate.",
        "schedule": "Teacher lr schedule."})
    aux_optim: OptimConfig = dataclasses.field(default_factory=_adam_plain)  # the auxiliary's PKT stage
    warmup_optim: OptimConfig = dataclasses.field(default_factory=_adam_plain)  # a warmup on its own plan (separate)

    @property
    def prunes(self) -> bool:
        """The teacher is pruned: the warmup's targets, or the flow view's reference without a warmup."""
        return self.warmup or self.flow

    def check(self) -> None:
        if self.budget not in ("equal", "added"):
            raise BadInput(f"--budget must be equal or added, got '{self.budget}'")
        if self.schedule_mode not in ("continuous", "separate"):
            raise BadInput(f"--schedule-mode must be continuous or separate, got '{self.schedule_mode}'")
        if self.epochs < 1:
            raise BadInput(f"--epochs must be at least 1, got {self.epochs}")
        if self.keep_flow and not self.warmup:
            raise BadInput("--keep-flow keeps the warmup's flow terms: it needs the warmup (drop --no-warmup)")


@dataclass(kw_only=True)
class StudySettings(StageSettings):
    """`indistill study`: the design (what every run computes; a preset fixes it) and how the runs execute."""

    command: ClassVar[str] = "study"
    output_field: ClassVar[str] = "out"
    order: ClassVar[tuple[str, ...]] = (
        "teacher", "student", "data", "methods", "seeds", "budget", "warmup", "epochs", "out", "preset", "aux",
        "aux_epochs", "cumulative", "ce_arm", "param", "ce", "keep_flow", "flow", "criterion", "gap_check",
        "accept_gap", "pilot_seed", "primary_seeds", "teacher_epochs", "teacher_optimizer", "teacher_lr",
        "teacher_schedule", "optimizer", "lr", "weight_decay", "schedule", "milestones", "batch_size",
        "train_fraction", *SPLIT, "device", "precision", "channels_last", "augment", "deterministic", "jobs",
        "threads", "devices", "executor", "executor_param", "protocol_only", "report", "json_out", "quiet")
    # the options that make up the study's design (a --preset fixes them all)
    design: ClassVar[tuple[str, ...]] = (
        "teacher", "student", "data", "methods", "seeds", "budget", "warmup", "epochs", "teacher_epochs", "aux",
        "aux_epochs", "cumulative", "ce_arm", "param", "ce", "keep_flow", "gap_check", "pilot_seed",
        "primary_seeds", "flow", "criterion", "optimizer", "lr", "weight_decay", "schedule", "milestones",
        "teacher_optimizer", "teacher_lr", "teacher_schedule", "batch_size", "val_fraction", "train_fraction",
        "image_size", "augment", "precision", "channels_last", "deterministic")

    out: str = option(MISSING, "--out", "-o", role="output", help="The study's folder: protocol, runs, report.")
    teacher: str | None = option(None, "--teacher", "-t", role="input", help="Teacher checkpoint, or an architecture "
                                 "to train here first (--teacher-epochs, seed 0).")
    student: str | None = option(None, "--student", "-s", role="input", help="Student architecture (fresh weights "
                                 "per seed), e.g. cnn3-w0.5.")
    methods: str = option("kd", help="KD methods, comma separated (`indistill methods`): each is a row of arms.")
    seeds: int = option(5, help="Seeds 0..N-1: each seed's arms start from one initial student and see the same "
                        "batches.")
    budget: str = option("both", help="equal: InD+M (W+E) vs M+W (E+W epochs); added: InD+M vs M (E), beside the "
                         "control M+W - M; both: every arm and view.")
    warmup: str | None = option(None, help="The warmup's epochs per tap, e.g. 3,4,5 (default: 2 + l for tap l).")
    epochs: int = option(20, "--epochs", "-e", help="E: the KD method's epochs; the warmup's W come on top in InD+M "
                         "and M+W.")
    preset: str | None = option(None, help="A registered study (effect-fmnist, effect-paper, methods-mini, "
                                "methods-fmnist, smoke, ...): its whole design; only how it runs may be given beside "
                                "it.")
    aux: str | None = option(None, help="Auxiliary teacher architecture for large gaps (e.g. cnn3): CE-trained, then "
                             "PKT from the teacher; the student's teacher.")
    aux_epochs: int = option(20, help="Epochs of each auxiliary stage.")
    cumulative: bool = option(False, help="Also the arms InDcum+M: the warmup with earlier taps kept in the loss "
                              "(`warmup --cumulative`).")
    ce_arm: bool = option(False, help="Also a CE-alone student (E+W epochs), for context.")
    param: list[str] = _texts("Method hyper-parameter, e.g. kd.temperature=2 (repeatable).")
    ce: float | None = option(None, help="CE weight of every method (default: each method's recipe).")
    keep_flow: str | None = option(None, help="Ours, not the paper's: also the arms InD+M+keep, the warmup's MSE kept "
                                   "in the KD loss, WEIGHT:DECAY; several (1:0.7,10:0.9) are chosen between on "
                                   "--pilot-seed.")
    flow: bool = option(True, "--flow/--no-flow", help="Record the per-tap MSE to the pruned teacher through KD "
                        "(flow.png).")
    criterion: str = option("l1", help="Pruning criterion: l1, l2, bn-scale, activation.")
    gap_check: float = option(0.0, help="First check that the teacher (and auxiliary) beat a CE student by this many "
                              "validation mAP points; 0: no check.")
    accept_gap: bool = option(False, role="run", help="Run the arms even when the gap check fails.")
    pilot_seed: int = option(100, help="Seed of the gap check and the keep-flow pilot.")
    primary_seeds: int = option(0, help="The first K seeds are the primary analysis (0: all).")
    teacher_epochs: int = option(30, help="Epochs when the teacher is trained here.")
    jobs: int | None = option(None, "--jobs", "-j", role="run", help="Runs at a time (worker processes; the CPU "
                              "threads are split between them). Default: the preset's, else 1.")
    threads: int | None = option(None, role="run", help="Torch threads per run (default: the cores / --jobs). CPU "
                                 "numbers are bitwise repeatable for one thread count.")
    devices: str | None = option(None, role="run", help="GPUs, e.g. 0,1: one run per GPU at a time.")
    executor: str = option("pool", role="run", help="pool: local processes; local or slurm: submitit (pip install "
                           "'indistill[cluster]'), one job per run, this command staying as the driver that submits "
                           "each run once its dependencies have finished (a rerun continues).")
    executor_param: list[str] = _texts("submitit parameter KEY=VALUE, e.g. slurm_partition=gpu, timeout_min=240.",
                                       role="run")
    protocol_only: bool = option(False, role="run", help="Write protocol.md and protocol.json and stop (commit them "
                                 "before the first run).")
    report: bool = option(False, role="run", help="Only gather the finished runs and write the report.")
    opts: RunOptions = group(RunOptions, help={
        "data": "The dataset every run trains and is scored on (names as in `indistill datasets`).",
        "device": "auto, cpu, cuda or cuda:N for every run (--devices: one run per GPU)."})
    optim: OptimConfig = group(reference_student_optim, help={
        "optimizer": "The student's optimiser (every arm): sgd, adam, adamw.",
        "lr": "The student's learning rate (reference: Adam 1e-3).",
        "schedule": "The student's lr schedule: multistep (default: x0.1 for the last seventh of each run's epochs, "
                    "the reference), cosine or none.",
        "milestones": "multistep epochs of the student's plan (default: the last seventh)."})
    teacher_optim: OptimConfig = group(OptimConfig, prefix="teacher_", help={
        "optimizer": "Optimiser when the teacher is trained here.", "lr": "Teacher learning rate.",
        "schedule": "Teacher lr schedule."})

    def changed(self, names: tuple[str, ...]) -> list[str]:
        """The options among `names` (parameter names) whose values are not the command's defaults."""
        by = {f.name: f for f in self.exposed()}
        return [n for n in names if n in by and by[n].to_cli(get(self, by[n].path)) != by[n].to_cli(by[n].default)]


SETTINGS: dict[str, type[StageSettings]] = {c.command: c for c in (
    TrainSettings, ImportSettings, PruneSettings, WarmupSettings, DistillSettings, EvaluateSettings,
    RetrieveSettings, CompareSettings, ExportSettings, InspectSettings, RerunSettings, ListingSettings,
    MethodsSettings, DatasetsSettings, PipelineSettings, StudySettings)}


def settings_from_record(record: dict[str, Any]) -> StageSettings:
    """The settings a checkpoint's history records (`StageSettings.record`): its options, then the values set
    by the program that no option gives."""
    cls = SETTINGS.get(str(record.get("name")))
    if cls is None:
        raise BadInput(f"the recorded command '{record.get('name')}' is not one this indistill knows")
    s = cls.build(cls.from_config(dict(record.get("config") or {}), lambda keys: "the recorded command"))
    for path, value in (record.get("hidden") or {}).items():
        *parents, name = path.split(".")
        target = s
        for p in parents:
            target = getattr(target, p)
        if not hasattr(target, name):
            raise BadInput(f"the recorded command sets '{path}', which this indistill does not have")
        setattr(target, name, value)
    return s
