"""Where a config comes from: the JSON file, environment overrides on top, defaults beneath.

Every key has a default, so an empty file (or none) gives `Config()`. Environment
variables override the file (see `ENV_OVERRIDES`); an empty variable counts as unset.
A bad value from the environment names the variable it came from. A file that holds
secrets while group or others may read it is loaded with one WARNING line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import types
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from llm_es.config._schema import Config
from llm_es.config._secret import url_passwords
from llm_es.config._validation import build_config
from llm_es.errors import ConfigError
from llm_es.logs import log_kv

logger = logging.getLogger("llm_es.config")

ENV_OVERRIDES: Mapping[str, str] = types.MappingProxyType(
    {
        "LLM_ES_NATS_URL": "nats.url",
        "LLM_ES_NATS_USER": "nats.user",
        "LLM_ES_NATS_PASSWORD": "nats.password",
        "LLM_ES_NATS_TOKEN": "nats.token",
        "LLM_ES_NATS_CREDS": "nats.creds",
        "OPENAI_API_KEY": "providers.openai.api_key",
        "OPENROUTER_API_KEY": "providers.openrouter.api_key",
        "OLLAMA_HOST": "providers.ollama.base_url",
    }
)
"""Environment variable -> the dotted config key it overrides (env wins over the file)."""

_OLLAMA_DEFAULT_PORT = 11434
SECRET_KEYS = (
    "nats.password",
    "nats.token",
    "providers.openai.api_key",
    "providers.openrouter.api_key",
)
"""Config keys that hold a secret (besides a password inside `nats.url`)."""
_warned_paths: set[Path] = set()


def parse_config(raw: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate decoded JSON `raw`, apply environment overrides, and build the `Config`.

    `env` defaults to `os.environ`. Raises `ConfigError` naming the first bad key.
    """
    env = os.environ if env is None else env
    merged, env_sources = _apply_env(raw, env) if isinstance(raw, dict) else (raw, {})
    try:
        return build_config(merged)
    except ConfigError as error:
        source = env_sources.get(error.key)
        if source is None:
            raise
        raise ConfigError(
            error.key, f"{error.problem} (set by environment variable {source})"
        ) from None


async def load_config(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """`load_config_sync` in a worker thread, so the event loop never blocks on the disk."""
    return await asyncio.to_thread(load_config_sync, path, env)


def load_config_sync(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, decode and validate the config file at `path` (None: defaults plus `env`)."""
    if path is None:
        return parse_config({}, env)
    path = Path(path)
    raw = _decode(path, _read_file(path))
    if holds_secrets(raw):
        _warn_if_readable_by_others(path)
    return parse_config(raw, env)


def holds_secrets(raw: object) -> bool:
    """Whether a decoded config file sets a secret: a key of `SECRET_KEYS`, a URL password."""
    if not isinstance(raw, dict):
        return False
    for key in SECRET_KEYS:
        value: object = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value:
            return True
    nats = raw.get("nats")
    url = nats.get("url") if isinstance(nats, dict) else None
    return isinstance(url, str) and bool(url_passwords(url))


def _warn_if_readable_by_others(path: Path) -> None:
    """One WARNING per file and process when group or others may read it (mode & 0o077)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077 and path not in _warned_paths:
        _warned_paths.add(path)
        log_kv(
            logger,
            "config_file_readable_by_others",
            level=logging.WARNING,
            path=str(path),
            mode=f"{mode:04o}",
            hint=f"it holds secrets: chmod 600 {path}, or set them in the environment"
            " (OPENAI_API_KEY, OPENROUTER_API_KEY, LLM_ES_NATS_PASSWORD, LLM_ES_NATS_TOKEN)",
        )


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(str(path), f"cannot read config file: {reason}") from None


def _decode(path: Path, data: bytes) -> object:
    # orjson, not msgspec, decodes the file: its errors give the line and column.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        # orjson's message already ends with "line L column C (char N)".
        raise ConfigError(str(path), f"invalid JSON: {error}") from None


def _apply_env(
    raw: dict[str, object], env: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, str]]:
    """A copy of `raw` with the environment overrides set, and which key came from where."""
    merged = dict(raw)
    sources: dict[str, str] = {}
    for variable, key in ENV_OVERRIDES.items():
        value = env.get(variable, "")
        if not value:
            continue
        if variable == "OLLAMA_HOST":
            value = _ollama_host_url(value)
        *parents, leaf = key.split(".")
        section = merged
        for part in parents:
            child = section.get(part, {})
            if not isinstance(child, dict):
                # The file's own value is malformed; validation reports it.
                break
            section[part] = child = dict(child)
            section = child
        else:
            section[leaf] = value
            sources[key] = variable
    return merged, sources


def _ollama_host_url(value: str) -> str:
    """`OLLAMA_HOST` as Ollama itself reads it: no scheme means http and port 11434."""
    value = value.strip()
    if "://" in value:
        return value
    url = f"http://{value}"
    try:
        has_port = urlsplit(url).port is not None
    except ValueError:
        return url  # a bad port: validation reports it
    return url if has_port else f"{url.rstrip('/')}:{_OLLAMA_DEFAULT_PORT}"
