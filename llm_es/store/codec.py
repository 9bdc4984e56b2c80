"""Wire form of events: orjson bytes with `type` and `schema`, upcast on read.

An event is one flat JSON object: `type`, `schema`, `id`, `at` (ISO 8601 UTC,
`Z`), then its data fields. Readers upcast old schema versions through
`UPCASTERS` before building the class, so a stored event is never rewritten.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from llm_es.domain.events import EVENT_TYPES, Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""(type, schema version) -> function turning that version's data into the next."""

_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}


class UnknownEventError(ValueError):
    """The bytes are not an event this version of llm-es can read."""


def encode_event(event: Event) -> bytes:
    """Serialize an event for the log."""
    body: dict[str, Any] = {"type": event.TYPE, "schema": event.SCHEMA}
    for name in _FIELD_NAMES[type(event)]:
        body[name] = getattr(event, name)
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def decode_event(data: bytes) -> Event:
    """Parse an event from the log, upcasting older schema versions."""
    try:
        body = orjson.loads(data)
        type_name = body.pop("type")
        version = body.pop("schema")
    except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
        raise UnknownEventError(f"not an llm-es event: {exc}") from exc
    # Checked here so garbage fails as UnknownEventError (the runner skips those),
    # not as a TypeError from a dict lookup or a comparison further down.
    if not isinstance(type_name, str) or type(version) is not int:
        raise UnknownEventError(f"not an llm-es event: type {type_name!r}, schema {version!r}")
    reader = _READERS.get(type_name)
    if reader is None:
        raise UnknownEventError(f"unknown event type {type_name!r}")
    if version != reader.schema:
        body = _upcast(type_name, version, reader.schema, body)
    try:
        return reader.build(body)
    except KeyError as exc:
        raise UnknownEventError(f"{type_name}: missing field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise UnknownEventError(f"{type_name}: {exc}") from exc


def _upcast(type_name: str, version: int, current: int, body: dict[str, Any]) -> dict[str, Any]:
    """`body` of schema `version` brought to `current`, one version at a time."""
    if version > current:
        raise UnknownEventError(f"{type_name} schema {version} is newer than this code")
    while version < current:
        upcast = UPCASTERS.get((type_name, version))
        if upcast is None:
            raise UnknownEventError(f"no upcaster for {type_name} schema {version}")
        body = upcast(body)
        version += 1
    return body


def parse_event_time(value: object) -> datetime:
    """An event's `at`: ISO 8601 with a UTC offset (a naive time would be read as local)."""
    if not isinstance(value, str):
        raise TypeError(f"missing or invalid 'at': {value!r}")
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"missing or invalid 'at': {exc}") from exc
    if at.tzinfo is None:
        raise ValueError("'at' has no UTC offset")
    return at


def check_event_id(value: object) -> str:
    """An event's `id`: a string (it is also the append's Nats-Msg-Id)."""
    if not isinstance(value, str):
        raise TypeError(f"missing or invalid 'id': {value!r}")
    return value


def unexpected_fields(body: dict[str, Any]) -> None:
    """Fields left over once every known one is taken: not this code's event."""
    if body:
        raise TypeError(f"unexpected fields {sorted(body)}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Reader:
    schema: int
    build: Callable[[dict[str, Any]], Event]
    """Upcast body (without `type`/`schema`) -> event; consumes `body`."""


def _reader_for(cls: type[Event]) -> _Reader:
    """A builder of `cls` from a decoded body, generated like dataclasses generates `__init__`.

    The frozen dataclass `__init__` sets each field through `object.__setattr__`
    and costs about three times this: decoding is most of a replay's time, so
    the builder writes the slots directly. It checks what `__init__` would
    (every required field present, nothing unknown) and `id` and `at`, and
    turns JSON lists back into the tuples the classes declare.
    """
    namespace: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "parse_at": parse_event_time,
        "check_id": check_event_id,
        "leftover": unexpected_fields,
        "list": list,
        "tuple": tuple,
        "type": type,
    }
    lines = ["def build(body):", "    event = new(cls)"]
    for f in dataclasses.fields(cls):
        # A slot's member descriptor writes past the frozen `__setattr__`.
        namespace[f"set_{f.name}"] = getattr(cls, f.name).__set__
        if f.name in ("id", "at"):
            take = f"body.pop({f.name!r})"
        elif f.default is not dataclasses.MISSING:
            namespace[f"default_{f.name}"] = f.default
            take = f"body.pop({f.name!r}, default_{f.name})"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"factory_{f.name}"] = f.default_factory
            take = f"(body.pop({f.name!r}) if {f.name!r} in body else factory_{f.name}())"
        else:
            take = f"body.pop({f.name!r})"
        if f.name == "id":
            take = f"check_id({take})"
        elif f.name == "at":
            take = f"parse_at({take})"
        lines.append(f"    value = {take}")
        if f.name in _TUPLE_FIELDS.get(cls, ()):
            lines.append("    if type(value) is list:")
            lines.append("        value = tuple(value)")
        lines.append(f"    set_{f.name}(event, value)")
    lines += ["    leftover(body)", "    return event"]
    # The source is built above from the dataclass field names only.
    exec("\n".join(lines), namespace)
    return _Reader(cls.SCHEMA, namespace["build"])


def _tuple_fields(cls: type[Event]) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is tuple or hints[f.name] is tuple
    )


_TUPLE_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: _tuple_fields(cls) for cls in EVENT_TYPES.values()
}
_READERS: dict[str, _Reader] = {name: _reader_for(cls) for name, cls in EVENT_TYPES.items()}
