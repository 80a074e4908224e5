"""Config files: YAML (PyYAML) or TOML (tomllib), read with the line of every key so a bad one is named
with its file and line, and written back (`--print-config`, `inspect --config-out`).

A config file is a mapping of long option names to values (see `stages.settings`); which keys a command
takes is not this module's business.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indistill_cli.errors import BadInput

Where = Callable[[tuple[str, ...]], str]


def is_toml(path: str | Path) -> bool:
    return str(path).lower().endswith(".toml")


def read_config(path: str) -> tuple[dict[str, Any], Where]:
    """The file's mapping and `where(keys)`: 'FILE line N' for a key path (YAML), 'FILE' (TOML: tomllib
    reports no lines for values). Unreadable, malformed or not a mapping: one line (BadInput)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--config {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--config {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    data, lines = _toml(text, path) if is_toml(path) else _yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")

    def where(keys: tuple[str, ...]) -> str:
        line = lines.get(tuple(str(k) for k in keys))
        return f"{path} line {line}" if line else path

    return data, where


def _toml(text: str, path: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text), {}
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"--config {path}: not valid TOML ({e})") from None


def _yaml(text: str, path: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BadInput(f"--config {path}: not valid YAML ({what}{at})") from None
    lines: dict[tuple[str, ...], int] = {}
    _key_lines(node, (), lines)
    return data, lines


def _key_lines(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Line of every key of nested YAML mappings (1-based)."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    for k, v in node.value:
        path = (*prefix, str(k.value))
        out[path] = k.start_mark.line + 1
        _key_lines(v, path, out)


def dump_config(data: dict[str, Any], toml: bool = False, header: str = "") -> str:
    """A config mapping as YAML (PyYAML) or TOML text; `header`: comment lines on top."""
    top = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    if toml:
        return top + _dump_toml(data)
    import yaml

    return top + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a TOML basic string


def _dump_toml(data: dict[str, Any], table: str = "") -> str:
    """Scalars and lists first, then one [table] per nested mapping; None is left out (TOML has no null:
    a missing key takes the option's default, which is what None means there)."""
    lines = [f"{_key(k)} = {_toml_value(v)}" for k, v in data.items() if v is not None and not isinstance(v, dict)]
    out = ([f"[{table}]"] if table and lines else []) + lines
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in data.items():
        if isinstance(v, dict):
            text += ("\n" if text else "") + _dump_toml(v, f"{table}.{_key(k)}" if table else _key(k))
    return text


def _key(k: str) -> str:
    bare = k.replace("-", "").replace("_", "").isalnum()
    return k if bare else json.dumps(k)
