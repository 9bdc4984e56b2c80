"""JSON Schemas of the events as stored, generated from the event classes.

One schema per event type and schema version, `docs/events/<Type>.v<N>.json`,
for programs that read the log. `llm-replay schemas --write docs/events`
regenerates them; a test checks the files against the code, so a field added
without a new version (or a version without its file) fails the suite.
Older versions keep their files: the log still holds events written with them.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from llm_es.domain.events import EVENT_TYPES, Event
from llm_es.store.log import SUBJECT_PREFIX

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://github.com/grobertson/Rosey-Robot/llm-es/events/"


def schema_file_name(type_name: str, version: int) -> str:
    return f"{type_name}.v{version}.json"


def _type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema of one field type (the types events use)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_type_schema(arg) for arg in typing.get_args(hint)]
        if all(set(option) == {"type"} for option in options):
            names: list[Any] = []
            for option in options:
                names += option["type"] if isinstance(option["type"], list) else [option["type"]]
            return {"type": names}
        return {"anyOf": options}
    if origin is tuple:
        args = typing.get_args(hint)
        return {"type": "array", "items": _type_schema(args[0])}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if hint is datetime:
        return {
            "type": "string",
            "format": "date-time",
            "description": "UTC time set by the writer (ISO 8601, `Z`)",
        }
    raise TypeError(f"no JSON Schema for field type {hint!r}")


def field_docs(cls: type[Event]) -> dict[str, str]:
    """The docstrings written under fields (`x: int` then `\"\"\"...\"\"\"`), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The schema of `cls`'s current version, as `encode_event` writes it."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {
        "type": {"const": cls.TYPE, "description": "event type"},
        "schema": {"const": cls.SCHEMA, "description": "schema version of this event type"},
    }
    required = ["type", "schema", "id", "at"]
    docs = field_docs(cls)
    for item in dataclasses.fields(cls):
        properties[item.name] = _type_schema(hints[item.name])
        if item.name in docs:
            properties[item.name]["description"] = docs[item.name]
        if item.name in ("id", "at"):
            continue
        if item.default is not dataclasses.MISSING:
            # Added after version 1 was first written: older events lack it and read as this.
            default = item.default
            properties[item.name]["default"] = (
                list(default) if isinstance(default, tuple) else default
            )
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
            properties[item.name]["default"] = (
                list(default) if isinstance(default, tuple) else default
            )
        else:
            required.append(item.name)
    properties["id"]["description"] = "uuid4 hex; also the Nats-Msg-Id of the append"
    doc = " ".join((cls.__doc__ or "").split())
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID_BASE + schema_file_name(cls.TYPE, cls.SCHEMA),
        "title": f"{cls.TYPE} (schema version {cls.SCHEMA})",
        "description": (
            f"{doc} Stored on subject `{SUBJECT_PREFIX}.<channel>.<user>.{cls.TYPE}` "
            "of stream LLM_EVENTS (names encoded: `[A-Za-z0-9_-]` kept, other bytes `=XX`, "
            "`_` for none)."
        ),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def current_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema for the current version of every event type."""
    return {
        schema_file_name(cls.TYPE, cls.SCHEMA): event_schema(cls)
        for cls in sorted(EVENT_TYPES.values(), key=lambda c: c.TYPE)
    }


def schema_text(schema: Mapping[str, Any]) -> str:
    """How a schema file is written (stable, so the check can compare text)."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode() + "\n"


def check_schemas(directory: Path) -> list[str]:
    """Problems with the schema files in `directory` (empty: they match the code).

    Files of older versions are allowed (and required to be valid JSON); every
    current version must have its file, equal to what the code generates.
    """
    problems = []
    for name, schema in current_schemas().items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing (run llm-replay schemas --write {directory})")
        elif path.read_text() != schema_text(schema):
            problems.append(f"{name}: differs from the event class (regenerate it)")
    current = set(current_schemas())
    for path in sorted(directory.glob("*.v*.json")):
        type_name, _, version = path.name.removesuffix(".json").rpartition(".v")
        cls = EVENT_TYPES.get(type_name)
        if cls is None:
            problems.append(f"{path.name}: no event type {type_name!r}")
        elif path.name not in current and (not version.isdigit() or int(version) >= cls.SCHEMA):
            problems.append(f"{path.name}: not a version before the current {cls.SCHEMA}")
    return problems


def write_schemas(directory: Path) -> list[str]:
    """Write the current schemas into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in current_schemas().items():
        (directory / name).write_text(schema_text(schema))
        written.append(name)
    return written
