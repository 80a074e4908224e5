"""`indistill compare`: parse, then `stages.compare`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import SPLIT, command, override, run_options


@command(app, ("models", "data", "batch", "runs", "warmup", "threads", "optimized", "plot", "eval_batch_size",
               "device", *SPLIT, "json_out", "quiet"),
         data=override(Optional[str], None, "--data", "-d", help="Also score every model on this dataset's test split: "
                       "top-1 (evaluate) and retrieval mAP (retrieve). The models must have its classes."),
         val_fraction=override(float, 0.1, help="Validation share carved from train, as the models were trained "
                               "(top-1 is on the test split either way; retrieval searches the whole train split)."))
def compare(
    models: Annotated[list[str], typer.Argument(help="Checkpoints; the first is the reference (usually the "
                                                     "teacher) the others are compared with.")],
    batch: Annotated[int, typer.Option(help="The serving batch timed beside batch 1.")] = 64,
    runs: Annotated[int, typer.Option(help="Timed runs per measurement (median and p90 are reported).")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Torch (and onnxruntime) threads; default: torch's.")] = None,
    optimized: Annotated[str, typer.Option(help="Optimised path timed beside eager: auto (onnxruntime when "
                                           "installed), onnxruntime, compile (torch.compile) or none.")] = "auto",
    plot: Annotated[Optional[str], typer.Option(help="PNG of top-1 against latency, one point per model (needs "
                                                "--data).")] = None,
    eval_batch_size: Annotated[int, typer.Option(help="Evaluation batch size (with --data).")] = 256,
    **o: Any,
) -> None:
    """What compression bought: parameters, MACs, bytes on disk and latency (batch 1 and --batch, eager and
    onnxruntime) of each checkpoint, with --data its top-1 and retrieval mAP, and every figure as a ratio
    against the first checkpoint.

    MACs are counted by torch.utils.flop_counter (FLOPs / 2) at batch 1 for the model's input size.
    Latency is measured on this machine (--device, --threads) and depends on what else runs on it.

    Examples:

        indistill compare teacher.safetensors student.safetensors

        indistill compare teacher.safetensors student.safetensors --data fashion-mnist-mini --plot tradeoff.png --json
    """
    def body() -> Any:
        from indistill_cli.stages.compare import CompareConfig, run_compare

        opts = run_options({**o, "data": o["data"] or "fashion-mnist-mini"}, eval_batch_size=eval_batch_size)
        cfg = CompareConfig(batch, runs, warmup, threads, optimized)
        return run_compare(models, opts, cfg, quality=o["data"] is not None, plot=plot)

    run(body, o["json_out"], o["quiet"])
