"""`indistill retrieve`: parse, then `stages.retrieve`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OUTPUT, SPLIT, command, override, run_options


@command(app, ("model", "data", "tap", "database", "queries", "metric", "map_mode", "k", "export", "index", "query",
               "top_k", "chunk_size", "batch_size", "device", "precision", *SPLIT, *OUTPUT),
         precision=override(str, "fp32", help="fp32 (default: exact embeddings) or bf16/fp16."),
         val_fraction=override(float, 0.0, help="Validation share carved from train (0: the database is the whole "
                               "train split, as the paper)."))
def retrieve(
    model: Annotated[Optional[str], typer.Argument(help="Trained checkpoint (or -); optional with --index.")] = None,
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
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    **o: Any,
) -> None:
    """Retrieval evaluation (the paper's protocol): mAP, precision@k, recall@k by cosine and Euclidean distance.

    Database = train split with test-time transforms, queries = test split, relevant = same label.

    Examples:

        indistill retrieve student.safetensors --data fashion-mnist-mini --json

        indistill retrieve student.safetensors --export emb.safetensors && indistill retrieve --index emb.safetensors --map 11pt

        indistill retrieve student.safetensors --query shoe.png --top-k 5
    """
    def body() -> Any:
        from indistill_cli.stages.retrieve import run_retrieve

        opts = run_options(o, eval_batch_size=batch_size)
        return run_retrieve(model, opts, tap, database, queries, metric, map_mode, k or [100], export, index,
                            query, top_k, chunk_size, o["force"])

    run(body, o["json_out"], o["quiet"])
