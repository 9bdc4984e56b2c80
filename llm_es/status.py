"""`llm-es status`: the server, the event log, the views and their lag, and who answers.

`instances` lists every running llm-es (the `rosey-llm` service's `$SRV.STATS`
answers) with its admission counters.

Everything is read from NATS as it is now; nothing is written (the instance
probe is `!chat help`, which appends no event). Each part reports what it
could read, so a missing stream or bucket still leaves a useful report.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from llm_es.chat_client import (
    CONNECT_ERRORS,
    cannot_connect,
    connect_from_terminal,
    connected_server,
)
from llm_es.config import Config
from llm_es.domain.views import BUCKET, QUARANTINE_KEY, checkpoint_key
from llm_es.service.api import ADMISSION_STATS_ENDPOINT, SERVICE_NAME
from llm_es.service.commands import COMMAND_SUBJECT
from llm_es.store.kv import live_views_bucket
from llm_es.store.log import STREAM_NAME, SUBJECT_PREFIX
from llm_es.store.stream_settings import MIN_SERVER_VERSION

# The views `projections` writes (llm_es may not import it to ask).
PROJECTIONS = ("context", "memories", "settings", "usage")
KEY_KINDS = ("messages", "memories", "channel", "usage", "checkpoint", "quarantine")
NO_LOG_YET = "no event log yet (start llm-es serve)"
NO_VIEWS_YET = "no views yet (start llm-es serve)"
PROBE_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
MAX_KEYS_COUNTED = 10_000_000
PROBE_CHANNEL = "llm-es-status"
PROBE_USER = "llm-es-status"
SERVICE_STATS_SUBJECT = f"$SRV.STATS.{SERVICE_NAME}"
SERVICE_PING_SUBJECT = f"$SRV.PING.{SERVICE_NAME}"
DEFAULT_INBOX_PREFIX = "_INBOX"
STATS_GATHER_SECONDS = 0.5
"""How long `$SRV.*` answers are collected (every instance answers the one request)."""
MAX_REPLIES = 1000
MAX_SEQUENCES_SHOWN = 20

READ_ERRORS = (nats.errors.Error, TimeoutError)

Report = dict[str, Any]


async def run_status(config: Config, nats_url: str | None, *, as_json: bool) -> int:
    """Print the status report; 0 whenever NATS could be reached, else 1."""
    try:
        nc = await connect_from_terminal(config, nats_url, "llm-es-status")
    except CONNECT_ERRORS as exc:
        print(cannot_connect(config, nats_url, exc), file=sys.stderr, flush=True)
        return 1
    try:
        # llm-es answers only `_INBOX.>` (and configured prefixes): a private inbox, as the
        # embedded server's `llmes` user has, gets no `!chat` answer; ask `$SRV.PING` then.
        private_inbox = config.nats.inbox_prefix not in (None, DEFAULT_INBOX_PREFIX)
        report = await gather_status(nc, probe_commands=not private_inbox)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode(), flush=True)
    else:
        print(render_text(report), flush=True)
    return 0


async def gather_status(nc: NATS, *, probe_commands: bool = True) -> Report:
    """The whole report as one JSON-able dict; `probe_commands` False asks the service's
    `$SRV.PING` whether an instance answers instead of `!chat help`."""
    js = nc.jetstream(timeout=READ_TIMEOUT_SECONDS)
    stream = await stream_status(js)
    last_seq = int(stream.get("last_seq") or 0)
    views, checkpoints = await views_status(js, last_seq)
    return {
        "server": server_status(nc),
        "stream": stream,
        "views": views,
        "checkpoints": checkpoints,
        "quarantine": await quarantine_status(js, views),
        "instance": await (instance_status(nc) if probe_commands else service_ping_status(nc)),
        "instances": await instances_status(nc),
    }


def server_status(nc: NATS) -> Report:
    wanted = ".".join(map(str, MIN_SERVER_VERSION))
    version = nc.connected_server_version
    try:
        version_ok: bool | None = (version.major, version.minor) >= MIN_SERVER_VERSION
    except ValueError:  # not semver: cannot tell
        version_ok = None
    return {
        "url": connected_server(nc),
        "version": str(nc._server_info.get("version", "unknown")),
        "min_version": wanted,
        "version_ok": version_ok,
        "jetstream": bool(nc._server_info.get("jetstream")),
    }


async def stream_status(js: JetStreamContext) -> Report:
    """The log's size, settings and event counts by type (from the stream's subject state)."""
    report: Report = {"name": STREAM_NAME}
    try:
        # The server lists per-subject counts up to its page size (100k subjects);
        # `event_types_partial` says when that cut the list.
        info = await js.stream_info(STREAM_NAME, subjects_filter=f"{SUBJECT_PREFIX}.>")
    except NotFoundError:
        return {**report, "exists": False, "note": NO_LOG_YET}
    except READ_ERRORS as exc:
        return {**report, "exists": None, "error": _describe(exc)}
    state, config = info.state, info.config
    by_type: Counter[str] = Counter()
    for subject, count in (state.subjects or {}).items():
        by_type[subject.rpartition(".")[2]] += count
    return {
        **report,
        "exists": True,
        "messages": state.messages,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "bytes": state.bytes,
        # nats-py leaves `storage` a plain str when it parses a server response.
        "storage": None if config.storage is None else str(StorageType(config.storage).value),
        "replicas": config.num_replicas,
        "allow_atomic": bool(config.allow_atomic),
        "duplicate_window_seconds": config.duplicate_window,
        "event_types": dict(sorted(by_type.items())),
        "event_types_partial": sum(by_type.values()) < state.messages,
    }


async def views_status(js: JetStreamContext, last_seq: int) -> tuple[Report, Report]:
    """Keys in the views bucket by kind, and each projection's checkpoint and lag."""
    checkpoints: Report = {
        name: {"seq": None, "lag": last_seq, "stored": False} for name in PROJECTIONS
    }
    try:
        bucket = await live_views_bucket(js)
    except READ_ERRORS as exc:  # e.g. a user without KV permissions: its requests time out
        return {"bucket": BUCKET, "exists": None, "error": _describe(exc)}, checkpoints
    views: Report = {"bucket": bucket}
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return {**views, "exists": False, "note": NO_VIEWS_YET}, checkpoints
    except READ_ERRORS as exc:
        return {**views, "exists": None, "error": _describe(exc)}, checkpoints
    try:
        keys = await count_keys(kv)
        replicas = (await kv.status()).stream_info.config.num_replicas
        for name in PROJECTIONS:
            seq = await _checkpoint(kv, name)
            if seq is not None:
                checkpoints[name] = {"seq": seq, "lag": last_seq - seq, "stored": True}
    except READ_ERRORS as exc:
        return {**views, "exists": True, "error": _describe(exc)}, checkpoints
    return {**views, "exists": True, "keys": keys, "replicas": replicas}, checkpoints


async def count_keys(kv: KeyValue) -> dict[str, int]:
    """Live keys by their first part (`messages`, `memories`, ...), deleted keys excluded."""
    counts = dict.fromkeys(KEY_KINDS, 0)
    watcher = await kv.watchall(ignore_deletes=True, meta_only=True)
    try:
        for _ in range(MAX_KEYS_COUNTED):
            entry = await watcher.updates(timeout=READ_TIMEOUT_SECONDS)  # type: ignore[no-untyped-call]  # nats-py is untyped here
            if entry is None:
                break
            kind = entry.key.partition(".")[0]
            kind = kind if kind in counts else "other"
            counts[kind] = counts.get(kind, 0) + 1
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return counts


async def quarantine_status(js: JetStreamContext, views: Report) -> Report:
    """The events every reader skips (`llm_es.store.quarantine`), as the live views list them."""
    report: Report = {"count": 0, "sequences": [], "events": []}
    if not views.get("exists"):
        return report
    try:
        kv = await js.key_value(views["bucket"])
        entry = await kv.get(QUARANTINE_KEY)
    except (KeyNotFoundError, BucketNotFoundError):
        return report
    except READ_ERRORS as exc:
        return {**report, "error": _describe(exc)}
    try:
        value = orjson.loads(entry.value or b"")
        events = [{"seq": int(e["seq"]), "reason": str(e["reason"])} for e in value["events"]]
        count = int(value["count"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return {**report, "error": "unreadable quarantine view"}
    return {"count": count, "sequences": [e["seq"] for e in events], "events": events}


async def _checkpoint(kv: KeyValue, name: str) -> int | None:
    try:
        entry = await kv.get(checkpoint_key(name))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    value = orjson.loads(entry.value)
    return int(value["seq"]) if isinstance(value, dict) and "seq" in value else None


async def instance_status(nc: NATS) -> Report:
    """Whether an llm-es instance answers `!chat help` on the command subject."""
    report: Report = {"subject": COMMAND_SUBJECT, "answered": False}
    payload = orjson.dumps({"channel": PROBE_CHANNEL, "user": PROBE_USER, "args": "help"})
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS + 1):
            reply = await nc.request(COMMAND_SUBJECT, payload, timeout=PROBE_TIMEOUT_SECONDS)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
        return report
    except nats.errors.Error as exc:
        return {**report, "error": _describe(exc)}
    try:
        answer = orjson.loads(reply.data)
    except orjson.JSONDecodeError:
        answer = None
    success = answer.get("success") if isinstance(answer, dict) else None
    return {**report, "answered": True, "success": success is True}


async def service_ping_status(nc: NATS) -> Report:
    """Whether an llm-es instance answers `$SRV.PING` of the `rosey-llm` service."""
    answers = await gather_replies(nc, SERVICE_PING_SUBJECT)
    return {"subject": SERVICE_PING_SUBJECT, "answered": bool(answers), "success": bool(answers)}


async def gather_replies(
    nc: NATS, subject: str, *, seconds: float = STATS_GATHER_SECONDS
) -> list[bytes]:
    """The answers to one request on `subject` that arrive within `seconds` (at most
    `MAX_REPLIES`): every instance of a service answers a `$SRV.*` request once. Empty
    messages (the server's "no responders") are left out."""
    answers: list[bytes] = []

    async def collect(msg: Any) -> None:
        if msg.data and len(answers) < MAX_REPLIES:
            answers.append(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush(timeout=int(READ_TIMEOUT_SECONDS))
        await asyncio.sleep(seconds)
    finally:
        await sub.unsubscribe()
    return answers


async def instances_status(nc: NATS) -> list[Report]:
    """Each running instance with its admission counters, from the service's `$SRV.STATS`."""
    try:
        answers = await gather_replies(nc, SERVICE_STATS_SUBJECT)
    except READ_ERRORS:
        return []
    instances = [i for i in map(_instance_from_stats, answers) if i is not None]
    return sorted(instances, key=lambda i: str(i["instance"]))


def _instance_from_stats(data: bytes) -> Report | None:
    try:
        stats = orjson.loads(data)
        endpoints = stats["endpoints"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    chat = next(
        (e for e in endpoints if isinstance(e, dict) and e.get("name") == ADMISSION_STATS_ENDPOINT),
        {},
    )
    counters = chat.get("data")
    admissions: dict[str, Any] = counters if isinstance(counters, dict) else {}
    return {
        "instance": admissions.get("instance", stats.get("id")),
        "version": stats.get("version"),
        "started": stats.get("started"),
        "requests": sum(int(e.get("num_requests") or 0) for e in endpoints),
        "errors": sum(int(e.get("num_errors") or 0) for e in endpoints),
        "admitted": admissions.get("admitted"),
        "rejected": admissions.get("rejected"),
        "admission_conflicts": admissions.get("admission_conflicts"),
        "conflict_retries_per_admitted": admissions.get("conflict_retries_per_admitted"),
        "turns_in_flight": admissions.get("turns_in_flight"),
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ------------------------------------------------------------------ text output


def render_text(report: Report) -> str:
    """Aligned `key: value` lines for a person."""
    lines = _text_lines(report)
    width = max(len(key) for key, _ in lines) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in lines)


def _text_lines(report: Report) -> list[tuple[str, str]]:
    server, stream, views = report["server"], report["stream"], report["views"]
    ok = {True: "ok", False: "TOO OLD", None: "unknown"}[server["version_ok"]]
    lines = [
        ("server", server["url"]),
        ("server version", f"{server['version']} ({ok}; llm-es needs >= {server['min_version']})"),
        ("jetstream", "enabled" if server["jetstream"] else "DISABLED (start nats-server -js)"),
    ]
    if stream["exists"]:
        lines += [
            ("stream", stream["name"]),
            ("stream messages", str(stream["messages"])),
            ("stream sequences", f"{stream['first_seq']}..{stream['last_seq']}"),
            ("stream bytes", str(stream["bytes"])),
            ("stream storage", f"{stream['storage']}, replicas {stream['replicas']}"),
            ("stream allow_atomic", "yes" if stream["allow_atomic"] else "no"),
            ("stream duplicate window", f"{stream['duplicate_window_seconds']:g}s"),
        ]
        types = stream["event_types"]
        partial = " (partial)" if stream["event_types_partial"] else ""
        for event_type, count in types.items():
            lines.append((f"events {event_type}", f"{count}{partial}"))
        if not types:
            lines.append(("events", "none"))
    else:
        lines.append(("stream", f"{stream['name']}: {stream.get('note') or stream.get('error')}"))
    if views.get("keys") is not None:
        lines.append(("bucket", views["bucket"]))
        lines.append(("bucket replicas", str(views["replicas"])))
        lines += [(f"keys {kind}", str(count)) for kind, count in views["keys"].items()]
    else:
        lines.append(("bucket", f"{views['bucket']}: {views.get('note') or views.get('error')}"))
    for name, checkpoint in report["checkpoints"].items():
        seq = checkpoint["seq"] if checkpoint["stored"] else "none"
        lines.append((f"checkpoint {name}", f"{seq} (lag {checkpoint['lag']})"))
    lines.append(("quarantined events", _quarantine_text(report["quarantine"])))
    instance = report["instance"]
    if instance["answered"]:
        lines.append(("instance", f"answered on {instance['subject']}"))
    else:
        lines.append(
            ("instance", f"NO ANSWER on {instance['subject']} (is `llm-es serve` running?)")
        )
    for running in report["instances"]:
        lines.append(
            (
                f"instance {running['instance']}",
                f"v{running['version']}, {running['requests']} service requests, "
                f"admitted {running['admitted']}, rejected {running['rejected']}, "
                f"admission conflicts {running['admission_conflicts']} "
                f"({running['conflict_retries_per_admitted']} per admitted), "
                f"{running['turns_in_flight']} turns in flight",
            )
        )
    return lines


def _quarantine_text(quarantine: Report) -> str:
    if quarantine.get("error"):
        return f"unknown ({quarantine['error']})"
    count = quarantine["count"]
    if not count:
        return "0"
    shown = ", ".join(map(str, quarantine["sequences"][:MAX_SEQUENCES_SHOWN]))
    more = count - MAX_SEQUENCES_SHOWN
    extra = f" and {more} more" if more > 0 else ""
    return f"{count} (seq {shown}{extra}; llm-replay export --quarantined shows them)"
