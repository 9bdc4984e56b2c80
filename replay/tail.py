"""`tail` follows the log one readable line (or JSON line) per event; `export` dumps it as JSONL.

Both read with an ordered consumer filtered by the server on
`llm.ev.<channel>.<user>.<EventType>`. `tail --json` prints each event as
today's code reads it (older schema versions upcast); `export` prints each
event as stored, with its sequence and subject, for external tools (sealed personal text
opened, or `[erased]` once its key is destroyed: docs/privacy.md):

    {"seq": 12, "subject": "llm.ev.lobby.alice.TurnAdmitted", "event": {"type": ...}}
"""

from __future__ import annotations

import dataclasses
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any

import msgspec
import orjson

from llm_es.domain.events import Event, iso_utc
from llm_es.domain.personal_data import SEALED_PREFIX
from llm_es.store.codec import UnknownEventError, decode_event, encode_event
from llm_es.store.keyring import KeyRing
from llm_es.store.quarantine import Quarantine
from replay.output import LineWriter
from replay.reading import EventLog, LogSelection, turn_rule_for

TEXT_CHARS = 80
MAX_EVENTS = 10**12
"""Bound of a follow loop that runs until interrupted."""
START_TIME_SLACK = timedelta(hours=1)
"""`tail --since`: the server finds the start by its own store time; events are then
filtered by their `at`, which a writer sets moments before the server stores them."""
_COMMON_FIELDS = frozenset({"id", "at", "channel", "user", "user_id"})
SEALED_MARK = b'"' + SEALED_PREFIX.encode()
"""In the bytes of every stored event with sealed text (a JSON string starting `sealed:1:`)."""


def describe_event(seq: int, event: Event) -> str:
    """One readable line: sequence, time, channel, user, type and the event's own fields."""
    channel = event.channel_name or "-"
    user = event.user_name or "-"
    parts = [f"#{seq}", iso_utc(event.at), channel, user, event.TYPE]
    for item in msgspec.structs.fields(event):
        if item.name in _COMMON_FIELDS:
            continue
        parts.append(f"{item.name}={_value(item.name, getattr(event, item.name))}")
    return " ".join(parts)


def _value(name: str, value: Any) -> str:
    if name == "turn_id" and isinstance(value, str):
        return value[:8]
    if isinstance(value, str):
        flat = value.replace("\n", "\\n")
        if len(flat) > TEXT_CHARS:
            flat = flat[: TEXT_CHARS - 1] + "…"
        return orjson.dumps(flat).decode() if (" " in flat or not flat) else flat
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "-"
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)


def json_line(seq: int, subject: str, event: Event) -> str:
    """The event as today's code reads it, with its place in the log."""
    return orjson.dumps(
        {"seq": seq, "subject": subject, "event": orjson.Fragment(encode_event(event))}
    ).decode()


def quarantined_line(seq: int, subject: str, reason: str, *, as_json: bool) -> str:
    """What `tail` prints in place of a quarantined event: where it is and why, no content."""
    if as_json:
        return orjson.dumps({"seq": seq, "subject": subject, "quarantined": reason}).decode()
    return f"#{seq} {subject} quarantined: {reason}"


async def run_tail(
    log: EventLog,
    selection: LogSelection,
    writer: LineWriter,
    *,
    as_json: bool = False,
    since: datetime | None = None,
    limit: int | None = None,
    follow: bool = True,
) -> int:
    """Print the selected events as they come; returns how many were printed."""
    if since is not None:
        selection = dataclasses.replace(selection, start_time=since - START_TIME_SLACK)
    if not follow:
        end = await log.end()
        if end < max(selection.from_seq, 1) and selection.start_time is None:
            return 0
        selection = dataclasses.replace(selection, to_seq=end)
    printed = 0
    quarantine = Quarantine("tail", turns=await turn_rule_for(log, selection))
    budget = MAX_EVENTS if limit is None else limit
    if budget <= 0:
        return 0
    async with aclosing(log.read(selection, follow=follow)) as batches:
        async for batch in batches:
            for seq, subject, data, stored_ns in batch:
                event = quarantine.admit_or_reason(seq, subject, data, stored_ns)
                if isinstance(event, str):
                    quarantine.record(seq, event)
                    await writer.line(quarantined_line(seq, subject, event, as_json=as_json))
                    continue
                if since is not None and event.at < since:
                    continue
                event = await log.keyring.open_event(event)
                await writer.line(
                    json_line(seq, subject, event) if as_json else describe_event(seq, event)
                )
                printed += 1
                if printed >= budget:
                    await writer.flush()
                    return printed
            await writer.flush()
    await writer.flush()
    return printed


async def opened(keyring: KeyRing, data: bytes) -> bytes:
    """A stored event with its sealed text opened (`[erased]` where the key is destroyed);
    the bytes as stored when nothing in them is sealed, or they are no event this code reads."""
    if SEALED_MARK not in data:
        return data
    try:
        event = decode_event(data)
    except UnknownEventError:
        return data
    return encode_event(await keyring.open_event(event))


def export_line(seq: int, subject: str, data: bytes, *, quarantined: str | None = None) -> str:
    """An event as stored (its JSON object; sealed text opened), with sequence and subject
    (and, for a quarantined one, why)."""
    line: dict[str, Any] = {"seq": seq, "subject": subject}
    if quarantined is not None:
        line["quarantined"] = quarantined
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        line |= {"event": None, "raw": data.decode("utf-8", "replace")}
    else:
        line["event"] = orjson.Fragment(data)
    return orjson.dumps(line).decode()


def _stored_at(data: bytes) -> datetime | None:
    try:
        body = orjson.loads(data)
        moment = datetime.fromisoformat(body["at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


async def run_export(
    log: EventLog,
    selection: LogSelection,
    writer: LineWriter,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    quarantined: bool = False,
) -> int:
    """Write the selected events as JSON lines, up to the log's end now; returns the count.

    Quarantined events (`llm_es.store.quarantine`) are left out, as every fold leaves
    them out; with `quarantined`, only they are written, each with its reason.
    """
    end = await log.end()
    to_seq = end if selection.to_seq is None else min(selection.to_seq, end)
    selection = dataclasses.replace(selection, to_seq=to_seq)
    written = 0
    quarantine = Quarantine("export", turns=await turn_rule_for(log, selection))
    async with aclosing(log.read(selection)) as batches:
        async for batch in batches:
            for seq, subject, data, stored_ns in batch:
                reason = quarantine.admit_or_reason(seq, subject, data, stored_ns)
                if isinstance(reason, str) != quarantined:
                    if isinstance(reason, str):
                        quarantine.record(seq, reason)
                    continue
                if since is not None or until is not None:
                    at = _stored_at(data)
                    # An event whose time cannot be read is kept: export hides nothing.
                    if at is not None and (
                        (since is not None and at < since) or (until is not None and at >= until)
                    ):
                        continue
                why = reason if isinstance(reason, str) else None
                if why is None:
                    data = await opened(log.keyring, data)
                await writer.line(export_line(seq, subject, data, quarantined=why))
                written += 1
    await writer.flush()
    return written
