"""`indistill pipeline`: parse, then `stages.pipeline`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import RUNTIME, SPLIT, command, optim_config, override, run_options


@command(app, ("teacher", "student", "out", "data", "teacher_epochs", "aux", "aux_epochs", "criterion", "prune_mode",
               "a", "b", "epochs_per_tap", "method", "param", "ce", "epochs", "budget", "schedule_mode", "keep_flow",
               "keep_flow_decay", "flow", "select", "warmup_stage", "retrieval", "resume", "skip_nonfinite", "save_every",
               "strict", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "milestones", "teacher_optimizer",
               "teacher_lr", "teacher_schedule", *RUNTIME, *SPLIT, "train_fraction", "json_out", "quiet"),
         weight_decay=0.0,
         optimizer=override(str, "adam", help="The student's optimiser (warmup + KD plan): sgd, adam, adamw."),
         lr=override(float, 1e-3, help="The student's learning rate (reference: Adam 1e-3)."),
         schedule=override(str, "multistep", help="The student's lr schedule: multistep (default: x0.1 for the last "
                           "seventh of its epochs, the reference), cosine or none."),
         milestones=override(str, "", help="multistep epochs of the student's plan (default: the last seventh)."),
         teacher_optimizer=override(str, "sgd", help="Optimiser when the teacher is trained here."),
         teacher_lr=override(float, 0.05, help="Teacher learning rate."),
         teacher_schedule=override(str, "cosine", help="Teacher lr schedule."))
def pipeline(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher checkpoint, or an architecture name to "
                                                                 "train first.")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student architecture (e.g. cnn3-w0.5).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for every checkpoint, the manifest and plots.")],
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
    budget: Annotated[str, typer.Option(help="equal: the warmup's epochs count inside --epochs (compare with "
                                        "--no-warmup); added: they precede --epochs of KD (vs --epochs E+W).")] = "equal",
    schedule_mode: Annotated[str, typer.Option(help="continuous: warmup and KD share one optimiser and lr plan "
                                               "(the reference); separate: KD restarts them.")] = "continuous",
    keep_flow: Annotated[float, typer.Option(help="Ours, not in the paper: keep the warmup's per-tap MSE in the KD "
                                             "loss with this weight (see distill --keep-flow). 0: off.")] = 0.0,
    keep_flow_decay: Annotated[float, typer.Option(help="Per-epoch factor of the --keep-flow weight.")] = 1.0,
    flow: Annotated[bool, typer.Option("--flow/--no-flow", help="Record the per-tap MSE to the pruned teacher "
                                       "every epoch (flow.png; pruned for this alone with --no-warmup).")] = True,
    warmup_stage: Annotated[bool, typer.Option("--warmup/--no-warmup", help="--no-warmup: the same chain without "
                                                                            "InDistill, for comparison.")] = True,
    retrieval: Annotated[bool, typer.Option("--retrieve/--no-retrieve", help="Retrieval evaluation at the end.")] = True,
    resume: Annotated[bool, typer.Option(help="Skip stages whose outputs exist and match, and continue an "
                                         "interrupted stage from its saved state.")] = False,
    **o: Any,
) -> None:
    """The whole chain in one resumable command: [train teacher] -> [auxiliary] -> prune -> warmup -> distill -> evaluate -> retrieve.

    Each stage is the standalone command with the same options; outputs go to one folder.

    Examples:

        indistill pipeline -t resnet20 -s cnn3-w0.5 --data fashion-mnist-mini --teacher-epochs 8 --epochs 32 -o runs/ind

        indistill pipeline -t teacher.safetensors -s cnn3-w0.5 --no-warmup -o runs/baseline

        indistill pipeline -t preact_resnet18 -s cnn3-w0.5 --aux cnn3 -m pkt --ce 0 --data cifar10 -o runs/paper --resume
    """
    def body() -> Any:
        from indistill_cli.stages.pipeline import PipelineConfig, run_pipeline

        teacher_optim = optim_config({k: o[f"teacher_{k}"] for k in ("optimizer", "lr", "schedule")})
        return run_pipeline(PipelineConfig(
            teacher, student, out, run_options(o, resume=resume), teacher_epochs, teacher_optim, aux, aux_epochs,
            criterion=criterion, prune_mode=prune_mode, a=a, b=b, epochs_per_tap=epochs_per_tap,
            methods=method or ["kd"], params=param or [], ce=ce, distill_epochs=epochs, distill_optim=optim_config(o),
            warmup=warmup_stage, retrieve=retrieval, resume=resume, budget=budget, schedule_mode=schedule_mode,
            select=o["select"], keep_flow=keep_flow, keep_flow_decay=keep_flow_decay, flow=flow))

    run(body, o["json_out"], o["quiet"])
