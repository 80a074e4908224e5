"""The `indistill` command line: the Typer app (`app`), shared option groups declared once (`options`),
and one short module per command that only parses its options and calls its stage."""

from indistill_cli.cli.app import app

# registered in this order, which `indistill --help` lists
from indistill_cli.cli import (  # noqa: E402,F401,I001
    train, importer, prune, evaluate, inspect, warmup, distill, methods, retrieve, pipeline, study, compare, export,
    rerun)


def main() -> None:
    app()
