"""The exceptions llm-es raises, drawn once so callers know what to catch.

    LLMESError
    ├── ConfigError              invalid configuration (names the key)
    ├── ValidationError          bad input from NATS (names the field)
    ├── ServerVersionError       nats-server too old for the event log
    ├── EmbeddedServerError      the embedded nats-server failed to start
    ├── StoreError               event log failures (PEP 249 names)
    │   ├── IntegrityError       a conditional append lost the race
    │   └── OperationalError     the log could not be reached or written
    └── ProviderError            an LLM provider call failed (.provider, .status)
        ├── ProviderUnavailable  could not connect, or the connection dropped
        ├── ProviderTimeout      no answer within the configured timeout
        ├── ProviderAuthError    401/403: the API key is missing, wrong or not allowed
        ├── ProviderRateLimited  429 after the retries (.retry_after: seconds or None)
        ├── ProviderBadRequest   another 4xx: unknown model, bad parameters, no credit
        └── ProviderBadResponse  a 5xx after the retries, or a body we cannot read
            └── ProviderStreamBroken  a stream ended before its final chunk

Connection errors, 429 and 5xx are retried by the providers before one of these
is raised; a stream is never retried once it has yielded content, and a broken
one raises (its partial text is not an answer).

Messages never contain secrets: provider errors carry the provider name, the
HTTP status and the server's own error text (with the key scrubbed, and left
out for 401/403, where servers echo part of the key), never request headers or
the user-info of a URL.
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

    def __init__(self, message: str, actual_last_seq: int | None = None) -> None:
        super().__init__(message)
        self.actual_last_seq = actual_last_seq
        """The subject's real last sequence when the server said it ("... sequence: N")."""


class OperationalError(StoreError):
    """The event log could not be reached or refused a write for another reason."""


class ProviderError(LLMESError):
    """An LLM provider call failed; `str()` is safe to show to users.

    `status` is the HTTP status when the server answered one, `retry_after` the
    seconds it asked us to wait (Retry-After), when it did.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """The provider's server could not be reached."""


class ProviderTimeout(ProviderError):
    """The provider did not answer within the configured timeout."""


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (401 or 403)."""


class ProviderRateLimited(ProviderError):
    """The provider kept answering 429; `retry_after` says when it may accept again."""


class ProviderBadRequest(ProviderError):
    """The provider refused the request itself (a 4xx other than 401, 403, 429)."""


class ProviderBadResponse(ProviderError):
    """The provider answered with a server error status or a body we cannot read."""


class ProviderStreamBroken(ProviderBadResponse):
    """A streamed answer stopped before its final chunk; what arrived is not an answer."""
