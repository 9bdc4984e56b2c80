"""Wire form of events: orjson bytes with `type` and `schema`, upcast on read.

An event is one flat JSON object: `type`, `schema`, `id`, `at` (ISO 8601 UTC,
`Z`), then its data fields. Readers upcast old schema versions through
`UPCASTERS` before building the class, so a stored event is never rewritten.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from llm_es.events import EVENT_TYPES, Event

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
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise UnknownEventError(f"unknown event type {type_name!r}")
    while version < cls.SCHEMA:
        upcast = UPCASTERS.get((type_name, version))
        if upcast is None:
            raise UnknownEventError(f"no upcaster for {type_name} schema {version}")
        body = upcast(body)
        version += 1
    if version > cls.SCHEMA:
        raise UnknownEventError(f"{type_name} schema {version} is newer than this code")
    if not isinstance(body.get("id"), str):
        raise UnknownEventError(f"{type_name}: missing or invalid 'id'")
    try:
        body["at"] = datetime.fromisoformat(body["at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownEventError(f"{type_name}: missing or invalid 'at': {exc}") from exc
    if body["at"].tzinfo is None:
        # A naive time would be read as local time by every fold; writers always send UTC.
        raise UnknownEventError(f"{type_name}: 'at' has no UTC offset")
    for name, value in body.items():
        if isinstance(value, list):
            body[name] = tuple(value)
    try:
        return cls(**body)
    except TypeError as exc:
        raise UnknownEventError(f"{type_name}: {exc}") from exc
