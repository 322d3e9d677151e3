"""Load a YAML file into a pydantic model, with environment overrides and one-line errors.

Every problem becomes one line naming the file, the key path and the bad value, e.g.
``config/plant.yaml: sites[0].areas[0].plcs[1].modbus.port = 70000: must be <= 65535``.
A value that came from an environment variable names the variable instead of the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str | int, ...]


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ConfigIssue:
    path: KeyPath
    value: Any
    message: str


class ConfigError(Exception):
    """All problems found in one config file, one line each."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class EnvOverride:
    """Environment variable ``variable`` replaces the value at ``path`` (parsed as YAML scalar)."""

    variable: str
    path: KeyPath


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_text(path: Path, error: type[ConfigError] = ConfigError) -> str:
    """The file's text; ``error`` naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror or exc}"]) from None


def validation_lines(exc: ValidationError, origin: Callable[[KeyPath], str]) -> list[str]:
    """One line per validation error: where (``origin`` of the key path), the bad value, the problem."""
    lines = []
    for error in exc.errors():
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        value = "" if error["type"] == "missing" else f" = {_short(error.get('input'))}"
        lines.append(f"{origin(tuple(error['loc']))}{value}: {message}")
    return lines


def _set_path(tree: dict[str, Any], path: KeyPath, value: Any) -> None:
    node: Any = tree
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value


def load_config(
    path: Path,
    model: type[M],
    env: Mapping[str, str] | None = None,
    overrides: Sequence[EnvOverride] = (),
) -> M:
    """Read, override from ``env``, validate and cross-check; raise ConfigError with every problem."""
    name = str(path)
    text = read_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{name}: (top level) = {_short(raw)}: expected a mapping of keys"])

    from_env: dict[KeyPath, str] = {}
    for override in overrides:
        if env is not None and override.variable in env:
            _set_path(raw, override.path, yaml.safe_load(env[override.variable]))
            from_env[override.path] = override.variable

    def origin(loc: KeyPath) -> str:
        for env_path, variable in from_env.items():
            if loc[: len(env_path)] == env_path:
                return f"environment {variable} ({name}: {format_path(loc)})"
        return f"{name}: {format_path(loc)}"

    try:
        config = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_lines(exc, origin)) from None

    check = getattr(config, "check", None)
    if callable(check):
        issues: list[ConfigIssue] = check()
        if issues:
            raise ConfigError([f"{origin(i.path)} = {_short(i.value)}: {i.message}" for i in issues])
    return config
