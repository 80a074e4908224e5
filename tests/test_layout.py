"""The architecture's promises: imports go down the layers only, no cycles, short functions, and the
same-seed results of before the move.

Layers, bottom to top (each imports only from its own unit and the layers below, lazy imports too):
errors/progress/optionspec -> io -> models, data -> engine, pruning, losses, metrics -> stages -> cli.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitwise

ROOT = Path(__file__).resolve().parents[1]


def _reference(tmp_path: Path) -> dict[str, str]:
    """The recorded checksums for this torch build + CPU, else rerun the pre-refactor revision here."""
    recorded = json.loads(bitwise.REFERENCE_FILE.read_text())["fingerprints"]
    if bitwise.fingerprint() in recorded:
        return recorded[bitwise.fingerprint()]
    old = tmp_path / "before"
    old.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", bitwise.REFERENCE_REVISION, "indistill_cli"],
                                 capture_output=True, check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"no recorded checksums for {bitwise.fingerprint()} and the pre-refactor revision "
                    f"{bitwise.REFERENCE_REVISION} cannot be extracted with git ({e}); run the tests from a git "
                    f"clone with that revision, or record the reference with `tests/bitwise.py record` there")
    return bitwise.run_chain(old, tmp_path / "reference-run")


def test_same_seed_results_bitwise_equal_to_before_the_move(tmp_path: Path) -> None:
    expected = _reference(tmp_path)
    got = bitwise.run_chain(ROOT, tmp_path / "run")
    assert got == expected


# ----------------------------------------------------------------------------- layering

PACKAGE = ROOT / "indistill_cli"
# bottom to top: a module imports only its own unit and units of lower layers (lazy imports included)
LAYERS: list[list[str]] = [
    ["indistill_cli"],  # the package's own __init__ (its version)
    ["indistill_cli.errors", "indistill_cli.progress", "indistill_cli.optionspec"],
    ["indistill_cli.io"],
    ["indistill_cli.models", "indistill_cli.data"],
    ["indistill_cli.engine", "indistill_cli.pruning", "indistill_cli.losses", "indistill_cli.metrics"],
    ["indistill_cli.stages"],
    ["indistill_cli.cli"],
    ["indistill_cli.__main__"],
]
TIER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its top-level subpackage, or the bottom module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Package modules `module` imports anywhere in its file (function-level imports count too)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import indistill_cli.data.base as b` -> the module itself
                name = name.rpartition(".")[0]
            if name.startswith("indistill_cli") and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer() -> None:
    assert {m for m in _modules() if _unit(m) not in TIER} == set()


def test_imports_only_go_down() -> None:
    """No arrow from a lower layer to a higher one, and none between sibling units of one layer."""
    wrong = sorted(f"{m} -> {t}" for m, targets in _graph().items() for t in targets
                   if TIER[_unit(t)] > TIER[_unit(m)] or (TIER[_unit(t)] == TIER[_unit(m)] and _unit(t) != _unit(m)))
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


BLOCKER = """
import importlib, sys
allowed, modules = {allowed!r}, {modules!r}

class Upward:
    def find_spec(self, name, path=None, target=None):
        unit = ".".join(name.split(".")[:2])
        if name.startswith("indistill_cli.") and unit not in allowed:
            raise ImportError(f"{{name}}: a layer above (or beside) the one imported here")
        return None

sys.meta_path.insert(0, Upward())
for m in modules:
    importlib.import_module(m)
"""


@pytest.mark.parametrize("unit", [u for units in LAYERS for u in units if u != "indistill_cli.__main__"])
def test_each_layer_imports_without_the_layers_above(unit: str) -> None:
    """In a fresh interpreter that refuses every module above this unit's layer (and its siblings), every
    module of the unit imports."""
    allowed = [u for u in TIER if TIER[u] < TIER[unit]] + [unit]
    modules = [m for m in _modules() if _unit(m) == unit]
    code = BLOCKER.format(allowed=allowed, modules=modules)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-3000:]


def test_no_function_over_60_lines() -> None:
    long = []
    for m, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{m}.{node.name}: {n} lines")
    assert long == []



# ----------------------------------------------------------------------------- options declared once

CLI_OPTIONS = Path(__file__).resolve().parent / "data" / "cli_options.json"


def cli_options() -> dict:
    """Every command's options as click sees them: name, flags, default, help, order."""
    import typer.main

    from indistill_cli.cli import app

    group = typer.main.get_command(app)
    out = {"help": group.help}
    for name, cmd in sorted(group.commands.items()):
        out[name] = {"help": cmd.help, "params": [
            {"name": p.name, "opts": p.opts, "secondary": p.secondary_opts, "default": repr(p.default),
             "help": getattr(p, "help", None), "required": p.required, "multiple": p.multiple,
             "flag": getattr(p, "is_flag", None)} for p in cmd.params]}
    return out


def test_every_option_keeps_its_name_default_and_help() -> None:
    """The commands' options as recorded before the shared declarations (rewrite the file on purpose with
    `json.dump(cli_options(), open(CLI_OPTIONS, "w"), indent=1, sort_keys=True)` when an option changes)."""
    assert json.loads(json.dumps(cli_options())) == json.loads(CLI_OPTIONS.read_text())


def test_shared_options_are_declared_once_and_listed() -> None:
    """Every declared run/optimiser option reaches a command through a group of stages/settings.py, and the
    options a resume may change are the ones their declarations mark (the set resume used to hard-code)."""
    from indistill_cli.cli import options
    from indistill_cli.stages.commands import SETTINGS
    from indistill_cli.stages.options import TUNABLE

    grouped = {*options.OPTIM, *options.RUNTIME, *options.SPLIT, *options.RESUMABLE}
    declared = set(options.RUN_PARAMS) | options.OPTIM_PARAMS
    # placed by name in the commands (--train-fraction only in those that train)
    placed = {"data", "batch_size", "eval_batch_size", "plan_epochs", "reset_optimizer_each_epoch", "train_fraction"}
    assert declared - grouped <= placed
    offered = {f.name for cls in SETTINGS.values() for f in cls.exposed()}
    assert grouped | placed <= offered
    assert TUNABLE == {"lr", "precision", "device", "channels_last", "skip_nonfinite", "save_every", "state_dir",
                       "resume", "eval_batch_size", "data_root", "deterministic", "strict"}
