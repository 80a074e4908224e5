"""The Typer application and the one way a command runs its stage: errors become one line and an exit
code, results JSON on stdout (rank 0 only under torchrun).

torch is imported only inside commands, so `--help` answers fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

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


def fail(message: str, code: int = 2) -> None:
    """One error line on stderr, then exit with `code`."""
    from rich.markup import escape

    from indistill_cli import progress

    progress.console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # brackets are text
    raise typer.Exit(code)


def _located(message: str, origins: dict[str, str] | None) -> str:
    """An error about an option a config file set also says where (key, file and line)."""
    import re

    named = [f"{flag}: {where}" for flag, where in (origins or {}).items()
             if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message)]
    return f"{message} (set by {'; '.join(dict.fromkeys(named))})" if named else message


def run(fn: Callable[[], Any], as_json: bool, quiet: bool = False, output: str | None = None,
        origins: dict[str, str] | None = None) -> None:
    """Call a command body; errors become one line + exit code, results JSON on stdout. `origins`: flag ->
    where a config file set it, added to an error that names the flag."""
    from indistill_cli import progress

    if as_json and output == "-":
        fail("--json and -o - both write to stdout; write the checkpoint to a file, or drop --json")
    import signal

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
        fail(_located(str(e), origins), e.exit_code)
    except KeyboardInterrupt:
        progress.console.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if "indistill_cli.engine.runtime" in sys.modules:  # torch was loaded: end any process group now
            sys.modules["indistill_cli.engine.runtime"].shutdown()
    if as_json and result is not None and progress.main_process():  # under torchrun only rank 0 prints the result
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()
