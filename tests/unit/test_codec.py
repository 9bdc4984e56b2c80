"""Tests of llm_es.store.codec: every event survives the wire form; bad bytes fail one known way."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from llm_es.domain.events import (
    EVENT_TYPES,
    ContextReset,
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.store.codec import UPCASTERS, UnknownEventError, decode_event, encode_event

AT = datetime(2024, 5, 17, 12, 34, 56, 789012, tzinfo=UTC)

SAMPLES: list[Event] = [
    TurnAdmitted(
        at=AT,
        turn_id="t1",
        channel="général.chat",
        user="alice 🎉",
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message='hello "world"\nline two',
        reserved_tokens=600,
        max_tokens=512,
    ),
    TurnRejected(
        at=AT,
        turn_id="t2",
        channel="general",
        user="bob",
        reason="rate_limit",
        window="minute",
        limit=10,
        detail="Rate limit: 10 requests/minute (resets in 42s)",
    ),
    TurnCompleted(
        at=AT,
        turn_id="t1",
        channel="general",
        user="alice",
        content="an answer",
        provider="ollama",
        model="llama3.2",
        latency_ms=12.5,
        finish_reason=None,
    ),
    TurnFailed(
        at=AT,
        turn_id="t3",
        channel="general",
        user="alice",
        error_type="timeout",
        error="no answer within 60s",
    ),
    TokensSpent(
        at=AT,
        turn_id="t1",
        channel="general",
        user="alice",
        purpose="chat",
        provider="openrouter",
        model="anthropic/claude-3-sonnet",
        prompt_tokens=120,
        completion_tokens=80,
        estimated=False,
        cost=0.00042,
    ),
    TokensSpent(
        at=AT,
        turn_id="t4",
        channel="general",
        user=None,
        purpose="summarize",
        provider="ollama",
        model="llama3.2",
        prompt_tokens=10,
        completion_tokens=5,
        estimated=True,
    ),
    MemoryAdded(
        at=AT,
        memory_id="deadbeef",
        channel="general",
        user_id=None,
        content="Alice likes Python",
        category="fact",
        importance=4,
    ),
    MemoryRecalled(
        at=AT,
        channel="general",
        user="bob",
        query="python",
        memory_ids=("deadbeef", "0badf00d"),
    ),
    MemoryForgotten(at=AT, channel="general", user="bob", memory_id="deadbeef"),
    PersonaSwitched(at=AT, channel="general", user="carol", persona="concise"),
    ContextReset(at=AT, channel="general", user=None),
    ContextSummarized(
        at=AT,
        channel="general",
        summary="They talked about Python.",
        through_seq=17,
        message_count=8,
    ),
]


def wire(event: Event) -> dict[str, Any]:
    """The JSON object an event is stored as."""
    body: dict[str, Any] = orjson.loads(encode_event(event))
    return body


@pytest.fixture
def upcasters() -> Iterator[dict[tuple[str, int], Any]]:
    """UPCASTERS for one test; its previous content is put back afterwards."""
    saved = dict(UPCASTERS)
    try:
        yield UPCASTERS
    finally:
        UPCASTERS.clear()
        UPCASTERS.update(saved)


def test_samples_cover_every_event_type() -> None:
    """The sample list holds at least one event of every type in the catalog."""
    assert {type(e).TYPE for e in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).TYPE)
def test_every_event_round_trips(event: Event) -> None:
    """decode(encode(event)) equals the event: same class, id, time and data."""
    decoded = decode_event(encode_event(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).TYPE)
def test_wire_form_is_one_flat_object_with_type_schema_and_utc_z(event: Event) -> None:
    """The stored object carries type, schema, id and `at` as ISO 8601 UTC ending in Z."""
    body = wire(event)
    assert body["type"] == type(event).TYPE
    assert body["schema"] == type(event).SCHEMA
    assert body["id"] == event.id
    assert body["at"] == "2024-05-17T12:34:56.789012Z"
    assert all(not isinstance(value, dict) for value in body.values())


def test_default_id_and_time_survive_and_offsets_are_normalised() -> None:
    """A generated id and a non-UTC offset decode to the same id and instant."""
    event = ContextReset(at=AT.astimezone(timezone(timedelta(hours=2))), channel="c", user="u")
    decoded = decode_event(encode_event(event))
    assert decoded.id == event.id
    assert len(decoded.id) == 32
    assert decoded.at == AT


def test_memory_ids_come_back_as_a_tuple() -> None:
    """JSON arrays decode to tuples, so a decoded event stays hashable and equal."""
    decoded = decode_event(encode_event(SAMPLES[7]))
    assert isinstance(decoded, MemoryRecalled)
    assert decoded.memory_ids == ("deadbeef", "0badf00d")
    assert hash(decoded) == hash(SAMPLES[7])


def test_unknown_type_raises_unknown_event_error() -> None:
    """A type name this code does not know is refused."""
    body = wire(SAMPLES[9]) | {"type": "PersonaExploded"}
    with pytest.raises(UnknownEventError, match="PersonaExploded"):
        decode_event(orjson.dumps(body))


def test_newer_schema_raises_unknown_event_error() -> None:
    """An event written by a newer version (schema above the class's) is refused."""
    body = wire(SAMPLES[9]) | {"schema": PersonaSwitched.SCHEMA + 1}
    with pytest.raises(UnknownEventError, match="newer"):
        decode_event(orjson.dumps(body))


def test_old_schema_without_upcaster_raises_unknown_event_error(
    upcasters: dict[tuple[str, int], Any],
) -> None:
    """An older schema with no registered upcaster is refused, not guessed at."""
    upcasters.pop(("PersonaSwitched", 0), None)
    body = wire(SAMPLES[9]) | {"schema": 0}
    with pytest.raises(UnknownEventError, match="no upcaster"):
        decode_event(orjson.dumps(body))


GARBAGE = [
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b'"a string"',
    b"42",
    b"null",
    b"{}",
    b'{"type": "PersonaSwitched"}',
    b'{"schema": 1}',
    b'{"type": ["PersonaSwitched"], "schema": 1}',
    b'{"type": null, "schema": 1}',
    b'{"type": "PersonaSwitched", "schema": "1"}',
    b'{"type": "PersonaSwitched", "schema": null}',
    b'{"type": "PersonaSwitched", "schema": 1.5}',
    b'{"type": "PersonaSwitched", "schema": true}',
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_raises_unknown_event_error(data: bytes) -> None:
    """Bytes that are not an llm-es event raise UnknownEventError, never another error."""
    with pytest.raises(UnknownEventError):
        decode_event(data)


@pytest.mark.parametrize(
    "change",
    [
        {"at": None},
        {"at": 1715949296},
        {"at": "yesterday"},
        {"at": "2024-05-17T12:34:56"},  # no offset: would be read as local time
        {"id": None},
        {"id": 7},
        {"surprise": "extra field"},
    ],
    ids=["at-null", "at-number", "at-text", "at-naive", "id-null", "id-number", "extra-field"],
)
def test_broken_fields_raise_unknown_event_error(change: dict[str, Any]) -> None:
    """A known type with a missing, mistyped or extra field raises UnknownEventError."""
    body = wire(SAMPLES[9]) | change
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(UnknownEventError):
        decode_event(orjson.dumps(body))


def test_missing_data_field_raises_unknown_event_error() -> None:
    """A known type lacking one of its data fields is refused."""
    body = wire(SAMPLES[9])
    del body["persona"]
    with pytest.raises(UnknownEventError, match="PersonaSwitched"):
        decode_event(orjson.dumps(body))


def test_registered_upcaster_is_applied_to_an_old_version(
    upcasters: dict[tuple[str, int], Any],
) -> None:
    """A fake schema 0 of TurnFailed (field `message`, no `error_type`) reads as schema 1."""
    seen: list[dict[str, Any]] = []

    def failed_v0_to_v1(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(body))
        upcast = {k: v for k, v in body.items() if k != "message"}
        return upcast | {"error": body["message"], "error_type": "provider_error"}

    upcasters[("TurnFailed", 0)] = failed_v0_to_v1
    current = SAMPLES[3]
    old = {k: v for k, v in wire(current).items() if k not in ("error", "error_type")}
    old |= {"schema": 0, "message": "boom"}

    decoded = decode_event(orjson.dumps(old))

    assert len(seen) == 1
    assert "type" not in seen[0]
    assert "schema" not in seen[0]
    assert decoded == TurnFailed(
        id=current.id,
        at=AT,
        turn_id="t3",
        channel="general",
        user="alice",
        error_type="provider_error",
        error="boom",
    )


def test_upcasters_chain_one_version_at_a_time(upcasters: dict[tuple[str, int], Any]) -> None:
    """From schema -1, the -1 -> 0 and 0 -> 1 upcasters both run, in that order."""
    order: list[int] = []

    def minus_one_to_zero(body: dict[str, Any]) -> dict[str, Any]:
        order.append(-1)
        return {k: v for k, v in body.items() if k != "name"} | {"persona_name": body["name"]}

    def zero_to_one(body: dict[str, Any]) -> dict[str, Any]:
        order.append(0)
        return {k: v for k, v in body.items() if k != "persona_name"} | {
            "persona": body["persona_name"]
        }

    upcasters[("PersonaSwitched", -1)] = minus_one_to_zero
    upcasters[("PersonaSwitched", 0)] = zero_to_one
    current = SAMPLES[9]
    old = {k: v for k, v in wire(current).items() if k != "persona"}
    old |= {"schema": -1, "name": "concise"}

    assert decode_event(orjson.dumps(old)) == current
    assert order == [-1, 0]


def test_upcasters_are_left_as_they_were() -> None:
    """Runs after the upcaster tests: nothing they registered is still in UPCASTERS."""
    assert ("TurnFailed", 0) not in UPCASTERS
    assert ("PersonaSwitched", -1) not in UPCASTERS
    assert ("PersonaSwitched", 0) not in UPCASTERS


def test_fields_with_defaults_may_be_absent_from_older_writers() -> None:
    """An event written before a defaulted field existed decodes with that field's default."""
    admitted = next(e for e in SAMPLES if isinstance(e, TurnAdmitted))
    body = wire(admitted)
    del body["purpose"], body["instance"]
    decoded = decode_event(orjson.dumps(body))
    assert isinstance(decoded, TurnAdmitted)
    assert (decoded.purpose, decoded.instance) == ("chat", "")
    assert decoded.message == admitted.message


def test_decoded_events_stay_frozen() -> None:
    """Decoding builds events past the frozen `__init__`, yet they remain immutable."""
    decoded = decode_event(encode_event(SAMPLES[0]))
    with pytest.raises(AttributeError):
        decoded.id = "changed"  # type: ignore[misc]
