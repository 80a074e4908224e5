"""`indistill retrieve`: its options are `stages.commands.RetrieveSettings`; the work is `stages.retrieve`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import RetrieveSettings


@command(app, RetrieveSettings)
def retrieve(s: RetrieveSettings) -> Any:
    """Retrieval evaluation (the paper's protocol): mAP, precision@k, recall@k by cosine and Euclidean distance.

    Database = train split with test-time transforms, queries = test split, relevant = same label.

    Examples:

        indistill retrieve student.safetensors --data fashion-mnist-mini --json

        indistill retrieve student.safetensors --export emb.safetensors && indistill retrieve --index emb.safetensors --map 11pt

        indistill retrieve student.safetensors --query shoe.png --top-k 5
    """
    from indistill_cli.stages.retrieve import run_retrieve

    return run_retrieve(s)
