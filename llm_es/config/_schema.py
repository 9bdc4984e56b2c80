"""The configuration's shape: frozen dataclasses whose `Annotated` types say what each key takes.

Each key's range (`Meta(ge=...)`), "not blank" (`Meta(pattern=r"\\S")`), URL kind
(`Meta(extra={"url": ...})`) and meaning (`Meta(description=...)`) live on its type:
msgspec enforces the constraints when a file is converted, and the README table and
the error messages read the same types (`_describe`). `Config()` is the default config.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from msgspec import Meta

from llm_es.config._describe import field_types, url_kind
from llm_es.config._secret import Secret, redact_url
from llm_es.config.personas import BUILTIN_PERSONAS

ProviderName = Literal["ollama", "openai", "openrouter"]

PERSONA_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""Persona names, matched with `fullmatch`: short, lower-case, usable in `!chat persona <name>`."""

SUBJECT_PREFIX_PATTERN = re.compile(r"[^\s*>.$][^\s*>.]*(\.[^\s*>.]+)*")
"""Subject prefixes (`reply_prefixes`, `inbox_prefix`), matched with `fullmatch`: plain
tokens, no wildcards, not one of the `$` APIs."""

_NOT_BLANK = r"\S"
_NO_SECRET = Secret("")

# Types shared by several keys; a key's own meaning is added with Meta(description=...).
_NonEmpty = Annotated[str, Meta(pattern=_NOT_BLANK)]
_HttpUrl = Annotated[str, Meta(extra={"url": "http"})]
_NatsUrls = Annotated[str, Meta(extra={"url": "nats"})]
_RateLimit = Annotated[int, Meta(ge=1)] | None
_Timeout = Annotated[float, Meta(gt=0, description="Seconds to wait for an answer.")]
_Model = Annotated[str, Meta(pattern=_NOT_BLANK, description="Model used for chat.")]
_Retries = Annotated[
    int, Meta(ge=0, description="Retries after a 429, a 5xx or a connection error.")
]
_Temperature = Annotated[float, Meta(ge=0, le=2, description="Sampling temperature.")]
_Connections = Annotated[
    int, Meta(ge=1, le=4096, description="Most HTTP connections open to the provider at once.")
]


def _safe_repr(self: object) -> str:
    """Dataclass-style repr with passwords inside URL fields redacted."""
    shown = []
    for name, kind in field_types(type(self)).items():
        value = getattr(self, name)
        if url_kind(kind) and isinstance(value, str):
            value = redact_url(value)
        shown.append(f"{name}={value!r}")
    return f"{type(self).__name__}({', '.join(shown)})"


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How the plugin behaves: context size, input limits, admission."""

    max_context_messages: Annotated[
        int, Meta(ge=1, description="Recent messages per channel sent to the model as context.")
    ] = 10
    default_persona: Annotated[
        str, Meta(description="Persona of a channel that never chose one; a key of `personas`.")
    ] = "default"
    max_message_length: Annotated[
        int,
        Meta(
            ge=1,
            description="Longest chat message, memory or recall query accepted, in characters.",
        ),
    ] = 8000
    max_name_length: Annotated[
        int, Meta(ge=1, description="Longest channel or user name accepted, in characters.")
    ] = 128
    max_memory_length: Annotated[
        int, Meta(ge=1, description="Longest fact `remember` accepts, in characters.")
    ] = 1000
    max_memories_per_channel: Annotated[
        int,
        Meta(
            ge=1,
            description="Most memories a channel keeps; `remember` is refused beyond it until"
            " one is forgotten.",
        ),
    ] = 500
    max_tokens: Annotated[
        int,
        Meta(
            ge=1,
            description="Completion cap sent to the provider; also the tokens reserved per"
            " turn at admission.",
        ),
    ] = 1024
    max_memories_in_prompt: Annotated[
        int,
        Meta(ge=0, description="Most memories added to a prompt (0 disables memories in prompts)."),
    ] = 5
    admit_retries: Annotated[
        int,
        Meta(
            ge=1,
            description="Times an admission that lost a conditional-append race is decided again.",
        ),
    ] = 50
    publish_events: Annotated[
        bool,
        Meta(
            description="Take part in publishing `rosey.event.llm.*` (one instance at a time"
            " holds the lease)."
        ),
    ] = True
    instance_id: Annotated[
        _NonEmpty | None,
        Meta(
            description="Name of this instance, kept across restarts so its unfinished turns"
            " are closed at once when it starts again; null: `embedded` with the embedded"
            " nats-server, else a fresh random id per start (its turns are closed once its"
            " heartbeat expires)."
        ),
    ] = None
    instance_ttl_seconds: Annotated[
        float,
        Meta(
            ge=1,
            description="How long this instance counts as alive after its last heartbeat"
            " (sent every third of it); after that, other instances close its unfinished turns.",
        ),
    ] = 15.0
    max_concurrent_turns_per_channel: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(
            description="Most turns one channel (a request without a channel: one user) runs"
            ' at once on an instance; more are refused at once ("This channel already has N'
            ' replies in progress; ..."), appending nothing, so one busy channel cannot take'
            " every provider connection (64 per provider); null: no cap."
        ),
    ] = 16
    summarize_after_messages: Annotated[
        Annotated[int, Meta(ge=2)] | None,
        Meta(
            description="When a channel's history holds more messages than this, the ones"
            " older than the last `max_context_messages` are summarized through the provider;"
            " null: never (old messages are dropped)."
        ),
    ] = 30
    summary_max_words: Annotated[
        int, Meta(ge=10, description="Length asked of a channel summary, in words.")
    ] = 150
    reply_prefixes: Annotated[
        tuple[_NonEmpty, ...],
        Meta(
            description="Subject prefixes a `!chat` command's `reply_to` (or a request's reply"
            " subject) may name besides `_INBOX.>`, e.g. `rosey.reply` for `rosey.reply.>`;"
            " any other reply subject is refused."
        ),
    ] = ()


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OllamaConfig:
    """A local Ollama server."""

    base_url: Annotated[
        _HttpUrl,
        Meta(
            description="Ollama server URL. Env `OLLAMA_HOST` overrides (`host:port` gets"
            " `http://`)."
        ),
    ] = "http://localhost:11434"
    timeout: _Timeout = 60.0
    default_model: _Model = "llama3.2"
    max_retries: _Retries = 2
    temperature: _Temperature = 0.7
    max_connections: _Connections = 64

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OpenAIConfig:
    """OpenAI, or any server speaking its chat-completions API."""

    api_key: Annotated[Secret, Meta(description="API key. Env `OPENAI_API_KEY` overrides.")] = (
        _NO_SECRET
    )
    base_url: Annotated[_HttpUrl, Meta(description="API base URL.")] = "https://api.openai.com/v1"
    organization: Annotated[
        str, Meta(description="Sent as `OpenAI-Organization` when not empty.")
    ] = ""
    timeout: _Timeout = 60.0
    default_model: _Model = "gpt-4"
    max_retries: _Retries = 2
    temperature: _Temperature = 0.7
    max_connections: _Connections = 64

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class OpenRouterConfig:
    """OpenRouter (OpenAI wire format plus ranking headers)."""

    api_key: Annotated[Secret, Meta(description="API key. Env `OPENROUTER_API_KEY` overrides.")] = (
        _NO_SECRET
    )
    base_url: Annotated[_HttpUrl, Meta(description="API base URL.")] = (
        "https://openrouter.ai/api/v1"
    )
    site_url: Annotated[str, Meta(description="Sent as `HTTP-Referer` when not empty.")] = ""
    site_name: Annotated[str, Meta(description="Sent as `X-Title` when not empty.")] = "Rosey-Robot"
    timeout: _Timeout = 60.0
    default_model: _Model = "anthropic/claude-3-sonnet"
    max_retries: _Retries = 2
    temperature: _Temperature = 0.7
    max_connections: _Connections = 64

    __repr__ = _safe_repr


@dataclasses.dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """Settings of each LLM provider; only `default_provider`'s need to work."""

    ollama: OllamaConfig = dataclasses.field(default_factory=OllamaConfig)
    openai: OpenAIConfig = dataclasses.field(default_factory=OpenAIConfig)
    openrouter: OpenRouterConfig = dataclasses.field(default_factory=OpenRouterConfig)

    def get(self, name: ProviderName) -> OllamaConfig | OpenAIConfig | OpenRouterConfig:
        """The settings of provider `name`."""
        section: OllamaConfig | OpenAIConfig | OpenRouterConfig = getattr(self, name)
        return section


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    """Per-user limits across all channels; `None` (JSON null) means no limit."""

    requests_per_minute: Annotated[
        _RateLimit,
        Meta(description="Chat turns a user may start in any sliding minute; null: no limit."),
    ] = 10
    requests_per_hour: Annotated[
        _RateLimit,
        Meta(description="Chat turns a user may start in any sliding hour; null: no limit."),
    ] = 100
    requests_per_day: Annotated[
        _RateLimit,
        Meta(description="Chat turns a user may start per UTC day; null: no limit."),
    ] = 500
    tokens_per_day: Annotated[
        _RateLimit,
        Meta(
            description="Tokens (prompt + completion) a user may spend per UTC day; null: no limit."
        ),
    ] = 50000


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class NatsConfig:
    """Where and how to connect to NATS; no `url` means start the embedded nats-server."""

    url: Annotated[
        _NatsUrls | None,
        Meta(
            description="Server URL(s), comma-separated (`nats://`, `tls://`, `ws://`, `wss://`"
            " or `host:port`); null starts an embedded nats-server. Env `LLM_ES_NATS_URL`"
            " overrides."
        ),
    ] = None
    user: Annotated[
        _NonEmpty | None,
        Meta(description="User name, with `password`. Env `LLM_ES_NATS_USER` overrides."),
    ] = None
    password: Annotated[
        Secret | None,
        Meta(description="Password, with `user`. Env `LLM_ES_NATS_PASSWORD` overrides."),
    ] = None
    token: Annotated[
        Secret | None,
        Meta(description="Authentication token. Env `LLM_ES_NATS_TOKEN` overrides."),
    ] = None
    creds: Annotated[
        _NonEmpty | None,
        Meta(
            description="Path of a `.creds` file (JWT + NKey). Env `LLM_ES_NATS_CREDS` overrides."
        ),
    ] = None
    tls_ca: Annotated[_NonEmpty | None, Meta(description="Path of the CA certificate (PEM).")] = (
        None
    )
    tls_cert: Annotated[
        _NonEmpty | None,
        Meta(description="Path of the client certificate (PEM), with `tls_key`."),
    ] = None
    tls_key: Annotated[
        _NonEmpty | None, Meta(description="Path of the client key (PEM), with `tls_cert`.")
    ] = None
    inbox_prefix: Annotated[
        _NonEmpty | None,
        Meta(
            description="Prefix of this client's reply inboxes; null: `_INBOX`. Give llm-es"
            " its own (`_INBOX_llmes`) where other users may subscribe to `_INBOX.>`"
            " (docs/security.md)."
        ),
    ] = None
    replicas: Annotated[
        int,
        Meta(
            ge=1,
            le=5,
            description="Copies JetStream keeps of the log `LLM_EVENTS` and of every KV bucket"
            " llm-es creates (views, meta, leases, instances, publisher); 3 on a 3-node"
            " cluster, 1 on a single server. Raised at start on what exists, never lowered.",
        ),
    ] = 1

    __repr__ = _safe_repr

    @property
    def servers(self) -> tuple[str, ...]:
        """The server URLs in `url`, in order; empty when the embedded server is used."""
        if self.url is None:
            return ()
        return tuple(server.strip() for server in self.url.split(","))


DEFAULT_HTTP_LISTEN = "127.0.0.1:8642"
LISTEN_EXPECTED = "expected HOST:PORT (e.g. 127.0.0.1:8642; port 0 picks a free one)"


def listen_address(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:8642`) -> (host, port); None if malformed."""
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host.strip() or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class HttpConfig:
    """The plugin's HTTP listener (Prometheus `/metrics`)."""

    listen: Annotated[
        str | None,
        Meta(
            description="`HOST:PORT` serving `/metrics` and the dashboard `/` (port 0: a free"
            " one); null: no listener. `llm-es serve --http` overrides."
        ),
    ] = DEFAULT_HTTP_LISTEN

    @property
    def address(self) -> tuple[str, int] | None:
        """Where to listen, or None when switched off (the value was checked when loaded)."""
        return None if self.listen is None else listen_address(self.listen)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `Config()` is the default."""

    name: Annotated[_NonEmpty, Meta(description="Plugin name.")] = "llm"
    enabled: Annotated[
        bool, Meta(description="Whether the plugin answers commands and requests.")
    ] = True
    default_provider: Annotated[
        ProviderName,
        Meta(description="Provider used for chat: `ollama`, `openai` or `openrouter`."),
    ] = "ollama"
    fallback_providers: Annotated[
        tuple[ProviderName, ...],
        Meta(
            description="Providers tried in order when the chosen one is unreachable or"
            " failing (5xx, timeout); each answer records which provider gave it."
        ),
    ] = ()
    service: ServiceConfig = dataclasses.field(default_factory=ServiceConfig)
    providers: ProvidersConfig = dataclasses.field(default_factory=ProvidersConfig)
    rate_limits: RateLimitsConfig = dataclasses.field(default_factory=RateLimitsConfig)
    # Built-ins plus the file's (name -> system prompt); checked by hand, not by msgspec, so
    # an error can name the persona. Not hashed: a mapping is unhashable, and the rest
    # identifies a config well enough.
    personas: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: BUILTIN_PERSONAS, hash=False
    )
    nats: NatsConfig = dataclasses.field(default_factory=NatsConfig)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)

    @property
    def provider(self) -> OllamaConfig | OpenAIConfig | OpenRouterConfig:
        """The settings of `default_provider`."""
        return self.providers.get(self.default_provider)
