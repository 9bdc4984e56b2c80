"""The exceptions llm-es raises, drawn once so callers know what to catch.

    LLMESError
    ├── ConfigError              invalid configuration (names the key)
    ├── ValidationError          bad input from NATS (names the field)
    ├── ServerVersionError       nats-server too old for the event log
    ├── EmbeddedServerError      the embedded nats-server failed to start
    ├── StoreError               event log failures (PEP 249 names)
    │   ├── IntegrityError       a conditional append lost the race
    │   └── OperationalError     the log could not be reached or written
    └── ProviderError            an LLM provider call failed
        ├── ProviderUnavailable  could not connect
        ├── ProviderTimeout      no answer within the configured timeout
        └── ProviderBadResponse  an HTTP error status or an unreadable body

Messages never contain secrets: provider errors carry the provider name,
the HTTP status and the server's own error text, never request headers.
"""

from __future__ import annotations


class LLMESError(Exception):
    """Base of every error llm-es raises on purpose."""


class ConfigError(LLMESError):
    """The configuration is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key
        self.problem = problem


class ValidationError(LLMESError):
    """A request from NATS is malformed; the message names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ServerVersionError(LLMESError):
    """The connected nats-server lacks features the event log needs."""


class EmbeddedServerError(LLMESError):
    """The embedded nats-server could not be started."""


class StoreError(LLMESError):
    """The event log failed."""


class IntegrityError(StoreError):
    """A conditional append found a newer event than expected (JetStream err 10071)."""


class OperationalError(StoreError):
    """The event log could not be reached or refused a write for another reason."""


class ProviderError(LLMESError):
    """An LLM provider call failed; `str()` is safe to show to users."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


class ProviderUnavailable(ProviderError):
    """The provider's server could not be reached."""


class ProviderTimeout(ProviderError):
    """The provider did not answer within the configured timeout."""


class ProviderBadResponse(ProviderError):
    """The provider answered with an error status or a body we cannot read."""

    def __init__(self, provider: str, message: str, status: int | None = None) -> None:
        super().__init__(provider, message)
        self.status = status
