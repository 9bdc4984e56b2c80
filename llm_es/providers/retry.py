"""When a failed provider call is tried again, and after how long (no I/O here).

Retried: connection failures, 429 and 5xx. Not retried: timeouts (the model may
still be working, and the caller's patience is spent), other 4xx (the same
request fails the same way), unreadable bodies and broken streams. The wait is
exponential backoff with jitter, unless the server sent `Retry-After` (or
OpenAI's `retry-after-ms`): then exactly that, provided it is no longer than
`max_retry_after`; a server asking for a longer wait gets no retry, so the
caller hears "rate limited" at once instead of after a long silence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from llm_es.errors import (
    ProviderBadResponse,
    ProviderBusy,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderUnavailable,
)

RETRY_AFTER = "retry-after"
RETRY_AFTER_MS = "retry-after-ms"
"""OpenAI's millisecond variant of Retry-After; preferred when present, as its SDK does."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times, and how long apart, a provider call is retried."""

    max_retries: int = 2
    """Retries after the first attempt (0: try once)."""
    base_delay: float = 0.5
    """Backoff before the first retry; doubles for each further one."""
    max_delay: float = 8.0
    """Longest backoff between two attempts."""
    max_retry_after: float = 30.0
    """Longest server-requested wait honoured; a longer one ends the retries."""

    def delay_before_retry(
        self,
        error: ProviderError,
        retries_done: int,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before retrying after `error`, or None to give up and raise it.

        `jitter` returns a number in [0, 1); the backoff is spread over its upper half
        so concurrent callers do not retry in lockstep.
        """
        if retries_done >= self.max_retries or not is_retryable(error):
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        backoff = min(self.max_delay, self.base_delay * 2.0**retries_done)
        return backoff / 2 + jitter() * backoff / 2


def is_retryable(error: ProviderError) -> bool:
    """True for failures another attempt may cure: no connection, 429, 5xx."""
    if isinstance(error, ProviderStreamBroken | ProviderBusy):
        return False  # a broken stream was passed on; a full pool stays full for a while
    if isinstance(error, ProviderUnavailable | ProviderRateLimited):
        return True
    return isinstance(error, ProviderBadResponse) and (error.status or 0) >= 500


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """The wait a response asks for (`retry-after-ms`, else `Retry-After` in seconds or
    as an HTTP-date), never negative; None when absent or unreadable.

    `headers` must look names up case-insensitively (httpx.Headers does).
    """
    millis = _finite_number(headers.get(RETRY_AFTER_MS))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = headers.get(RETRY_AFTER)
    if value is None:
        return None
    seconds = _finite_number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _finite_number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None
