"""Tests of llm_es.store.codec: every event survives the wire form; bad bytes fail one known way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from msgspec.structs import replace

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
    UserErased,
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
    UserErased(at=AT, user="alice", channels=("general", "#ops"), memories=2),
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


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).TYPE)
def test_wire_form_lists_type_schema_then_the_fields_in_class_order(event: Event) -> None:
    """Keys come as the log has always had them: type, schema, id, at, then the class's data
    fields in declaration order (base classes' first)."""
    assert list(wire(event)) == ["type", "schema", *type(event).__struct_fields__]
    assert type(event).__struct_fields__[:2] == ("id", "at")


WRITTEN_BEFORE_MSGSPEC = [
    (
        '{"type":"TurnAdmitted","schema":1,"id":"0f1e2d3c4b5a69788796a5b4c3d2e1f0",'
        '"at":"2024-05-17T12:34:56.789012Z","channel":"général.chat","user":"alice 🎉",'
        '"turn_id":"t1","source":"command","persona":"default","provider":"ollama",'
        '"model":"llama3.2","message":"hello \\"world\\"\\nline two","reserved_tokens":600,'
        '"max_tokens":512,"purpose":"chat","instance":""}',
        replace(SAMPLES[0], id="0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    ),
    (
        '{"type":"TokensSpent","schema":1,"id":"5c0ffee5c0ffee5c0ffee5c0ffee5c0f",'
        '"at":"2024-05-17T12:34:56.789012Z","channel":null,"user":null,"turn_id":"t4",'
        '"purpose":"context_summary","provider":"ollama","model":"llama3.2",'
        '"prompt_tokens":10,"completion_tokens":5,"estimated":true,"cost":null}',
        replace(
            SAMPLES[5],
            id="5c0ffee5c0ffee5c0ffee5c0ffee5c0f",
            channel=None,
            purpose="context_summary",
        ),
    ),
    (
        '{"type":"TurnCompleted","schema":1,"id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",'
        '"at":"2024-05-17T14:00:00+02:00","channel":"general","user":"alice","turn_id":"t1",'
        '"content":"an answer","provider":"openrouter","model":"m","latency_ms":12.5,'
        '"finish_reason":null,"fallback_from":["ollama"]}',
        replace(
            SAMPLES[2],
            id="a" * 32,
            at=datetime(2024, 5, 17, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            provider="openrouter",
            model="m",
            fallback_from=("ollama",),
        ),
    ),
    (
        '{"type":"MemoryRecalled","schema":1,"id":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",'
        '"at":"2024-05-17T12:34:56.789012Z","channel":"general","user":"bob","query":"python",'
        '"memory_ids":["deadbeef","0badf00d"]}',
        replace(SAMPLES[7], id="b" * 32),
    ),
]
"""Bytes captured from the orjson encoder used before msgspec (86a5f3c), with their events
(samples above with the ids, times and values those bytes hold)."""


@pytest.mark.parametrize(
    ("stored", "event"), WRITTEN_BEFORE_MSGSPEC, ids=[e.TYPE for _, e in WRITTEN_BEFORE_MSGSPEC]
)
def test_events_written_before_msgspec_read_back_and_encode_to_the_same_bytes(
    stored: str, event: Event
) -> None:
    """Events the orjson encoder wrote (a tuple field, a null cost, a +02:00 time, escapes,
    non-ASCII names) decode to equal events, which encode to exactly the stored bytes."""
    data = stored.encode()
    decoded = decode_event(data)
    assert type(decoded) is type(event)
    assert decoded == event
    assert encode_event(decoded) == data
    assert encode_event(event) == data


def test_other_writers_formatting_and_key_order_are_read_alike() -> None:
    """Whitespace and another key order (a tool that rewrote the log, say) do not matter:
    the same event comes back."""
    event = SAMPLES[7]
    body = wire(event)
    reordered = dict(reversed(list(body.items())))
    data = orjson.dumps(reordered, option=orjson.OPT_INDENT_2)
    assert data.startswith(b'{\n  "memory_ids"')
    assert decode_event(data) == event


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
    ("change", "message"),
    [
        ({"at": None}, "missing required field `at`"),
        ({"at": 1715949296}, "Expected `datetime`, got `int` - at `$.at`"),
        ({"at": "yesterday"}, "Invalid RFC3339 encoded datetime - at `$.at`"),
        # No offset: it would be read as local time.
        ({"at": "2024-05-17T12:34:56"}, "Expected `datetime` with a timezone component"),
        ({"id": None}, "missing required field `id`"),
        ({"id": 7}, "Expected `str`, got `int` - at `$.id`"),
        ({"surprise": "extra field"}, "unknown field `surprise`"),
    ],
    ids=["at-null", "at-number", "at-text", "at-naive", "id-null", "id-number", "extra-field"],
)
def test_broken_fields_raise_unknown_event_error(change: dict[str, Any], message: str) -> None:
    """A known type with a missing, mistyped or extra field raises UnknownEventError naming it
    (a missing `id` or `at` too, though a new event gets them by default)."""
    body = wire(SAMPLES[9]) | change
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(UnknownEventError, match=re.escape(message)):
        decode_event(orjson.dumps(body))


@pytest.mark.parametrize(
    ("sample", "change", "message"),
    [
        (0, {"reserved_tokens": "lots"}, "Expected `int`, got `str` - at `$.reserved_tokens`"),
        (0, {"max_tokens": 512.0}, "Expected `int`, got `float` - at `$.max_tokens`"),
        (0, {"user": 5}, "Expected `str | null`, got `int` - at `$.user`"),
        (2, {"latency_ms": "fast"}, "Expected `float`, got `str` - at `$.latency_ms`"),
        (4, {"prompt_tokens": "abc"}, "Expected `int`, got `str` - at `$.prompt_tokens`"),
        (4, {"estimated": "no"}, "Expected `bool`, got `str` - at `$.estimated`"),
        (4, {"cost": True}, "Expected `float | null`, got `bool` - at `$.cost`"),
        (7, {"memory_ids": "deadbeef"}, "Expected `array`, got `str` - at `$.memory_ids`"),
        (7, {"memory_ids": ["a", 1]}, "Expected `str`, got `int` - at `$.memory_ids[1]`"),
    ],
    ids=[
        "reserved_tokens-text",
        "max_tokens-float",
        "user-number",
        "latency_ms-text",
        "prompt_tokens-text",
        "estimated-text",
        "cost-bool",
        "memory_ids-text",
        "memory_ids-item-number",
    ],
)
def test_wrongly_typed_fields_raise_unknown_event_error_naming_the_field(
    sample: int, change: dict[str, Any], message: str
) -> None:
    """A data field of the wrong JSON type is refused, with the type and the field's path."""
    body = wire(SAMPLES[sample]) | change
    with pytest.raises(UnknownEventError, match=re.escape(message)):
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


def test_an_upcast_body_is_checked_like_a_current_one(
    upcasters: dict[tuple[str, int], Any],
) -> None:
    """What an upcaster returns is typed like stored bytes: a wrong type or a leftover field of
    the old version is refused, naming the field."""
    upcasters[("TurnFailed", 0)] = lambda body: body | {"error_type": 3}
    old = wire(SAMPLES[3]) | {"schema": 0}
    with pytest.raises(UnknownEventError, match=re.escape("got `int` - at `$.error_type`")):
        decode_event(orjson.dumps(old))

    upcasters[("TurnFailed", 0)] = lambda body: body | {"message": "kept by mistake"}
    with pytest.raises(UnknownEventError, match="unknown field `message`"):
        decode_event(orjson.dumps(old))


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
    """A decoded event is as immutable as a constructed one."""
    decoded = decode_event(encode_event(SAMPLES[0]))
    with pytest.raises(AttributeError):
        decoded.id = "changed"  # type: ignore[misc]
