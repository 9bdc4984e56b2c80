"""The event JSON Schemas in docs/events match the event classes and the bytes the codec writes."""

from __future__ import annotations

import pathlib
import types
import typing
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from llm_es.domain.events import EVENT_TYPES, Event, TurnAdmitted
from llm_es.store.codec import encode_event
from replay.schemas import check_schemas, current_schemas, event_schema, schema_file_name

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "events"
SAMPLES: dict[type[Any], Any] = {
    str: "text",
    int: 3,
    float: 1.5,
    bool: True,
    datetime: datetime(2024, 5, 17, 12, 0, tzinfo=UTC),
}


def sample_event(cls: type[Event]) -> Event:
    """An instance with every field set (required and defaulted) to a plausible value."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in msgspec.structs.fields(cls):
        hint = hints[item.name]
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is tuple:
            values[item.name] = ("a", "b")
        else:
            values[item.name] = SAMPLES[hint]
    return cls(**values)


def matches(schema: dict[str, Any], value: Any) -> bool:
    """The subset of JSON Schema the event schemas use: const, type (list), items, anyOf."""
    if "const" in schema and value != schema["const"]:
        return False
    if "anyOf" in schema:
        return any(matches(option, value) for option in schema["anyOf"])
    allowed = schema.get("type")
    if allowed is None:
        return True
    names = allowed if isinstance(allowed, list) else [allowed]
    kinds = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "array": lambda v: (
            isinstance(v, list) and all(matches(schema.get("items", {}), item) for item in v)
        ),
    }
    return any(kinds[name](value) for name in names)


def test_the_documented_schemas_are_those_of_the_code() -> None:
    """docs/events has one file per event type at its current version, equal to the generated
    schema (regenerate with `llm-replay schemas --write docs/events`)."""
    assert check_schemas(DOCS) == []
    names = {schema_file_name(cls.TYPE, cls.SCHEMA) for cls in EVENT_TYPES.values()}
    assert set(current_schemas()) == names


def test_every_event_the_codec_writes_validates_against_its_schema() -> None:
    """Each encoded event has the required fields, no others, and values of the stated types."""
    for cls in EVENT_TYPES.values():
        schema = event_schema(cls)
        body = orjson.loads(encode_event(sample_event(cls)))
        assert set(schema["required"]) <= set(body), cls.TYPE
        assert set(body) <= set(schema["properties"]), cls.TYPE
        for name, value in body.items():
            assert matches(schema["properties"][name], value), (cls.TYPE, name, value)


def test_a_stale_schema_file_is_reported(tmp_path: pathlib.Path) -> None:
    """A missing file, a changed one and a version from the future are each named."""
    for name, schema in current_schemas().items():
        (tmp_path / name).write_text(orjson.dumps(schema).decode())
    (tmp_path / "TurnAdmitted.v1.json").unlink()
    (tmp_path / "TurnRejected.v7.json").write_text("{}")
    problems = check_schemas(tmp_path)
    assert any(
        p.startswith("TurnAdmitted.v1.json: missing (run llm-replay schemas") for p in problems
    )
    assert any("differs from the event class" in p for p in problems)
    assert any(p.startswith("TurnRejected.v7.json: not a version before") for p in problems)


def test_field_descriptions_and_required_stamp_reach_the_schema() -> None:
    """A field's description written in its class (`msgspec.Meta`) is in the schema beside its
    type and default; `id` and `at` are required (a stored event must carry them, though a new
    one gets them by default), defaulted fields are not."""
    schema = event_schema(TurnAdmitted)
    assert schema["properties"]["instance"] == {
        "description": "The llm-es instance that runs the turn (who may still end it).",
        "type": "string",
        "default": "",
    }
    assert schema["properties"]["at"]["format"] == "date-time"
    assert schema["required"][:4] == ["type", "schema", "id", "at"]
    assert "purpose" not in schema["required"]
    assert "instance" not in schema["required"]
    assert schema["additionalProperties"] is False
    assert schema["description"].startswith("A chat turn passed the rate limits;")
