"""The pure mapping of log events to the seed's observability events: exact bodies, the seed's
words and types where the log records finer ones, and what goes into headers."""

from __future__ import annotations

from datetime import UTC, datetime

from llm_es import headers
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TokensSpent, TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.domain.observations import ObservationFold

AT = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NO_LIMITS = RateLimitsConfig(None, None, None, None)


def admitted(turn_id: str = "t1", channel: str | None = "lobby") -> TurnAdmitted:
    return TurnAdmitted(
        at=AT,
        turn_id=turn_id,
        channel=channel,
        user="ann",
        source="service",
        persona="",
        provider="openai",
        model="gpt-4o",
        message="Explain async",
        reserved_tokens=100,
        max_tokens=100,
        purpose="complete",
    )


def spent(
    tokens: tuple[int, int], turn_id: str = "t1", channel: str | None = "lobby"
) -> TokensSpent:
    return TokensSpent(
        at=AT,
        turn_id=turn_id,
        channel=channel,
        user="ann",
        purpose="complete",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        estimated=False,
    )


def test_a_completion_with_no_channel_reads_as_an_empty_channel_string() -> None:
    """The seed declares `channel: str`: a completion for another plugin gives `""`, the
    persona of a persona-less turn is null, and latency is a whole number of ms."""
    fold = ObservationFold(NO_LIMITS)
    fold.apply(1, admitted(channel=None))
    fold.apply(2, spent((7, 5), channel=None))
    completed = TurnCompleted(
        at=AT,
        turn_id="t1",
        channel=None,
        user="ann",
        content="Async lets one thread wait for many things.",
        provider="openai",
        model="gpt-4o",
        latency_ms=412.6,
        finish_reason="stop",
    )
    (response,) = fold.apply(3, completed)
    assert response.body == {
        "channel": "",
        "user": "ann",
        "prompt_length": len("Explain async"),
        "response_length": len(completed.content),
        "tokens_used": 12,
        "provider": "openai",
        "latency_ms": 413,
        "persona": None,
    }
    assert response.headers[headers.LLM_MODEL] == "gpt-4o"
    assert response.headers[headers.MSG_ID] == completed.id


def test_a_failed_call_that_was_charged_counts_its_tokens_and_the_seed_word_for_429() -> None:
    """A provider's 429 is recorded as `rate_limited` and published as the seed's
    `rate_limit`; the failure names the provider the turn asked."""
    fold = ObservationFold(NO_LIMITS)
    fold.apply(1, admitted())
    failed = TurnFailed(
        at=AT,
        turn_id="t1",
        channel="lobby",
        user="ann",
        error_type="rate_limited",
        error="OpenAI API error: 429 Too Many Requests",
    )
    (error,) = fold.apply(2, failed)
    assert error.body == {
        "channel": "lobby",
        "user": "ann",
        "error": "OpenAI API error: 429 Too Many Requests",
        "provider": "openai",
        "error_type": "rate_limit",
    }
    assert error.headers[headers.LLM_TURN_ID] == "t1"


def test_a_token_threshold_past_the_limit_still_reads_as_a_share_of_at_most_one() -> None:
    """`percentage` is the seed's 0..1 float even when a settled spend overshoots the limit;
    `current` and `limit` keep the real figures."""
    fold = ObservationFold(RateLimitsConfig(None, None, None, tokens_per_day=100))
    fold.apply(1, admitted())
    (threshold,) = fold.apply(2, spent((90, 30)))
    assert threshold.body == {
        "user": "ann",
        "channel": "lobby",
        "threshold_type": "tokens",
        "current": 120,
        "limit": 100,
        "percentage": 1.0,
    }
    assert type(threshold.body["percentage"]) is float
    assert threshold.headers[headers.LLM_WINDOW_START] == "2025-03-01T00:00:00Z"


def test_header_values_never_break_a_line() -> None:
    """An error text with line breaks (any Unicode kind) becomes one header line."""
    assert headers.header_safe("one\r\ntwo\u2028three\x00four") == "one two three four"
    assert len(headers.header_safe("x" * 5000)) == headers.MAX_VALUE_CHARS
