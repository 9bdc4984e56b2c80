"""The log's reader, and reading in a child process (`replay.prefetch`), on a real server.

The pull loop (`replay.pull`) must yield exactly the selected events and ask
the server for no more than a slow caller takes. The child connects by
itself from a `ConnectRecipe`, so these tests run real child processes
against the test server: the batches and the rebuilt views must be exactly
those of the in-process reader, failures in the child must surface as
LogUnavailable, and no child may outlive its reader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from llm_es.config import Config, parse_config
from llm_es.domain.events import (
    ContextReset,
    Event,
    MemoryAdded,
    MemoryForgotten,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
)
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.codec import encode_event
from llm_es.store.kv import read_bucket
from llm_es.store.log import EventStore
from projections.buckets import read_active_views
from replay import EventLog, LogSelection, LogUnavailable, reading, run_rebuild, run_verify
from replay.connecting import ConnectRecipe
from replay.prefetch import read_in_child
from replay.pull import PULL_SIZE, PULLS_AHEAD
from replay.reading import RawEvent, event_filter
from tests.support.harness import wait_until

pytestmark = pytest.mark.timeout(120)

CHANNELS = ("a", "b", "c")
USERS = ("alice", "bob", "carol")
GARBAGE = b"\xffnot an llm-es event"
TYPES_OF_B = ("TurnAdmitted", "TokensSpent")
READ_WITHIN_SECONDS = 60.0
"""Bound on any one read in these tests: a child's start, its connect and the read."""


def history(turns: int, *, reply: str = "Hello from the model.") -> list[Event]:
    """Turns in three channels by three users (admission, spend, end, as the plugin
    writes them), with memories added and forgotten, persona switches and context resets
    among them."""
    events: list[Event] = []
    for number in range(turns):
        channel = CHANNELS[number % len(CHANNELS)]
        user = USERS[(number // len(CHANNELS)) % len(USERS)]
        turn = {"turn_id": f"{number:032x}", "channel": channel, "user": user}
        events += [
            TurnAdmitted(
                **turn,
                source="command",
                persona="default",
                provider="ollama",
                model="llama3.2",
                message=f"question {number}",
                reserved_tokens=500,
                max_tokens=400,
            ),
            TokensSpent(
                **turn,
                purpose="chat",
                provider="ollama",
                model="llama3.2",
                prompt_tokens=20 + number % 7,
                completion_tokens=10 + number % 5,
                estimated=False,
            ),
            TurnCompleted(
                **turn,
                content=f"{reply} ({number})",
                provider="ollama",
                model="llama3.2",
                latency_ms=12.5,
                finish_reason="stop",
            ),
        ]
        if number % 10 == 0:
            events.append(
                MemoryAdded(
                    memory_id=f"{number:08x}",
                    channel=channel,
                    user_id=user,
                    content=f"fact {number}",
                    category="fact",
                    importance=3,
                )
            )
        if number % 20 == 10:
            events.append(
                MemoryForgotten(channel=channel, user=user, memory_id=f"{number - 10:08x}")
            )
        if number % 25 == 0:
            events.append(PersonaSwitched(channel=channel, user=user, persona="technical"))
        if number % 40 == 39:
            events.append(ContextReset(channel=channel, user=user))
    return events


async def write_log(client: NATS, events: list[Event], *, garbage_at: int) -> int:
    """Append the events, with one unreadable message before `events[garbage_at]`;
    returns the log's last sequence. Every other event carries a `Nats-Msg-Id` header,
    as the plugin's do: the server delivers those as `HMSG`, the others as `MSG`."""
    store = EventStore(client, client.jetstream())
    await store.ensure_stream()
    for index, event in enumerate(events):
        if index == garbage_at:
            await client.publish(store.subject_for(event), GARBAGE)
        headers = {"Nats-Msg-Id": f"event-{index}"} if index % 2 else None
        await client.publish(store.subject_for(event), encode_event(event), headers=headers)
    await client.flush()
    total = len(events) + 1
    js = client.jetstream()

    async def stored() -> bool:
        return (await js.stream_info(store.stream)).state.last_seq >= total

    await wait_until(stored, within=30)
    return total


async def read_here(
    log: EventLog, selection: LogSelection, batch_size: int
) -> list[list[RawEvent]]:
    async with asyncio.timeout(READ_WITHIN_SECONDS):
        async with aclosing(log.read(selection, batch_size=batch_size)) as batches:
            return [batch async for batch in batches]


async def read_there(
    recipe: ConnectRecipe, selection: LogSelection, batch_size: int
) -> list[list[RawEvent]]:
    read = read_in_child(recipe, selection, batch_size=batch_size, idle_timeout=10.0)
    async with asyncio.timeout(READ_WITHIN_SECONDS), aclosing(read) as batches:
        return [batch async for batch in batches]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def readers() -> list[multiprocessing.process.BaseProcess]:
    """This process's running log reader children (`active_children` also reaps finished ones)."""
    return [c for c in multiprocessing.active_children() if c.name == "llm-replay-reader"]


async def views_in(client: NATS, bucket: str) -> dict[str, Any]:
    stored = await read_bucket(client.jetstream(), bucket)
    return {key: orjson.loads(raw) for key, raw in stored.items()}


@pytest.fixture
async def replay_nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[NATS]:
    """The replay tools' own connection."""
    nc = NATS()
    await nc.connect(nats_server.url, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def recipe(nats_server: EmbeddedNatsServer) -> ConnectRecipe:
    return ConnectRecipe(nats_url=nats_server.url)


@pytest.fixture
def config() -> Config:
    return parse_config({})


# ------------------------------------------------------------------ the same events


async def test_the_reader_yields_exactly_the_selected_events(client: NATS, replay_nc: NATS) -> None:
    """Over a mixed log with an unreadable message (events with and without headers), the
    whole log comes in order; a bounded range, a channel's types from a sequence, a start
    time, a type nothing matches and an empty range yield exactly their part of it."""
    end = await write_log(client, history(150), garbage_at=200)
    log = EventLog(replay_nc)
    everything = [event for batch in await read_here(log, LogSelection(), 64) for event in batch]
    assert [seq for seq, *_ in everything] == list(range(1, end + 1))
    assert GARBAGE in [data for _, _, data, _ in everything]

    def of_channel_b(seq: int, subject: str) -> bool:
        kind = subject.rsplit(".", 1)[1]
        return seq >= 40 and subject.startswith("llm.ev.b.") and kind in TYPES_OF_B

    cases = [
        (LogSelection(from_seq=7, to_seq=end - 5), lambda seq, _: 7 <= seq <= end - 5),
        (
            dataclasses.replace(event_filter(channel="b", types=TYPES_OF_B), from_seq=40),
            of_channel_b,
        ),
        (LogSelection(start_time=datetime.now(UTC) - timedelta(hours=1)), lambda *_: True),
        (event_filter(types=["TurnFailed"]), lambda *_: False),
        (LogSelection(from_seq=20, to_seq=19), lambda *_: False),
    ]
    for selection, wanted in cases:
        expected = [event for event in everything if wanted(event[0], event[1])]
        got = [event for batch in await read_here(log, selection, 64) for event in batch]
        assert got == expected, selection


async def test_a_slow_caller_holds_the_server_back_and_loses_nothing(
    client: NATS, replay_nc: NATS
) -> None:
    """While the caller sits on its first batch, the server has delivered no more than
    the loop asked for (`PULLS_AHEAD` requests), however long the log; then every event
    comes, in order. (An ordered push consumer with a callback takes in the whole log
    meanwhile, and past nats-py's pending limits drops messages silently.)"""
    end = await write_log(client, history(3000), garbage_at=10)
    assert end > 2 * PULL_SIZE * PULLS_AHEAD
    read = EventLog(replay_nc).read(LogSelection(), batch_size=50)
    async with asyncio.timeout(READ_WITHIN_SECONDS), aclosing(read) as batches:
        seqs = [seq for seq, *_ in await anext(batches)]
        await asyncio.sleep(0.5)
        [consumer] = await client.jetstream().consumers_info("LLM_EVENTS")
        assert consumer.delivered is not None
        assert consumer.delivered.consumer_seq <= PULL_SIZE * PULLS_AHEAD
        seqs += [seq async for batch in batches for seq, *_ in batch]
    assert seqs == list(range(1, end + 1))


async def test_the_child_yields_the_batches_this_process_reads(
    client: NATS, replay_nc: NATS, recipe: ConnectRecipe
) -> None:
    """Over a mixed log with an unreadable message, up to a `to_seq` bound, with and
    without a subject filter, the child yields exactly `EventLog.read`'s batches:
    the same sequences, subjects and stored bytes, batch for batch."""
    end = await write_log(client, history(150), garbage_at=200)
    log = EventLog(replay_nc)
    bounded = LogSelection(to_seq=end - 5)

    here = await read_here(log, bounded, 64)
    there = await read_there(recipe, bounded, 64)

    assert there == here
    events = [event for batch in there for event in batch]
    assert [seq for seq, *_ in events] == list(range(1, end - 4))
    assert GARBAGE in [data for _, _, data, _ in events]
    assert all(isinstance(subject, str) for _, subject, *_ in events)
    assert len(there) > 5

    filtered = dataclasses.replace(
        event_filter(channel="b", types=["TurnAdmitted", "TokensSpent"]),
        from_seq=40,
        to_seq=end - 40,
    )
    here = await read_here(log, filtered, 32)
    there = await read_there(recipe, filtered, 32)
    assert there == here
    assert {subject.rsplit(".", 1)[1] for batch in there for _, subject, *_ in batch} == {
        "TurnAdmitted",
        "TokensSpent",
    }


async def test_a_rebuild_through_the_child_equals_one_in_this_process(
    monkeypatch: pytest.MonkeyPatch,
    client: NATS,
    replay_nc: NATS,
    recipe: ConnectRecipe,
    config: Config,
) -> None:
    """With the child reader forced on (tiny thresholds, so the first events are read here
    and the rest in the child), rebuild writes the same views, counts and skips the same
    unreadable event, and verify through the child finds them equal."""
    end = await write_log(client, history(200), garbage_at=300)
    in_process = await run_rebuild(EventLog(replay_nc), config)
    monkeypatch.setattr(reading, "CHILD_READER_MIN_EVENTS", 1)
    monkeypatch.setattr(reading, "CHILD_START_EVENTS", 150)
    child_log = EventLog(replay_nc, recipe=recipe)
    assert reading.reads_in_child(LogSelection(to_seq=end))

    in_child = await run_rebuild(child_log, config)

    assert (in_child.log_end, in_child.events, in_child.skipped) == (
        in_process.log_end,
        in_process.events,
        in_process.skipped,
    )
    assert in_child.skipped == 1
    assert in_child.skips == in_process.skips
    assert in_child.skips[0][0] == 301
    assert in_child.keys == in_process.keys
    assert await views_in(client, in_child.bucket) == await views_in(client, in_process.bucket)
    verified = await run_verify(child_log, config)
    assert verified.ok
    assert verified.skipped == 1


# ------------------------------------------------------------------ failures and stopping


async def test_a_child_that_cannot_read_raises_log_unavailable_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
    nats_server: EmbeddedNatsServer,
    client: NATS,
    config: Config,
) -> None:
    """No server at the recipe's URL, or no log on the server: the child's reason comes
    back as LogUnavailable within the bound, and no child is left behind. A rebuild
    whose child cannot connect fails the same way and switches nothing."""
    unreachable = ConnectRecipe(nats_url=f"nats://127.0.0.1:{closed_port()}")
    with pytest.raises(LogUnavailable, match=r"cannot connect to NATS at nats://127\.0\.0\.1:"):
        await read_there(unreachable, LogSelection(to_seq=10), 100)
    assert readers() == []

    with pytest.raises(LogUnavailable, match="LLM_EVENTS"):
        await read_there(ConnectRecipe(nats_url=nats_server.url), LogSelection(to_seq=10), 100)
    assert readers() == []

    await write_log(client, history(20), garbage_at=5)
    monkeypatch.setattr(reading, "CHILD_READER_MIN_EVENTS", 1)
    with pytest.raises(LogUnavailable, match="cannot connect to NATS"):
        async with asyncio.timeout(READ_WITHIN_SECONDS):
            await run_rebuild(EventLog(client, recipe=unreachable), config)
    assert readers() == []
    assert (await read_active_views(client.jetstream())).bucket == "llm_data"
    with pytest.raises(BucketNotFoundError):
        await client.jetstream().key_value("llm_data_2")


async def test_closing_the_reader_early_stops_the_child(
    client: NATS, recipe: ConnectRecipe
) -> None:
    """A caller that stops after the first batch, while the child still has most of the
    log to send, leaves no child running: it is terminated and reaped."""
    # About 5 MB of events: more than the pipe and the child's read-ahead can hold.
    end = await write_log(client, history(800, reply="x" * 2000), garbage_at=10)
    read = read_in_child(recipe, LogSelection(to_seq=end), batch_size=50, idle_timeout=10.0)

    async with asyncio.timeout(READ_WITHIN_SECONDS), aclosing(read) as batches:
        first = await anext(batches)
        [child] = readers()
        assert child.is_alive()
    assert [seq for seq, *_ in first] == list(range(1, 51))

    assert readers() == []
    assert child.exitcode == -signal.SIGTERM


async def test_cancelling_the_reading_task_stops_the_child(
    client: NATS, recipe: ConnectRecipe
) -> None:
    """A reading task cancelled while it holds a batch (as Ctrl-C cancels llm-replay)
    stops and reaps the child before the cancellation completes."""
    end = await write_log(client, history(800, reply="x" * 2000), garbage_at=10)
    got_one = asyncio.Event()

    async def consume() -> None:
        read = read_in_child(recipe, LogSelection(to_seq=end), batch_size=50, idle_timeout=10.0)
        async with aclosing(read) as batches:
            async for _ in batches:
                got_one.set()
                await asyncio.Event().wait()  # a caller busy with its batch

    task = asyncio.create_task(consume())
    async with asyncio.timeout(READ_WITHIN_SECONDS):
        await got_one.wait()
    [child] = readers()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert readers() == []
    assert child.exitcode == -signal.SIGTERM
