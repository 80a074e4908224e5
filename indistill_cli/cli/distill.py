"""`indistill distill`: parse, then `stages.distill`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OPTIM, OUTPUT, RESUMABLE, RUNTIME, SPLIT, command, optim_config, run_options


@command(app, ("teacher", "student", "output", "method", "param", "ce", "tap", "embedding_tap", "adapters",
               "flow_teacher", "keep_flow", "keep_flow_decay", "continue_plan", "plan", "select", "data", "epochs",
               "batch_size", *OPTIM, *RUNTIME, *SPLIT, "train_fraction", *RESUMABLE, *OUTPUT))
def distill(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Trained teacher checkpoint (or -).")],
    student: Annotated[str, typer.Option("--student", "-s", help="Student checkpoint (e.g. from warmup), - or "
                                                                 "architecture name (fresh weights).")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="KD method[:weight], repeatable. Logits: kd, "
                                              "kd-ls, dkd, dkd-ls, dist, mlkd; features: fitnet, at, sp, nst, vid, "
                                              "ofd, reviewkd, ft, ab, fsp, kdsvd; embedding: pkt, pkt-cosine, rkd, "
                                              "crd, cc. `indistill methods` lists their parameters and defaults.")],
    param: Annotated[Optional[list[str]], typer.Option(help="Method hyper-parameter, e.g. kd.temperature=2, "
                                                       "kd.learnable_temperature=1 (CTKD), ft.init_epochs=2.")] = None,
    ce: Annotated[Optional[float], typer.Option(help="CE weight (default: the methods' paper recipe, e.g. 0.1 "
                                                     "with kd, 1.0 otherwise).")] = None,
    tap: Annotated[Optional[list[str]], typer.Option(help="TEACHER_TAP:STUDENT_TAP for feature methods "
                                                          "(fitnet, at, sp, ...); default: the paired taps.")] = None,
    embedding_tap: Annotated[Optional[str], typer.Option(help="TEACHER_TAP:STUDENT_TAP for embedding methods "
                                                              "(pkt, rkd, crd, cc); default: the embeddings.")] = None,
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
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", help="Training epochs (default 30; with "
                                                  "--continue-plan: what the plan has left).")] = None,
    **o: Any,
) -> None:
    """Knowledge distillation (stage 2): train the student from the teacher with one or more KD methods + CE.

    Examples:

        indistill distill -t teacher.safetensors -s warm.safetensors -m kd -o student.safetensors

        indistill distill -t teacher.safetensors -s cnn3-w0.5 -m kd -m pkt:0.5 --ce 1.0 -o student.safetensors

        indistill distill -t aux.safetensors -s warm.safetensors -m pkt --ce 0 --optimizer adam --lr 1e-3 --schedule multistep --milestones 48 --epochs 58 --wd 0 -o s.safetensors
    """
    def body() -> Any:
        from indistill_cli.stages.distill import run_distill

        opts, optim = run_options(o), optim_config(o)
        return run_distill(teacher, student, o["output"], method, param or [], ce, tap or [], embedding_tap, epochs,
                           optim, opts, adapters, o["force"], flow_teacher, select=o["select"],
                           continue_plan=continue_plan, plan=plan, keep_flow=keep_flow, keep_flow_decay=keep_flow_decay)

    run(body, o["json_out"], o["quiet"], o["output"])
