"""The exceptions llm-es raises, drawn once so callers know what to catch.

    LLMESError
    ├── ConfigError              invalid configuration (names the key)
    ├── ValidationError          bad input from NATS (names the field)
    ├── ServerVersionError       nats-server too old for the event log
    ├── EmbeddedServerError      the embedded nats-server failed to start
    ├── StoreError               event log failures (PEP 249 names)
    │   ├── IntegrityError       a conditional append lost the race
    │   └── OperationalError     the log could not be reached or written
    │       └── OutcomeUnknown   events sent, not confirmed in time: stored or not
    └── ProviderError            a provider call failed (.provider, .status, .usage)
        ├── ProviderUnavailable  could not connect, or the connection dropped
        │   └── ProviderBusy     every connection of this instance's pool stayed taken
        ├── ProviderTimeout      no answer within the configured timeout
        ├── ProviderAuthError    401/403: the API key is missing, wrong or not allowed
        ├── ProviderRateLimited  429 after the retries (.retry_after: seconds or None)
        ├── ProviderBadRequest   another 4xx (unknown model, bad parameters, no credit),
        │                        or an error object that names no HTTP status
        └── ProviderBadResponse  a 5xx after the retries, or a body we cannot read
            └── ProviderStreamBroken  a stream ended before its final chunk

The status is the HTTP status, or the `code` of an error object a provider sent
with a 200 (OpenRouter does so for failures of the model behind it): either way
it picks the class. Connection errors, 429 and 5xx are retried by the providers
before one of these is raised; a stream is never retried once it has started,
and a broken one raises (its partial text is not an answer). An error raised
once a stream has started (status 200 received) has `prompt_consumed` set and,
in `usage`, what the call had used by then (`PartialUsage`): those tokens are owed.

Messages never contain secrets: provider errors carry the provider name, the
HTTP status and the server's own error text (with the key scrubbed, and left
out for 401/403, where servers echo part of the key), never request headers or
the user-info of a URL.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class AppendRefused(OperationalError):
    """The stream answered and refused the append (an operator's limit such as
    `max_msg_size` or a full stream with discard-new): retrying the same events fails
    the same way."""


class EventsQuarantined(OperationalError):
    """The log stored the events, but every reader skips them: a turn's end or spend that
    arrived after the turn was closed (recovery closed it as abandoned while the log was
    away), which the turn rule refuses (`llm_es.domain.turn_order`)."""


class OutcomeUnknown(OperationalError):
    """Events were sent but the log did not confirm them in time (the server away).

    They may yet be stored: nats-py sends what it buffered once it reconnects,
    and the stream dedupes by event id, so appending them again is safe.
    """


@dataclass(frozen=True, slots=True)
class PartialUsage:
    """What a provider call that failed after the provider started answering had used."""

    model: str
    prompt_tokens: int | None = None
    """As the provider reported it before failing; None when it had not (most do so last)."""
    completion_tokens: int | None = None
    """As the provider reported it before failing; None when it had not."""
    completion_chars: int = 0
    """Characters of answer received before the failure (to estimate what it cost)."""
    cost: float | None = None
    """OpenRouter's `usage.cost`, when it reported one."""


class ProviderError(LLMESError):
    """An LLM provider call failed; `str()` is safe to show to users.

    `status` is the HTTP status when the server answered one (or the code of an
    error object sent with a 200), `retry_after` the seconds it asked us to
    wait (Retry-After), when it did. `prompt_consumed` is True when a stream
    failed after the provider had started answering (status 200 received), so
    it has read the prompt and may bill for it; `usage` then says what the
    call had used, as far as the stream tells.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: float | None = None,
        prompt_consumed: bool = False,
        usage: PartialUsage | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        self.prompt_consumed = prompt_consumed
        self.usage = usage


class ProviderUnavailable(ProviderError):
    """The provider's server could not be reached."""


class ProviderBusy(ProviderUnavailable):
    """No connection to the provider came free within the timeout: this instance's own calls
    held them all (the model may be fine). Not retried; a fallback provider may answer."""


class ProviderTimeout(ProviderError):
    """The provider did not answer within the configured timeout."""


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (401 or 403)."""


class ProviderRateLimited(ProviderError):
    """The provider kept answering 429; `retry_after` says when it may accept again."""


class ProviderBadRequest(ProviderError):
    """The provider refused the request itself (a 4xx other than 401, 403, 429), or sent an
    error object with a 200 that names no HTTP status."""


class ProviderBadResponse(ProviderError):
    """The provider answered with a server error status or a body we cannot read."""


class ProviderStreamBroken(ProviderBadResponse):
    """A streamed answer stopped before its final chunk; what arrived is not an answer."""
