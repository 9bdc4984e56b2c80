"""The plugin's configuration: the seed's config.json format, validated into frozen dataclasses.

Every key has a default, so an empty file (or none) gives `Config()`. Environment
variables override the file (see `ENV_OVERRIDES`). Every problem raises
`ConfigError` naming the full dotted key, what is wrong and what was given; secret
values (API keys, NATS password/token, passwords inside URLs) are never echoed.

Choices worth knowing:
- Integers must be JSON integers: `10.0` and `true` are rejected for an integer key.
  Numbers (timeouts, temperatures) accept integers and floats, never booleans.
- Unknown keys are errors, so a typo cannot silently fall back to a default.
- `base_url` values must be http(s) URLs; a trailing `/` is removed.
- An empty environment variable counts as unset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

import orjson

from llm_es.config._secret import Secret, redact_url
from llm_es.config.personas import BUILTIN_PERSONAS
from llm_es.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_JSON",
    "ENV_OVERRIDES",
    "PERSONA_NAME_PATTERN",
    "Config",
    "NatsConfig",
    "OllamaConfig",
    "OpenAIConfig",
    "OpenRouterConfig",
    "ProviderName",
    "ProvidersConfig",
    "RateLimitsConfig",
    "ServiceConfig",
    "config_reference",
    "default_config_dict",
    "load_config",
    "load_config_sync",
    "parse_config",
]

ProviderName = Literal["ollama", "openai", "openrouter"]

PERSONA_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""Persona names, matched with `fullmatch`: short, lower-case, usable in `!chat persona <name>`."""

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
_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


def _meta(
    meaning: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    url: Literal["http", "nats"] | None = None,
    nonempty: bool = False,
) -> dict[str, object]:
    """Field metadata: what validation and the reference table need to know about a key."""
    return {
        "meaning": meaning,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "url": url,
        "nonempty": nonempty,
    }


_NO_SECRET = Secret("")


def _safe_repr(self: object) -> str:
    """Dataclass-style repr with passwords inside URL fields redacted."""
    shown = []
    for field in dataclasses.fields(self):  # type: ignore[arg-type]
        value = getattr(self, field.name)
        if field.metadata.get("url") and isinstance(value, str):
            value = redact_url(value)
        shown.append(f"{field.name}={value!r}")
    return f"{type(self).__name__}({', '.join(shown)})"


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How the plugin behaves: context size, input limits, admission."""

    max_context_messages: int = dataclasses.field(
        default=10,
        metadata=_meta("Recent messages per channel sent to the model as context.", minimum=1),
    )
    default_persona: str = dataclasses.field(
        default="default",
        metadata=_meta("Persona of a channel that never chose one; a key of `personas`."),
    )
    max_message_length: int = dataclasses.field(
        default=8000,
        metadata=_meta(
            "Longest chat message, memory or recall query accepted, in characters.", minimum=1
        ),
    )
    max_name_length: int = dataclasses.field(
        default=128,
        metadata=_meta("Longest channel or user name accepted, in characters.", minimum=1),
    )
    max_tokens: int = dataclasses.field(
        default=1024,
        metadata=_meta(
            "Completion cap sent to the provider; also the tokens reserved per turn at admission.",
            minimum=1,
        ),
    )
    max_memories_in_prompt: int = dataclasses.field(
        default=5,
        metadata=_meta(
            "Most memories added to a prompt (0 disables memories in prompts).", minimum=0
        ),
    )
    admit_retries: int = dataclasses.field(
        default=50,
        metadata=_meta(
            "Times an admission that lost a conditional-append race is decided again.",
            minimum=1,
        ),
    )
    publish_events: bool = dataclasses.field(
        default=True,
        metadata=_meta(
            "Take part in publishing `rosey.event.llm.*` (one instance at a time holds the lease)."
        ),
    )
    instance_id: str | None = dataclasses.field(
        default=None,
        metadata=_meta(
            "Name of this instance, kept across restarts so its unfinished turns are closed at"
            " once when it starts again; null: `embedded` with the embedded nats-server, else a"
            " fresh random id per start (its turns are closed once its heartbeat expires).",
            nonempty=True,
        ),
    )
    instance_ttl_seconds: float = dataclasses.field(
        default=15.0,
        metadata=_meta(
            "How long this instance counts as alive after its last heartbeat (sent every third"
            " of it); after that, other instances close its unfinished turns.",
            minimum=1,
        ),
    )
    summarize_after_messages: int | None = dataclasses.field(
        default=30,
        metadata=_meta(
            "When a channel's history holds more messages than this, the ones older than the"
            " last `max_context_messages` are summarized through the provider; null: never"
            " (old messages are dropped).",
            minimum=2,
        ),
    )
    summary_max_words: int = dataclasses.field(
        default=150,
        metadata=_meta("Length asked of a channel summary, in words.", minimum=10),
    )


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OllamaConfig:
    """A local Ollama server."""

    base_url: str = dataclasses.field(
        default="http://localhost:11434",
        metadata=_meta(
            "Ollama server URL. Env `OLLAMA_HOST` overrides (`host:port` gets `http://`).",
            url="http",
        ),
    )
    timeout: float = dataclasses.field(
        default=60.0,
        metadata=_meta("Seconds to wait for an answer.", minimum=0, exclusive_minimum=True),
    )
    default_model: str = dataclasses.field(
        default="llama3.2", metadata=_meta("Model used for chat.", nonempty=True)
    )
    max_retries: int = dataclasses.field(
        default=2, metadata=_meta("Retries after a 429, a 5xx or a connection error.", minimum=0)
    )
    temperature: float = dataclasses.field(
        default=0.7, metadata=_meta("Sampling temperature.", minimum=0, maximum=2)
    )

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OpenAIConfig:
    """OpenAI, or any server speaking its chat-completions API."""

    api_key: Secret = dataclasses.field(
        default=_NO_SECRET, metadata=_meta("API key. Env `OPENAI_API_KEY` overrides.")
    )
    base_url: str = dataclasses.field(
        default="https://api.openai.com/v1", metadata=_meta("API base URL.", url="http")
    )
    organization: str = dataclasses.field(
        default="", metadata=_meta("Sent as `OpenAI-Organization` when not empty.")
    )
    timeout: float = dataclasses.field(
        default=60.0,
        metadata=_meta("Seconds to wait for an answer.", minimum=0, exclusive_minimum=True),
    )
    default_model: str = dataclasses.field(
        default="gpt-4", metadata=_meta("Model used for chat.", nonempty=True)
    )
    max_retries: int = dataclasses.field(
        default=2, metadata=_meta("Retries after a 429, a 5xx or a connection error.", minimum=0)
    )
    temperature: float = dataclasses.field(
        default=0.7, metadata=_meta("Sampling temperature.", minimum=0, maximum=2)
    )

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OpenRouterConfig:
    """OpenRouter (OpenAI wire format plus ranking headers)."""

    api_key: Secret = dataclasses.field(
        default=_NO_SECRET, metadata=_meta("API key. Env `OPENROUTER_API_KEY` overrides.")
    )
    base_url: str = dataclasses.field(
        default="https://openrouter.ai/api/v1", metadata=_meta("API base URL.", url="http")
    )
    site_url: str = dataclasses.field(
        default="", metadata=_meta("Sent as `HTTP-Referer` when not empty.")
    )
    site_name: str = dataclasses.field(
        default="Rosey-Robot", metadata=_meta("Sent as `X-Title` when not empty.")
    )
    timeout: float = dataclasses.field(
        default=60.0,
        metadata=_meta("Seconds to wait for an answer.", minimum=0, exclusive_minimum=True),
    )
    default_model: str = dataclasses.field(
        default="anthropic/claude-3-sonnet", metadata=_meta("Model used for chat.", nonempty=True)
    )
    max_retries: int = dataclasses.field(
        default=2, metadata=_meta("Retries after a 429, a 5xx or a connection error.", minimum=0)
    )
    temperature: float = dataclasses.field(
        default=0.7, metadata=_meta("Sampling temperature.", minimum=0, maximum=2)
    )

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """Settings of each LLM provider; only `default_provider`'s need to work."""

    ollama: OllamaConfig = dataclasses.field(
        default_factory=OllamaConfig, metadata=_meta("Ollama provider.")
    )
    openai: OpenAIConfig = dataclasses.field(
        default_factory=OpenAIConfig, metadata=_meta("OpenAI provider.")
    )
    openrouter: OpenRouterConfig = dataclasses.field(
        default_factory=OpenRouterConfig, metadata=_meta("OpenRouter provider.")
    )

    def get(self, name: ProviderName) -> OllamaConfig | OpenAIConfig | OpenRouterConfig:
        """The settings of provider `name`."""
        section: OllamaConfig | OpenAIConfig | OpenRouterConfig = getattr(self, name)
        return section


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    """Per-user limits across all channels; `None` (JSON null) means no limit."""

    requests_per_minute: int | None = dataclasses.field(
        default=10,
        metadata=_meta(
            "Chat turns a user may start in any sliding minute; null: no limit.", minimum=1
        ),
    )
    requests_per_hour: int | None = dataclasses.field(
        default=100,
        metadata=_meta(
            "Chat turns a user may start in any sliding hour; null: no limit.", minimum=1
        ),
    )
    requests_per_day: int | None = dataclasses.field(
        default=500,
        metadata=_meta("Chat turns a user may start per UTC day; null: no limit.", minimum=1),
    )
    tokens_per_day: int | None = dataclasses.field(
        default=50000,
        metadata=_meta(
            "Tokens (prompt + completion) a user may spend per UTC day; null: no limit.", minimum=1
        ),
    )


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class NatsConfig:
    """Where and how to connect to NATS; no `url` means start the embedded nats-server."""

    url: str | None = dataclasses.field(
        default=None,
        metadata=_meta(
            "Server URL(s), comma-separated (`nats://`, `tls://`, `ws://`, `wss://` or"
            " `host:port`); null starts an embedded nats-server. Env `LLM_ES_NATS_URL` overrides.",
            url="nats",
        ),
    )
    user: str | None = dataclasses.field(
        default=None,
        metadata=_meta(
            "User name, with `password`. Env `LLM_ES_NATS_USER` overrides.", nonempty=True
        ),
    )
    password: Secret | None = dataclasses.field(
        default=None, metadata=_meta("Password, with `user`. Env `LLM_ES_NATS_PASSWORD` overrides.")
    )
    token: Secret | None = dataclasses.field(
        default=None, metadata=_meta("Authentication token. Env `LLM_ES_NATS_TOKEN` overrides.")
    )
    creds: str | None = dataclasses.field(
        default=None,
        metadata=_meta(
            "Path of a `.creds` file (JWT + NKey). Env `LLM_ES_NATS_CREDS` overrides.",
            nonempty=True,
        ),
    )
    tls_ca: str | None = dataclasses.field(
        default=None, metadata=_meta("Path of the CA certificate (PEM).", nonempty=True)
    )
    tls_cert: str | None = dataclasses.field(
        default=None,
        metadata=_meta("Path of the client certificate (PEM), with `tls_key`.", nonempty=True),
    )
    tls_key: str | None = dataclasses.field(
        default=None,
        metadata=_meta("Path of the client key (PEM), with `tls_cert`.", nonempty=True),
    )

    __repr__ = _safe_repr

    @property
    def servers(self) -> tuple[str, ...]:
        """The server URLs in `url`, in order; empty when the embedded server is used."""
        if self.url is None:
            return ()
        return tuple(server.strip() for server in self.url.split(","))


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `Config()` is the default."""

    name: str = dataclasses.field(default="llm", metadata=_meta("Plugin name.", nonempty=True))
    enabled: bool = dataclasses.field(
        default=True, metadata=_meta("Whether the plugin answers commands and requests.")
    )
    default_provider: ProviderName = dataclasses.field(
        default="ollama",
        metadata=_meta("Provider used for chat: `ollama`, `openai` or `openrouter`."),
    )
    fallback_providers: tuple[ProviderName, ...] = dataclasses.field(
        default=(),
        metadata=_meta(
            "Providers tried in order when the chosen one is unreachable or failing (5xx,"
            " timeout); each answer records which provider gave it."
        ),
    )
    service: ServiceConfig = dataclasses.field(
        default_factory=ServiceConfig, metadata=_meta("Service behaviour.")
    )
    providers: ProvidersConfig = dataclasses.field(
        default_factory=ProvidersConfig, metadata=_meta("LLM providers.")
    )
    rate_limits: RateLimitsConfig = dataclasses.field(
        default_factory=RateLimitsConfig, metadata=_meta("Per-user limits.")
    )
    # Not hashed: a mapping is unhashable, and the rest identifies a config well enough.
    personas: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: BUILTIN_PERSONAS,
        hash=False,
        metadata=_meta("Built-in personas plus the file's (name -> system prompt)."),
    )
    nats: NatsConfig = dataclasses.field(
        default_factory=NatsConfig, metadata=_meta("NATS connection.")
    )

    @property
    def provider(self) -> OllamaConfig | OpenAIConfig | OpenRouterConfig:
        """The settings of `default_provider`."""
        return self.providers.get(self.default_provider)


# --- parsing ---------------------------------------------------------------------------


def parse_config(raw: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate decoded JSON `raw`, apply environment overrides, and build the `Config`.

    `env` defaults to `os.environ`. Raises `ConfigError` naming the first bad key.
    """
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a JSON object, got {_show(raw)}")
    env = os.environ if env is None else env
    merged, env_sources = _apply_env(raw, env)
    try:
        config = _parse_config_object(merged)
    except ConfigError as error:
        source = env_sources.get(error.key)
        if source is None:
            raise
        raise ConfigError(
            error.key, f"{error.problem} (set by environment variable {source})"
        ) from None
    return config


async def load_config(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, decode and validate the config file at `path` (None: defaults plus `env`).

    The file is read in a worker thread so the event loop never blocks on the disk.
    """
    if path is None:
        return parse_config({}, env)
    path = Path(path)
    data = await asyncio.to_thread(_read_file, path)
    return parse_config(_decode(path, data), env)


def load_config_sync(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """`load_config` for start-up code that runs before the event loop."""
    if path is None:
        return parse_config({}, env)
    path = Path(path)
    return parse_config(_decode(path, _read_file(path)), env)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(str(path), f"cannot read config file: {reason}") from None


def _decode(path: Path, data: bytes) -> object:
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


def _parse_config_object(raw: dict[str, object]) -> Config:
    personas_raw = raw.get("personas", {})
    others = {name: value for name, value in raw.items() if name != "personas"}
    _check_keys(Config, raw, "")
    personas = _parse_personas(personas_raw)
    fields = _parse_fields(Config, others, "", skip=frozenset({"personas"}))
    config = Config(**fields, personas=personas)
    _check_cross_fields(config)
    return config


def _parse_personas(raw: object) -> Mapping[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError("personas", f"expected an object (name -> prompt), got {_show(raw)}")
    if not raw:
        return BUILTIN_PERSONAS
    personas = dict(BUILTIN_PERSONAS)
    for name, prompt in raw.items():
        key = f"personas.{name}"
        if not isinstance(name, str) or not PERSONA_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                key,
                "invalid persona name; use 1-32 of a-z, 0-9, '_' and '-', "
                "starting with a letter or digit",
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(key, f"expected a non-empty system prompt, got {_show(prompt)}")
        personas[name] = prompt
    return types.MappingProxyType(personas)


def _check_keys(cls: Any, raw: dict[str, object], prefix: str) -> None:
    known = [field.name for field in dataclasses.fields(cls)]
    for name in raw:
        if name in known:
            continue
        problem = "unknown key"
        if isinstance(name, str) and (close := difflib.get_close_matches(name, known, n=1)):
            problem += f" (did you mean '{close[0]}'?)"
        problem += f"; known keys: {', '.join(known)}"
        raise ConfigError(f"{prefix}{name}", problem)


def _parse_fields(
    cls: Any, raw: dict[str, object], prefix: str, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip or field.name not in raw:
            continue
        values[field.name] = _parse_value(
            hints[field.name], raw[field.name], f"{prefix}{field.name}", field.metadata
        )
    return values


def _parse_section(cls: Any, value: object, key: str) -> object:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected an object, got {_show(value)}")
    _check_keys(cls, value, f"{key}.")
    return cls(**_parse_fields(cls, value, f"{key}."))


def _parse_value(hint: Any, value: object, key: str, meta: Mapping[str, Any]) -> object:
    expected = _describe_type(hint, meta)
    nullable = typing.get_origin(hint) in (types.UnionType, typing.Union)
    if nullable:
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]

    if dataclasses.is_dataclass(hint):
        return _parse_section(hint, value, key)
    if typing.get_origin(hint) is tuple:
        (item_hint, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        items = [_parse_value(item_hint, item, f"{key}[{n}]", meta) for n, item in enumerate(value)]
        if len(set(items)) != len(items):
            raise ConfigError(key, f"expected {expected} without repeats, got {_show(value)}")
        return tuple(items)
    if hint is Secret:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected {expected}, got {_kind(value)}")
        return Secret(value)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices or not isinstance(value, str):
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        return value
    if hint is int:
        # bool is an int subclass and 10.0 is a float: both are rejected on purpose.
        if type(value) is not int:
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        _check_range(value, key, meta)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {_show(value)}")
        _check_range(value, key, meta)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected {expected}, got {_show(value)}")
        if meta.get("nonempty") and not value.strip():
            raise ConfigError(key, f"expected {expected}, got an empty string")
        if meta.get("url") == "http":
            return _check_http_url(value, key)
        if meta.get("url") == "nats":
            return _check_nats_url(value, key)
        return value
    raise TypeError(f"no parser for {hint!r} at {key}")  # a programming error, not a config one


def _check_range(value: float, key: str, meta: Mapping[str, Any]) -> None:
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    too_low = minimum is not None and (
        value <= minimum if meta.get("exclusive_minimum") else value < minimum
    )
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        raise ConfigError(key, f"must be {_bounds_text(meta)}, got {_show(value)}")


def _check_http_url(value: str, key: str) -> str:
    value = value.strip().rstrip("/")
    shown = _show(redact_url(value))
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(key, f"expected an http(s) URL, got {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http(s) URL, got {shown}")
    return value


def _check_nats_url(value: str, key: str) -> str:
    expected = "NATS server URL(s), comma-separated (nats://, tls://, ws://, wss:// or host:port)"
    shown = _show(redact_url(value))
    servers = [server.strip() for server in value.split(",")]
    for server in servers:
        parts = _split_server(server)
        if parts is None or not parts.hostname:
            raise ConfigError(key, f"expected {expected}, got {shown}")
        if parts.scheme not in _NATS_SCHEMES:
            raise ConfigError(key, f"expected {expected}, got {shown}")
    return ",".join(servers)


def _split_server(server: str) -> SplitResult | None:
    """A NATS server URL split into parts; None when it cannot be parsed."""
    try:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        _ = parts.port
    except ValueError:
        return None
    return parts


def _check_cross_fields(config: Config) -> None:
    if config.service.default_persona not in config.personas:
        raise ConfigError(
            "service.default_persona",
            f"unknown persona {config.service.default_persona!r}; "
            f"known personas: {', '.join(config.personas)}",
        )
    nats = config.nats
    if (nats.user is None) != (nats.password is None):
        missing = "nats.password" if nats.password is None else "nats.user"
        raise ConfigError(missing, "required when the other of nats.user/nats.password is set")
    if (nats.tls_cert is None) != (nats.tls_key is None):
        missing = "nats.tls_key" if nats.tls_key is None else "nats.tls_cert"
        raise ConfigError(missing, "required when the other of nats.tls_cert/nats.tls_key is set")


# --- describing values and types ---------------------------------------------------------


def _show(value: object) -> str:
    """A short, JSON-flavoured rendering of a (non-secret) value for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_kind(value).removeprefix('a ').removeprefix('an ')})"


def _kind(value: object) -> str:
    """What sort of JSON value `value` is, without the value itself (safe for secrets)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _bounds_text(meta: Mapping[str, Any]) -> str:
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and maximum is not None:
        return f"between {minimum:g} and {maximum:g}"
    if minimum is not None:
        return f"{'>' if meta.get('exclusive_minimum') else '>='} {minimum:g}"
    if maximum is not None:
        return f"<= {maximum:g}"
    return ""


def _describe_type(hint: Any, meta: Mapping[str, Any]) -> str:
    """The expected value in words, e.g. 'an integer >= 1 or null'."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return f"{_describe_type(inner, meta)} or null"
    if typing.get_origin(hint) is tuple:
        (item_hint, _) = typing.get_args(hint)
        return f"a list of {_describe_type(item_hint, meta)}"
    bounds = _bounds_text(meta)
    if hint is int:
        return f"an integer {bounds}".rstrip()
    if hint is float:
        return f"a number {bounds}".rstrip()
    if hint is bool:
        return "a boolean"
    if hint is Secret:
        return "a string (secret)"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(f'"{choice}"' for choice in typing.get_args(hint))
    if hint is str:
        if meta.get("url") == "http":
            return "an http(s) URL"
        if meta.get("url") == "nats":
            return "NATS server URL(s)"
        return "a non-empty string" if meta.get("nonempty") else "a string"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return str(hint)


# --- default config and reference ---------------------------------------------------------


def _to_jsonable(value: object) -> object:
    """A config value as JSON-able data; secrets become "" so they are never written out."""
    if isinstance(value, Secret):
        return ""
    if isinstance(value, Config):
        data = {
            field.name: _to_jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
        # Built-ins are always present; the file only lists additions and overrides.
        data["personas"] = {
            name: prompt
            for name, prompt in value.personas.items()
            if BUILTIN_PERSONAS.get(name) != prompt
        }
        return data
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _to_jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, tuple):
        return [_to_jsonable(item) for item in value]
    return value


def default_config_dict() -> dict[str, object]:
    """The default config as a JSON-able dict (a sample config.json), secrets blanked."""
    data = _to_jsonable(Config())
    assert isinstance(data, dict)
    return data


DEFAULT_CONFIG_JSON: str = orjson.dumps(default_config_dict(), option=orjson.OPT_INDENT_2).decode()
"""The default config as pretty-printed JSON, for `llm-es` to print as a sample."""


def _reference_rows(cls: Any, prefix: str) -> Iterator[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            yield from _reference_rows(hint, f"{key}.")
            continue
        if field.name == "personas":
            builtins = ", ".join(f"`{name}`" for name in BUILTIN_PERSONAS)
            yield (
                "personas.<name>",
                "non-empty string",
                f"built-ins: {builtins}",
                "System prompt of persona `<name>` (1-32 of `a-z0-9_-`); adds a persona "
                "or replaces a built-in one.",
            )
            continue
        default = orjson.dumps(_to_jsonable(getattr(defaults, field.name))).decode()
        kind = _describe_type(hint, field.metadata).removeprefix("an ").removeprefix("a ")
        yield key, kind, f"`{default}`", field.metadata["meaning"]


def config_reference() -> str:
    """Every config key as a Markdown table: key | type | default | meaning."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, meaning in _reference_rows(Config, ""):
        lines.append(f"| `{key}` | {kind} | {default} | {meaning} |".replace("\n", " "))
    return "\n".join(lines) + "\n"
