"""The per-day usage fold and its charts: the audit's sums per day, bounded memory, valid SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from typing import Any

from llm_es import charts
from llm_es.domain.audit import audit_body
from llm_es.domain.events import (
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.domain.usage_days import LATENCY_BUCKETS_MS, UsageDays, bucket_quantile, day_range

SVG = "{http://www.w3.org/2000/svg}"


def events_on(day: int, user: str, model: str) -> list[Event]:
    at = datetime(2024, 5, day, 12, tzinfo=UTC)
    turn: dict[str, Any] = {"channel": "lobby", "user": user, "turn_id": f"t{day}{user}", "at": at}
    return [
        TurnAdmitted(
            **turn,
            source="chat",
            persona="default",
            provider="ollama",
            model=model,
            message="hi <there>",
            reserved_tokens=10,
            max_tokens=10,
        ),
        TokensSpent(
            **turn,
            purpose="chat",
            provider="ollama",
            model=model,
            prompt_tokens=7,
            completion_tokens=3,
            estimated=False,
        ),
        TurnCompleted(
            **turn,
            content="ok",
            provider="ollama",
            model=model,
            latency_ms=40.0 * day,
            finish_reason="stop",
        ),
    ]


def test_days_sum_like_the_audit_and_forget_old_days() -> None:
    """Requests and tokens per day by model and user; failures by type and rejections by
    window; days older than keep_days are dropped and not counted again."""
    days = UsageDays(keep_days=3)
    workload: list[Event] = [
        *events_on(17, "ann", "m1"),
        *events_on(18, "ann", "m2"),
        *events_on(18, "<bob>", "m1"),
        TurnFailed(
            channel="c", user="ann", turn_id="x", error_type="timeout", error="slow", at=at(18)
        ),
        TurnRejected(
            channel="c",
            user="ann",
            turn_id="y",
            reason="rate",
            window="minute",
            limit=3,
            detail="d",
            at=at(18),
        ),
    ]
    for seq, event in enumerate(workload, 1):
        days.count(seq, audit_body(event))
    shown = day_range(date(2024, 5, 18), 2)
    assert shown == ["2024-05-17", "2024-05-18"]
    per_model = days.per_day("model", shown)
    assert per_model["groups"] == ["-", "m1", "m2"]
    assert per_model["tokens"] == {"-": [0, 0], "m1": [10, 10], "m2": [0, 10]}
    assert per_model["requests"] == {"-": [0, 0], "m1": [1, 1], "m2": [0, 1]}
    assert per_model["rejected"] == {"-": [0, 1], "m1": [0, 0], "m2": [0, 0]}
    top = days.top_users(shown, 10)
    assert [(r.user, r.tokens, r.requests, r.rejected) for r in top] == [
        ("ann", 20, 2, 1),
        ("<bob>", 10, 1, 0),
    ]
    assert days.errors_per_day(shown)["counts"] == {"rejected_minute": [0, 1], "timeout": [0, 1]}
    assert days.latency_per_day(shown)["turns"] == [1, 2]
    days.forget_before(date(2024, 5, 20))
    assert sorted(days.days) == ["2024-05-18"]
    days.count(99, audit_body(events_on(17, "ann", "m1")[1]))
    assert sorted(days.days) == ["2024-05-18"]


def at(day: int) -> datetime:
    return datetime(2024, 5, day, 13, tzinfo=UTC)


def test_quantiles_are_bucket_bounds() -> None:
    """p50/p99 read the bound of the bucket holding the rank; none without turns."""
    counts = [0] * len(LATENCY_BUCKETS_MS)
    assert bucket_quantile(counts, 0.5) is None
    counts[10] = 98
    counts[40] = 2
    assert bucket_quantile(counts, 0.5) == LATENCY_BUCKETS_MS[10]
    assert bucket_quantile(counts, 0.99) == LATENCY_BUCKETS_MS[40]


def test_charts_are_well_formed_svg_with_escaped_names() -> None:
    """Every chart parses as XML (names with < and & escaped), with a bar or point per value
    and a 'no data' text when empty."""
    days = UsageDays()
    for seq, event in enumerate(events_on(18, "a&b", "<model>"), 1):
        days.count(seq, audit_body(event))
    shown = day_range(date(2024, 5, 18), 30)
    usage = ET.fromstring(charts.usage_chart(days.per_day("model", shown)))
    bars = [e for e in usage.iter(f"{SVG}rect") if e.get("class") == "bar"]
    assert len(bars) == 2  # tokens and requests, one day, one model
    assert "<model>" in "".join(usage.itertext())
    latency = ET.fromstring(charts.latency_chart(days.latency_per_day(shown)))
    assert len(list(latency.iter(f"{SVG}circle"))) == 2  # p50 and p99 of the one day
    errors = ET.fromstring(charts.errors_chart(days.errors_per_day(shown)))
    assert "no data" in "".join(errors.itertext())
