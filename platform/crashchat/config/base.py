"""The config base: strict models, YAML loading and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key path."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per invalid key, prefixed by where the values came from."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, applying ``key.sub=value`` overrides first.

    Raises:
        ConfigError: naming the file and every invalid key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def build_config(path: str | Path | None, model: type[M], overrides: list[str] | None = None) -> M:
    """``load_config`` when a file is given, else the defaults; ``key=value`` overrides either way.

    Raises:
        ConfigError: naming the file (or the overrides) and every invalid key.
    """
    if path is not None:
        return load_config(path, model, overrides)
    try:
        return model.model_validate(apply_overrides({}, list(overrides or [])))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "--set overrides")) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return out
