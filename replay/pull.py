"""The `--fast-reader`: a hand-rolled pull loop on nats-py internals, 2-2.5x cheaper to read.

Off by default: the replay tools read with nats-py's ordered consumer
(`replay.reading`), public API only. nats-py turns every delivered message
into a `Msg` (control line matched against one regex per protocol operation,
headers parsed, reply decoded, queued, awaited by a callback task): 8.5-10 µs
of CPU a message on the reference machine. `BulkClient` keeps nats-py for
everything but the messages of its bulk subscriptions: `BulkParser` splits
their `HMSG` lines by hand and hands them, as bytes, straight to a plain
function (3.5-4 µs a message). `pull_batches` drives an ephemeral pull
consumer with `$JS.API.CONSUMER.MSG.NEXT` requests kept ahead of the reader
(nats-py's own `fetch()` costs about 32 µs a message).

Both lean on nats-py internals (`Client._process_msg`, `Client._subs`, the
parser's state fields), so `BulkClient` refuses a nats-py outside
`TESTED_NATS_PY`, the versions its tests ran on (the unit tests feed its
parser split buffers; the integration tests compare it with the ordered
consumer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from importlib import metadata

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

from replay.errors import LogUnavailable, UsageError

BulkHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""(subject, reply, payload, raw headers) of one delivered message."""

TESTED_NATS_PY = ("2.16.",)
"""Version prefixes of nats-py whose internals `BulkClient` was tested on (pin the same)."""

PULL_SIZE = 2000
"""Messages asked for by one MSG.NEXT request."""
PULLS_AHEAD = 2
"""Requests kept outstanding, so the server always has demand while the caller works."""
READY_BATCHES = 8
"""Batches read ahead of the caller before the loop stops asking (backpressure)."""
PULL_EXPIRES_SECONDS = 30.0
CONSUMER_INACTIVE_SECONDS = 60.0
MAX_ROUNDS = 10**9
_PENDING_HEADER = b"Nats-Pending-Messages:"


class BulkParser(Parser):
    """nats-py's protocol parser with a fast path for `HMSG` (every JetStream delivery).

    The library matches each control line against one regex per protocol
    operation in turn (a delivery fails the `MSG` one first) and routes every
    message through `Client._process_msg`. Here an `HMSG` line is split by
    hand, and a message of a bulk subscription goes straight to its handler;
    everything else (other operations, other subscriptions) is the library's.
    """

    def __init__(self, nc: BulkClient) -> None:
        super().__init__(nc)
        self._handlers = nc._bulk

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        handlers = self._handlers
        for _ in range(MAX_ROUNDS):
            if not buf:
                return
            if self.state == AWAITING_MSG_PAYLOAD:
                needed = self.needed
                if len(buf) < needed + CRLF_SIZE:
                    return
                arg = self.msg_arg
                header_size = self.header_needed
                if header_size > 0:
                    headers: bytes | None = bytes(buf[:header_size])
                    payload = bytes(buf[header_size:needed])
                    self.header_needed = 0
                else:
                    headers = None
                    payload = bytes(buf[:needed])
                del buf[: needed + CRLF_SIZE]
                self.state = AWAITING_CONTROL_LINE
                sid = arg["sid"]
                handler = handlers.get(sid)
                if handler is None:
                    await self.nc._process_msg(sid, arg["subject"], arg["reply"], payload, headers)
                else:
                    handler(arg["subject"], arg["reply"], payload, headers)
                continue
            if buf[:5] != b"HMSG ":
                await super().parse()
                return
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_CONTROL_LINE_SIZE:
                    await super().parse()
                return
            parts = bytes(buf[5:end]).split(b" ")
            if len(parts) == 5:
                subject, sid_text, reply, header_size_text, size_text = parts
            elif len(parts) == 4:
                subject, sid_text, header_size_text, size_text = parts
                reply = b""
            else:
                await super().parse()  # an unusual line: the library's regexes
                return
            self.msg_arg = {"subject": subject, "sid": int(sid_text), "reply": reply}
            self.header_needed = int(header_size_text)
            self.needed = int(size_text)
            del buf[: end + CRLF_SIZE]
            self.state = AWAITING_MSG_PAYLOAD


class BulkClient(Client):
    """A nats-py client whose bulk subscriptions skip the per-message `Msg` machinery."""

    def __init__(self) -> None:
        installed = metadata.version("nats-py")
        if not installed.startswith(TESTED_NATS_PY):
            raise UsageError(
                f"--fast-reader relies on nats-py internals and was tested with nats-py "
                f"{' and '.join(version + 'x' for version in TESTED_NATS_PY)}, not {installed}: "
                "run without it"
            )
        super().__init__()
        self._bulk: dict[int, BulkHandler] = {}
        self._ps = BulkParser(self)

    async def bulk_subscribe(self, subject: str, handler: BulkHandler) -> Subscription:
        """Subscribe `subject`; each message goes to `handler`, synchronously, in order."""
        sub = await self.subscribe(subject)
        for sid, known in self._subs.items():
            if known is sub:
                self._bulk[sid] = handler
        return sub

    async def bulk_unsubscribe(self, sub: Subscription) -> None:
        for sid, known in list(self._subs.items()):
            if known is sub:
                self._bulk.pop(sid, None)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # `headers` is None (not b"") for a message without headers, whatever the hint says.
        handler = self._bulk.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        handler(subject, reply, data, headers)


def _position(reply: bytes) -> tuple[int, int]:
    """Stream sequence and pending count from a delivery's `$JS.ACK...` reply subject."""
    if reply.count(b".") == 8:
        # The common form, `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`:
        # split off only the tokens wanted (this runs once per event).
        _, seq, _, _, pending = reply.rsplit(b".", 4)
        return int(seq), int(pending)
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[10])
    raise LogUnavailable(f"not a JetStream delivery: {reply!r}")


class _PullState:
    """What the message handler and the reading loop share."""

    def __init__(self, to_seq: int | None, types: frozenset[str], batch_size: int) -> None:
        self.to_seq = to_seq
        self.types = frozenset(t.encode() for t in types)
        self.batch_size = batch_size
        self.ready: collections.deque[list[tuple[int, str, bytes]]] = collections.deque()
        self.current: list[tuple[int, str, bytes]] = []
        self.requested = 0
        self.received = 0
        self.last_seq = 0
        self.finished = False
        self.error: str | None = None
        self.wake = asyncio.Event()

    def on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if self.finished:
            return
        if not data or not reply.startswith(b"$JS.ACK."):
            self._on_status(headers or b"")
            return
        self.received += 1
        seq, pending = _position(reply)
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        to_seq = self.to_seq
        if to_seq is not None and seq > to_seq:
            self._finish()
            return
        if not self.types or subject[subject.rfind(b".") + 1 :] in self.types:
            self.current.append((seq, subject.decode(), data))
        if pending == 0 or (to_seq is not None and seq >= to_seq):
            self._finish()
        elif len(self.current) >= self.batch_size:
            self.ready.append(self.current)
            self.current = []
            self.wake.set()

    def _on_status(self, headers: bytes) -> None:
        status = headers[9:12]
        if status in (b"404", b"408"):
            # A request ended short (expired, or nothing left for now): what it did
            # not deliver is no longer on its way.
            index = headers.find(_PENDING_HEADER)
            if index >= 0:
                line_end = headers.find(b"\r\n", index)
                undelivered = int(headers[index + len(_PENDING_HEADER) : line_end].strip())
                self.requested = max(self.received, self.requested - undelivered)
            else:
                self.requested = self.received
            self.wake.set()
        elif status == b"409":
            self.error = headers.decode("utf-8", "replace").strip()
            self.wake.set()
        # 100 (heartbeats) and anything else need no action.

    def _finish(self) -> None:
        if self.current:
            self.ready.append(self.current)
            self.current = []
        self.finished = True
        self.wake.set()


async def pull_batches(
    nc: BulkClient,
    js: JetStreamContext,
    stream: str,
    *,
    subject: str,
    types: frozenset[str] = frozenset(),
    from_seq: int = 1,
    to_seq: int | None = None,
    start_time: datetime | None = None,
    batch_size: int = 1000,
    idle_timeout: float = 15.0,
) -> AsyncGenerator[list[tuple[int, str, bytes]], None]:
    """Yield `(seq, subject, data)` batches of the stream's events on `subject`, in order."""
    if to_seq is not None and to_seq < from_seq:
        return
    config = api.ConsumerConfig(
        name=f"llm-replay-{uuid.uuid4().hex[:12]}",
        ack_policy=api.AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=CONSUMER_INACTIVE_SECONDS,
        mem_storage=True,
        num_replicas=1,
        max_waiting=PULLS_AHEAD * 4,
    )
    if start_time is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = start_time
    elif from_seq > 1:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = from_seq
    else:
        config.deliver_policy = api.DeliverPolicy.ALL
    try:
        info = await js.add_consumer(stream, config)
    except nats.errors.Error as exc:
        raise LogUnavailable(f"cannot read stream {stream}: {exc}") from exc
    consumer = info.name
    if not info.num_pending:
        await _delete(js, stream, consumer)
        return
    state = _PullState(to_seq, types, batch_size)
    inbox = nc.new_inbox()
    sub = await nc.bulk_subscribe(inbox, state.on_message)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    request = orjson.dumps({"batch": PULL_SIZE, "expires": int(PULL_EXPIRES_SECONDS * 1e9)})
    try:
        for _ in range(MAX_ROUNDS):
            while state.ready:
                yield state.ready.popleft()
            if state.finished:
                return
            if state.error is not None:
                raise LogUnavailable(f"the event log's consumer failed: {state.error}")
            in_flight = state.requested - state.received
            if in_flight < PULL_SIZE * PULLS_AHEAD and len(state.ready) < READY_BATCHES:
                await nc.publish(next_subject, request, reply=inbox)
                state.requested += PULL_SIZE
                continue
            state.wake.clear()
            if state.ready or state.finished:
                continue
            try:
                async with asyncio.timeout(idle_timeout):
                    await state.wake.wait()
            except TimeoutError:
                raise LogUnavailable(
                    f"the event log stopped answering (nothing for {idle_timeout:g}s after "
                    f"sequence {state.last_seq})"
                ) from None
    finally:
        await nc.bulk_unsubscribe(sub)
        await _delete(js, stream, consumer)


async def _delete(js: JetStreamContext, stream: str, consumer: str) -> None:
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await js.delete_consumer(stream, consumer)
