"""Reading the settings: a YAML file plus ``GENSERVE_SECTION__KEY`` environment variables (env wins).

Loaded once at start-up; lower layers receive values as arguments and never read the environment
themselves, so a bad key or value fails here, at start-up, with a message that names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from genserve.config.settings import Settings

ENV_PREFIX = "GENSERVE_"
CONFIG_ENV = "GENSERVE_CONFIG"


class ConfigError(Exception):
    """A config file or variable that cannot start the server; the message names the key."""


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Turn ``GENSERVE_SECTION__KEY=value`` into nested dicts; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            raise ConfigError(f"{name}: expected {ENV_PREFIX}SECTION__KEY (two underscores between parts)")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another variable for the same key")
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the YAML file (if any) and the environment into validated Settings.

    The file comes from ``path``, else ``$GENSERVE_CONFIG``, else ``genserve.yaml`` when present.
    """
    environ = dict(os.environ if environ is None else environ)
    chosen = path or environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults"
    if chosen is None and Path("genserve.yaml").is_file():
        chosen = "genserve.yaml"
    if chosen is not None:
        file = Path(chosen)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping of sections")
        data = loaded
        source = str(file)
    env = _env_overrides(environ)
    if env:
        source += " + environment"
    if (
        environ.get("HF_HOME")
        and "hf_home" not in data.get("models", {})
        and "hf_home" not in env.get("models", {})
    ):
        env = _merge(env, {"models": {"hf_home": environ["HF_HOME"]}})  # the variable Hugging Face tools read
    try:
        return Settings.model_validate(_merge(data, env))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
