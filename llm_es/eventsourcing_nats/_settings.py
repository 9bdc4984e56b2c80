"""Settings of the JetStream persistence module, read from an eventsourcing `Environment`.

The library's environment mechanism looks up `<APPNAME>_<KEY>` before `<KEY>`,
so one process can point several applications at different streams.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.persistence import InterfaceError
from eventsourcing.utils import Environment, strtobool

from llm_es.config import NatsConfig, Secret, redact_url
from llm_es.domain.tokens import NO_NAME, encode_name
from llm_es.errors import ValidationError

T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_REQUEST_TIMEOUT = 5.0
MAX_REPLICAS = 5

NATS_URL = "NATS_URL"
NATS_USER = "NATS_USER"
NATS_PASSWORD = "NATS_PASSWORD"
NATS_TOKEN = "NATS_TOKEN"
NATS_CREDS = "NATS_CREDS"
NATS_CA = "NATS_CA"
NATS_CERT = "NATS_CERT"
NATS_KEY = "NATS_KEY"
NATS_STREAM = "NATS_STREAM"
NATS_SUBJECT_PREFIX = "NATS_SUBJECT_PREFIX"
NATS_STORAGE = "NATS_STORAGE"
NATS_REPLICAS = "NATS_REPLICAS"
NATS_REQUEST_TIMEOUT = "NATS_REQUEST_TIMEOUT"
ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
CREATE_TABLE = "CREATE_TABLE"

_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")
_PREFIX_TOKEN = re.compile(r"[^\s.*>]+")


class SettingsError(InterfaceError, OSError):
    """A setting is missing or invalid; the message names its key (never its secret value).

    An `OSError` too, like the errors the library's own factories raise for
    their settings.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """Where the recorders connect and how they lay out their stream."""

    url: str = DEFAULT_URL
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    stream: str = "ES__"
    subject_prefix: str = "es._"
    storage: str = "file"
    replicas: int = 1
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    originator_id_type: str = "uuid"

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "url":
                value = redact_url(value)
            shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def nats_config(self) -> NatsConfig:
        """The plugin's connection settings, so both connect the same way."""
        return NatsConfig(
            url=self.url,
            user=self.user,
            password=self.password,
            token=self.token,
            creds=self.creds,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )

    @classmethod
    def from_env(cls, env: Environment) -> JetStreamSettings:
        """Read and check every setting; raises SettingsError naming the first bad key."""
        app_token = _app_token(env.name)
        password = _optional(env, NATS_PASSWORD)
        token = _optional(env, NATS_TOKEN)
        settings = cls(
            url=_optional(env, NATS_URL) or DEFAULT_URL,
            user=_optional(env, NATS_USER),
            password=None if password is None else Secret(password),
            token=None if token is None else Secret(token),
            creds=_optional(env, NATS_CREDS),
            tls_ca=_optional(env, NATS_CA),
            tls_cert=_optional(env, NATS_CERT),
            tls_key=_optional(env, NATS_KEY),
            stream=_optional(env, NATS_STREAM) or f"ES_{app_token}",
            subject_prefix=_optional(env, NATS_SUBJECT_PREFIX) or f"es.{app_token}",
            storage=(_optional(env, NATS_STORAGE) or "file").lower(),
            replicas=_parsed(env, NATS_REPLICAS, int, "an integer", 1),
            request_timeout=_parsed(
                env, NATS_REQUEST_TIMEOUT, float, "a number of seconds", DEFAULT_REQUEST_TIMEOUT
            ),
            originator_id_type=(_optional(env, ORIGINATOR_ID_TYPE) or "uuid").lower(),
        )
        settings.check()
        create_stream(env)  # checked now; read again when each recorder is made
        return settings

    def check(self) -> None:
        """Raise SettingsError if a value is out of range."""
        if not _STREAM_NAME.fullmatch(self.stream):
            raise SettingsError(
                f"{NATS_STREAM} {self.stream!r} is not a valid stream name "
                "(no whitespace, '.', '*', '>', '/' or '\\')"
            )
        if not all(_PREFIX_TOKEN.fullmatch(part) for part in self.subject_prefix.split(".")):
            raise SettingsError(
                f"{NATS_SUBJECT_PREFIX} {self.subject_prefix!r} is not a literal subject "
                "(dot-separated tokens without whitespace, '*' or '>')"
            )
        if self.storage not in ("file", "memory"):
            raise SettingsError(f"{NATS_STORAGE} must be 'file' or 'memory', not {self.storage!r}")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise SettingsError(f"{NATS_REPLICAS} must be 1 to {MAX_REPLICAS}, not {self.replicas}")
        if not self.request_timeout > 0:  # also refuses NaN
            raise SettingsError(
                f"{NATS_REQUEST_TIMEOUT} must be more than 0 seconds, not {self.request_timeout}"
            )
        if self.originator_id_type not in ("uuid", "text"):
            raise SettingsError(
                f"{ORIGINATOR_ID_TYPE} must be 'uuid' or 'text', not {self.originator_id_type!r}"
            )
        if (self.user is None) != (self.password is None):
            raise SettingsError(f"{NATS_USER} and {NATS_PASSWORD} go together: set both or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError(f"{NATS_CERT} and {NATS_KEY} go together: set both or neither")


def create_stream(env: Environment) -> bool:
    """CREATE_TABLE (default yes): whether recorders create, or fit, the stream they need."""
    return _parsed(env, CREATE_TABLE, strtobool, "a yes/no value", True)


def _app_token(name: str) -> str:
    if not name:
        return NO_NAME
    try:
        return encode_name(name)
    except ValidationError as exc:
        raise SettingsError(f"application name cannot name a stream: {exc}") from None


def _optional(env: Environment, key: str) -> str | None:
    return (env.get(key) or "").strip() or None


def _parsed(env: Environment, key: str, parse: Callable[[str], T], meaning: str, default: T) -> T:
    value = _optional(env, key)
    if value is None:
        return default
    try:
        return parse(value)
    except ValueError:
        raise SettingsError(f"{key} must be {meaning}, not {value!r}") from None
