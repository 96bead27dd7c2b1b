"""Settings from ``[tool.bdprune]`` in the nearest pyproject.toml (searched from the working
directory upward). Precedence: built-in default < pyproject.toml < command-line flag."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BdpruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# key -> (type, built-in default, the commands it applies to)
SETTINGS: dict[str, tuple[type, Any, tuple[str, ...]]] = {
    "arch": (str, None, ("scan", "prune", "eval")),
    "method": (str, None, ("scan", "prune")),
    "u": (float, None, ("scan", "prune")),  # None: the method's default (3; anp/rnp 0.2)
    "data": (Path, None, ("scan", "prune")),
    "samples": (int, 500, ("scan", "prune")),
    "seed": (int, 0, ("scan", "prune")),
    "normalize": (str, "none", ("scan", "prune", "eval")),
    "fail-threshold": (float, None, ("scan",)),
    "format": (str, "table", ("scan", "eval")),
    "top": (int, 20, ("scan",)),
    "device": (str, "auto", ("scan", "prune", "eval")),
    "batch-size": (int, 128, ("scan", "prune")),
    "num-classes": (int, None, ("scan", "prune", "eval")),
}


@dataclass
class Config:
    """The ``[tool.bdprune]`` values (already type-checked) and the file they came from."""

    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def default_map(self) -> dict[str, dict[str, Any]]:
        """Click's ``default_map``: per command, the file's values under parameter names."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.values.items():
            for command in SETTINGS[key][2]:
                out.setdefault(command, {})[key.replace("-", "_")] = str(value) if isinstance(value, Path) else value
        return out

    def effective(self) -> list[tuple[str, Any, str]]:
        """Every setting as (key, value, where it came from)."""
        where = f"{self.path} [tool.bdprune]" if self.path else ""
        return [
            (key, self.values[key], where) if key in self.values else (key, default, "built-in default")
            for key, (_, default, _) in SETTINGS.items()
        ]


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in ``start`` or a parent directory."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> Config:
    """Read ``[tool.bdprune]`` from the nearest pyproject.toml; no file or no table gives defaults."""
    path = find_pyproject((start or Path.cwd()).resolve())
    if path is None:
        return Config()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BdpruneError(f"cannot read [tool.bdprune] ({str(exc)[:120]})", path=path, hint="fix the TOML syntax") from None
    table = doc.get("tool", {}).get("bdprune")
    if table is None:
        return Config()
    if not isinstance(table, dict):
        raise BdpruneError("[tool.bdprune] must be a table", path=path)
    values = {}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if key not in SETTINGS:
            close = difflib.get_close_matches(key, list(SETTINGS), n=2)
            hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(SETTINGS)}"
            raise BdpruneError(f"unknown key {raw_key!r} in [tool.bdprune]", path=path, hint=hint)
        values[key] = _typed(key, value, path)
    return Config(values, path)


def _typed(key: str, value: Any, path: Path) -> Any:
    kind = SETTINGS[key][0]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is Path and isinstance(value, str):
        return (path.parent / value).resolve()
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = {float: "a number", int: "an integer", str: "a string", Path: "a path string"}[kind]
        raise BdpruneError(f"[tool.bdprune] {key} must be {expected}, got {value!r}", path=path)
    return value
