"""The retry policy, Retry-After parsing, and the message-safe URL and header helpers."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from llm_es.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.providers import RetryPolicy, is_retryable, retry_after_seconds
from llm_es.providers.failures import shown_url
from llm_es.providers.http import header_value

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ProviderUnavailable("openai", "down"), True),
        (ProviderRateLimited("openai", "429", 429), True),
        (ProviderBadResponse("openai", "500", 500), True),
        (ProviderBadResponse("openai", "529", 529), True),
        (ProviderBadResponse("openai", "invalid JSON"), False),
        (ProviderStreamBroken("openai", "broke off"), False),
        (ProviderTimeout("openai", "slow"), False),
        (ProviderAuthError("openai", "401", 401), False),
        (ProviderBadRequest("openai", "400", 400), False),
        (ProviderError("openai", "other"), False),
    ],
)
def test_only_connection_failures_429_and_5xx_are_retryable(
    error: ProviderError, retryable: bool
) -> None:
    """Retried: no connection, 429, 5xx. Never: timeouts, other 4xx, bad bodies, streams."""
    assert is_retryable(error) is retryable


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    """The wait doubles per retry, lies in [backoff/2, backoff), and stops at max_delay."""
    policy = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=4.0)
    error = ProviderUnavailable("ollama", "down")
    low = [policy.delay_before_retry(error, n, jitter=lambda: 0.0) for n in range(5)]
    high = [policy.delay_before_retry(error, n, jitter=lambda: 0.999) for n in range(5)]
    assert low == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert high == pytest.approx([0.49975, 0.9995, 1.999, 3.998, 3.998])


def test_no_retry_once_max_retries_are_spent_or_for_other_errors() -> None:
    """After max_retries retries, or for a non-retryable error, the policy says give up."""
    policy = RetryPolicy(max_retries=2)
    assert policy.delay_before_retry(ProviderUnavailable("x", "down"), 1) is not None
    assert policy.delay_before_retry(ProviderUnavailable("x", "down"), 2) is None
    assert policy.delay_before_retry(ProviderBadRequest("x", "400", 400), 0) is None
    assert RetryPolicy(max_retries=0).delay_before_retry(ProviderUnavailable("x", "d"), 0) is None


def test_retry_after_is_used_as_given_up_to_the_cap() -> None:
    """A server's Retry-After replaces the backoff; one beyond max_retry_after ends retries."""
    policy = RetryPolicy(max_retries=3, max_retry_after=30.0)
    asked = ProviderRateLimited("x", "429", 429, retry_after=12.5)
    assert policy.delay_before_retry(asked, 0) == 12.5
    too_long = ProviderRateLimited("x", "429", 429, retry_after=31.0)
    assert policy.delay_before_retry(too_long, 0) is None
    unavailable_503 = ProviderBadResponse("x", "503", 503, retry_after=0.0)
    assert policy.delay_before_retry(unavailable_503, 0) == 0.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": " 3 "}, 3.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "Sun, 01 Jun 2025 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Sun, 01 Jun 2025 11:59:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),
    ],
)
def test_retry_after_reads_seconds_dates_and_openai_milliseconds(
    headers: dict[str, str], seconds: float | None
) -> None:
    """Retry-After as seconds or an HTTP-date (relative to now), retry-after-ms preferred,
    never negative, None when missing or unreadable."""
    assert retry_after_seconds(httpx.Headers(headers), now=NOW) == seconds


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://user:pass@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://token@host.example/v1?key=abc#frag", "https://host.example/v1"),
        ("http://[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_shown_url_drops_user_info_query_and_fragment(url: str, shown: str) -> None:
    """URLs named in messages keep scheme, host, port and path only."""
    assert shown_url(url) == shown


def test_header_values_are_made_safe_for_http() -> None:
    """ASCII passes unchanged; non-ASCII and control characters are %-encoded."""
    assert header_value("Rosey-Robot (https://x.example/a?b=c)") == (
        "Rosey-Robot (https://x.example/a?b=c)"
    )
    assert header_value("Rosé\r\nX-Evil: 1") == "Ros%C3%A9%0D%0AX-Evil: 1"
