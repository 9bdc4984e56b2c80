"""The `--fast-reader`: a connection whose pull-loop messages skip nats-py's `Msg` machinery.

nats-py turns every delivered message into a `Msg` (control line matched
against one regex per protocol operation, headers parsed, reply decoded,
queued, awaited by a callback task): 8.5-10 µs of CPU a message on the
reference machine. `BulkClient` keeps nats-py for everything but the
messages of its bulk subscriptions: `BulkParser` splits their `HMSG` lines
by hand and hands them, as bytes, straight to a plain function (3.5-4 µs a
message). `replay.pull` drives the same pull loop on either connection.

Both lean on nats-py internals (`Client._process_msg`, `Client._subs`, the
parser's state fields), so `BulkClient` refuses a nats-py outside
`TESTED_NATS_PY`, the versions its tests ran on (a unit test feeds its
parser split buffers; integration tests compare it with the default reader).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

from replay.errors import UsageError

BulkHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""(subject, reply, payload, raw headers) of one delivered message."""

TESTED_NATS_PY = ("2.16.",)
"""Version prefixes of nats-py whose internals `BulkClient` was tested on (pin the same)."""
MAX_OPERATIONS = 10**9
"""Bound of the parsing loop: more protocol operations than one read can hold."""


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
        for _ in range(MAX_OPERATIONS):
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

    def bulk_forget(self, sub: Subscription) -> None:
        """Stop handing `sub`'s messages to its handler (before unsubscribing it)."""
        for sid, known in list(self._subs.items()):
            if known is sub:
                self._bulk.pop(sid, None)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # `headers` is None (not b"") for a message without headers, whatever the hint says.
        handler = self._bulk.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        handler(subject, reply, data, headers)
