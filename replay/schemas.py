"""JSON Schemas of the events as stored, generated from the event classes.

One schema per event type and schema version, `docs/events/<Type>.v<N>.json`,
for programs that read the log. `llm-replay schemas --write docs/events`
regenerates them; a test checks the files against the code, so a field added
without a new version (or a version without its file) fails the suite.
Older versions keep their files: the log still holds events written with them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import orjson

from llm_es.domain.events import EVENT_TYPES, Event
from llm_es.store.log import SUBJECT_PREFIX
from replay.errors import EXIT_DIFFERENCES, EXIT_OK

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://github.com/grobertson/Rosey-Robot/llm-es/events/"


def schema_file_name(type_name: str, version: int) -> str:
    return f"{type_name}.v{version}.json"


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The schema of `cls`'s current version, as `encode_event` writes it.

    msgspec describes the fields (types, defaults, the descriptions in their
    `Meta`, no other properties); around them go the `type` and `schema` the
    codec writes first, and `id` and `at` become required: the classes fill
    them in for a new event, but a stored one without them is refused.
    """
    (reference,), components = msgspec.json.schema_components([cls])
    fields = components[reference["$ref"].rpartition("/")[2]]
    doc = " ".join(fields.get("description", "").split())
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
        "properties": {
            "type": {"const": cls.TYPE, "description": "event type"},
            "schema": {"const": cls.SCHEMA, "description": "schema version of this event type"},
            **fields["properties"],
        },
        "required": ["type", "schema", "id", "at", *fields.get("required", [])],
        "additionalProperties": fields["additionalProperties"],
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


def run_schemas(args: argparse.Namespace) -> int:
    """`schemas`: print them, write them into a directory, or check a directory."""
    if args.write is not None:
        for name in write_schemas(args.write):
            print(args.write / name)
        return EXIT_OK
    if args.check is not None:
        problems = check_schemas(args.check)
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_DIFFERENCES if problems else EXIT_OK
    print(schema_text(current_schemas()), end="")
    return EXIT_OK
