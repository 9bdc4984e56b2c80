"""Reading the event log in order: batches of raw events, filtered by the server.

The server filters by subject (`llm.ev.<channel>.<user>.<EventType>`), so a
user's audit never ships other users' events. Events arrive as `(seq,
subject, stored bytes, append time in ns)` in batches; decoding is the caller's choice, because
an audit does not need every field of every event. A bounded read ends at
the last matching event that existed when it got there (or at `to_seq`),
read by the pull loop of `replay.pull` (which asks the server for no more
than the caller keeps up with); a long one (`read_all`, what rebuild and
verify fold) runs mostly in a child process, on the second core, when the
log knows how to connect again (`replay.prefetch`). Following the log
(`tail`) uses nats-py's ordered push consumer, which re-creates itself after
gaps and server restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from llm_es.domain.tokens import encode_name
from llm_es.domain.turn_order import OpenTurns
from llm_es.store.follow import StoredMessage, follow
from llm_es.store.keyring import KeyRing
from llm_es.store.log import STREAM_NAME, SUBJECT_PREFIX
from replay.connecting import ConnectRecipe
from replay.errors import LogUnavailable
from replay.prefetch import read_in_child
from replay.pull import pull_batches

RawEvent = StoredMessage
"""One stored event: stream sequence, subject, the bytes as appended, the append time (ns
since the epoch), which `llm_es.store.quarantine` checks the event against."""

BATCH_SIZE = 1000
QUEUED_BATCHES = 8
"""Batches read ahead of the caller; beyond that the consumer waits (flow control)."""
IDLE_TIMEOUT_SECONDS = 15.0
JS_TIMEOUT_SECONDS = 10.0
MAX_BATCHES = 10**9
"""Bound of every read loop: more batches than any log holds."""
CHILD_READER_MIN_EVENTS = 150_000
"""The shortest range `read_all` reads in a child process. A child takes about 0.3 s to
start (spawn, imports, connect), then takes the read (about 9 µs of CPU an event on
nats-py's public client) off the folding process, which only receives its frames (about
1 µs). That pays when a core is free for it: on the 2-CPU reference machine, quiet, a
1M-event rebuild took 13.8 s with the child against 20.3 s without; with the cores busy
with other work (load 3.5) it gains nothing at 1M and loses ~15% at 300k."""
CHILD_START_EVENTS = 25_000
"""Events `read_all` reads in this process while its child starts (about 0.3 s of reading)."""


@dataclass(frozen=True, slots=True)
class LogSelection:
    """Which events to read: one subject filter (the server's), optional event types
    (checked here, on the subject's last token), a start (sequence or time) and an end."""

    subject: str = f"{SUBJECT_PREFIX}.>"
    types: frozenset[str] = frozenset()
    from_seq: int = 1
    to_seq: int | None = None
    start_time: datetime | None = None
    new_only: bool = False
    """Only events appended after the read starts (`tail` without a start)."""


def event_filter(
    *,
    channel: str | None = None,
    user: str | None = None,
    types: Sequence[str] = (),
) -> LogSelection:
    """The events of a channel, a user and/or some types (any when not given).

    One server-side filter per consumer: nats-server 2.12+ serves a consumer with
    several filter subjects far slower (about 1k msgs/s on a 300k-event log against
    45k/s for one wildcard filter), so several types share `...<user>.*` and are
    told apart here by their subject's last token.
    """
    channel_token = "*" if channel is None else encode_name(channel)
    user_token = "*" if user is None else encode_name(user)
    wanted = frozenset(types)
    prefix = f"{SUBJECT_PREFIX}.{channel_token}.{user_token}"
    if len(wanted) == 1:
        return LogSelection(subject=f"{prefix}.{next(iter(wanted))}")
    if channel is None and user is None:
        return LogSelection(subject=f"{SUBJECT_PREFIX}.>", types=wanted)
    return LogSelection(subject=f"{prefix}.*", types=wanted)


async def turn_rule_for(log: EventLog, selection: LogSelection) -> OpenTurns | None:
    """The open turns a reader of `selection` follows for the turn rule, or None when the
    selection leaves turn events out by type (the rule needs a turn's events together;
    a channel or a user keeps them so). A read that starts after the log's first event
    does not know the turns open there (`llm_es.domain.turn_order`)."""
    by_type = not selection.subject.endswith((".*", ".>"))
    if by_type or selection.types:
        return None
    return OpenTurns(started_mid_log=await log.starts_mid_log(selection))


def reads_in_child(selection: LogSelection) -> bool:
    """Whether `EventLog.read_all` reads this selection in a child (given a recipe)."""
    if selection.to_seq is None or selection.start_time is not None or selection.new_only:
        return False  # no known length: a short read would pay the start for nothing
    return selection.to_seq - selection.from_seq + 1 >= CHILD_READER_MIN_EVENTS


class EventLog:
    """The event stream as the replay tools read it: its end, and ordered reads of it.

    Bounded reads use the pull loop (`replay.pull`); following the log, nats-py's
    ordered consumer.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str = STREAM_NAME,
        recipe: ConnectRecipe | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=JS_TIMEOUT_SECONDS)
        self.stream = stream
        self.recipe = recipe
        """How a child process connects to the same server (None: every read is in-process)."""
        self.keyring = KeyRing(self.js)
        """Opens the sealed personal text of events and views (`[erased]` once destroyed)."""

    async def end(self) -> int:
        """The log's last sequence; LogUnavailable when there is no log yet."""
        return (await self._state()).last_seq

    async def starts_mid_log(self, selection: LogSelection) -> bool:
        """Whether a read of `selection` starts after the log's first event (a later
        start, or a log whose first events retention removed): it cannot know the turns
        open where it starts (`llm_es.domain.turn_order`)."""
        later = selection.new_only or selection.start_time is not None or selection.from_seq > 1
        return later or (await self._state()).first_seq > 1

    async def _state(self) -> api.StreamState:
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            raise LogUnavailable.no_stream(self.stream) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise LogUnavailable(f"cannot read stream {self.stream}: {type(exc).__name__}") from exc
        return info.state

    async def last_seq_matching(self, subject: str) -> int:
        """The last sequence of any event on the subject filter (0: none)."""
        try:
            msg = await self.js.get_last_msg(self.stream, subject, direct=True)
        except NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise LogUnavailable(f"cannot read stream {self.stream}: {type(exc).__name__}") from exc
        return msg.seq or 0

    def read(
        self,
        selection: LogSelection,
        *,
        follow: bool = False,
        batch_size: int = BATCH_SIZE,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> AsyncGenerator[list[RawEvent], None]:
        """Yield the selected events in stream order, in batches.

        Without `follow` the read ends at the end of the selection (the last
        matching event when it gets there, or `to_seq`): the pull loop of
        `replay.pull`. With it, it waits for new events for as long as the caller
        iterates: nats-py's ordered consumer. Use it under `contextlib.aclosing`,
        so the consumer goes away when the caller stops early.
        """
        if follow:
            return self._follow(selection, batch_size)
        return pull_batches(
            self.nc,
            self.js,
            self.stream,
            selection,
            batch_size=batch_size,
            idle_timeout=idle_timeout,
        )

    def read_all(self, selection: LogSelection) -> AsyncGenerator[list[RawEvent], None]:
        """`read` without `follow`, mostly in a child process when that pays.

        It does with a `recipe`, for a range of `CHILD_READER_MIN_EVENTS` sequences
        or more (`from_seq` to `to_seq`): the first `CHILD_START_EVENTS` are read
        here while the child starts, the rest by the child (`replay.prefetch`).
        The events and their order are `read`'s; only the batch at the hand-over
        may be shorter. Other selections are read in this process.
        """
        if self.recipe is not None and reads_in_child(selection):
            assert selection.to_seq is not None
            split = min(selection.from_seq + CHILD_START_EVENTS, selection.to_seq + 1)
            head = dataclasses.replace(selection, to_seq=split - 1)
            return read_in_child(
                self.recipe,
                dataclasses.replace(selection, from_seq=split),
                stream=self.stream,
                batch_size=BATCH_SIZE,
                idle_timeout=IDLE_TIMEOUT_SECONDS,
                meanwhile=self.read(head),
            )
        return self.read(selection)

    async def _follow(
        self, selection: LogSelection, batch_size: int
    ) -> AsyncGenerator[list[RawEvent], None]:
        to_seq = selection.to_seq
        if to_seq is not None and to_seq < selection.from_seq:
            return
        queue: asyncio.Queue[tuple[list[RawEvent], bool]] = asyncio.Queue(QUEUED_BATCHES)
        batch: list[RawEvent] = []
        types = selection.types

        async def take(seq: int, pending: int, stored_ns: int, msg: Msg) -> None:
            nonlocal batch
            past_end = to_seq is not None and seq > to_seq
            subject = msg.subject
            if not past_end and (not types or subject[subject.rfind(".") + 1 :] in types):
                batch.append((seq, subject, msg.data, stored_ns))
            if past_end or pending == 0 or len(batch) >= batch_size:
                ready, batch = batch, []
                await queue.put((ready, past_end))

        try:
            following = await follow(
                self.js,
                self.stream,
                selection.subject,
                take,
                after=selection.from_seq - 1,
                start_time=selection.start_time,
                new_only=selection.new_only,
            )
        except NotFoundError:
            raise LogUnavailable.no_stream(self.stream) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise LogUnavailable(f"cannot read stream {self.stream}: {exc}") from exc
        try:
            for _ in range(MAX_BATCHES):
                ready, finished = await queue.get()
                if ready:
                    yield ready
                if finished:
                    return
        finally:
            await following.stop()
