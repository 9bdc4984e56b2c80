"""`rosey.event.llm.*` derived from the log: every event type, usage thresholds, one active
publisher across instances, handover without duplicates or gaps, crash takeover, republish."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es import headers
from llm_es.app import Plugin
from llm_es.config import Config, RateLimitsConfig
from llm_es.domain.events import (
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.domain.observations import ObservationFold, fold_window_start
from llm_es.embedded import EmbeddedNatsServer
from llm_es.service import observation_source
from llm_es.service.event_publisher import EventPublisher
from llm_es.store.log import EventStore
from tests.integration.conftest import PluginStarter
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import (
    command,
    log_events,
    make_config,
    start_plugin,
    stop_plugin,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

LEASE_TTL = 2.0
NO_LIMITS = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)
PUBLISHED_TYPES = (
    TurnCompleted,
    TurnFailed,
    TurnRejected,
    MemoryAdded,
    MemoryRecalled,
    MemoryForgotten,
    ContextSummarized,
)
"""Log events that each produce exactly one event (besides usage thresholds)."""


@pytest.fixture
def start(start: PluginStarter) -> PluginStarter:
    """Plugins without their own event publisher: these tests run the publishers themselves.

    The plugin's views create the shared leases bucket first, so its TTL (the bucket's
    max_age) is the plugin's `instance_ttl_seconds`: set to the publishers' TTL.
    """

    async def _start(config: Config | None = None, **kwargs: Any) -> Plugin:
        if config is None:
            kwargs.setdefault("instance_ttl_seconds", LEASE_TTL)
            return await start(publish_events=False, **kwargs)
        service = dataclasses.replace(
            config.service, publish_events=False, instance_ttl_seconds=LEASE_TTL
        )
        return await start(dataclasses.replace(config, service=service))

    return _start


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Published(NamedTuple):
    """One message received on `rosey.event.llm.>`."""

    kind: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def seq(self) -> int:
        return int(self.headers[headers.LLM_SEQ])


class Received:
    """Everything published on `rosey.event.llm.>`, in arrival order."""

    def __init__(self) -> None:
        self.events: list[Published] = []

    async def take(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[1]
        self.events.append(Published(kind, orjson.loads(msg.data), dict(msg.headers or {})))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event.body for event in self.events if event.kind == kind]

    def headers_of(self, kind: str) -> list[dict[str, str]]:
        return [event.headers for event in self.events if event.kind == kind]

    def seqs(self, *, excluding: str = "usage_threshold") -> collections.Counter[int]:
        return collections.Counter(event.seq for event in self.events if event.kind != excluding)

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.of(kind)) >= count, within=10.0)
        return self.of(kind)


@pytest.fixture
async def received(client: NATS) -> AsyncIterator[Received]:
    box = Received()
    sub = await client.subscribe("rosey.event.llm.>", cb=box.take)
    await client.flush()
    try:
        yield box
    finally:
        await sub.unsubscribe()


PublisherFactory = Callable[..., Awaitable[EventPublisher]]


async def connect_publisher(
    url: str, plugin: Plugin, name: str, **kwargs: Any
) -> tuple[EventPublisher, NATS]:
    """A publisher named `name` on its own connection, as a separate instance would be."""
    nc = await nats.connect(url, max_reconnect_attempts=2)
    js = nc.jetstream()
    publisher = EventPublisher(
        nc,
        js,
        EventStore(nc, js),
        plugin.config,
        instance_id=name,
        lease_ttl_seconds=LEASE_TTL,
        **kwargs,
    )
    return publisher, nc


@pytest.fixture(params=["own-consumer", "views-feed"])
async def publishers(
    request: pytest.FixtureRequest, nats_server: EmbeddedNatsServer, start: PluginStarter
) -> AsyncIterator[PublisherFactory]:
    """Start publishers, each on its own connection as a separate instance would be.

    Every test runs twice: publishers reading the log with their own consumer,
    and publishers taking the events the plugin's views fold (as in `llm-es serve`).
    """
    running: list[tuple[EventPublisher, NATS]] = []
    from_views = request.param == "views-feed"

    async def _start(
        plugin: Plugin, name: str, *, lead: bool = True, **kwargs: Any
    ) -> EventPublisher:
        feed = plugin.views if from_views else None
        publisher, nc = await connect_publisher(nats_server.url, plugin, name, feed=feed, **kwargs)
        running.append((publisher, nc))
        await publisher.start()
        if lead:
            await wait_until(lambda: publisher.is_leader, within=10.0)
        return publisher

    try:
        yield _start
    finally:
        for publisher, nc in reversed(running):
            await publisher.stop()
            if not nc.is_closed:
                await nc.drain()


async def log_seq(client: NATS) -> int:
    events = await log_events(client)
    return events[-1][0] if events else 0


async def caught_up(publisher: EventPublisher, client: NATS) -> None:
    """Wait until the publisher has published everything in the log now."""
    end = await log_seq(client)
    await wait_until(lambda: publisher.position >= end, within=10.0)


def expected_seqs(log: list[tuple[int, Event]]) -> collections.Counter[int]:
    return collections.Counter(seq for seq, e in log if isinstance(e, PUBLISHED_TYPES))


def away_from_a_minute_boundary() -> float:
    """Seconds to wait so that the next few seconds stay inside one clock minute."""
    into_minute = time.time() % 60
    return 60.5 - into_minute if into_minute > 55 else 0.0


# ---------------------------------------------------------------- event types


async def test_chat_turn_publishes_a_response_event(
    plugin: Plugin, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """A completed turn gives one `response` with exactly the seed's fields, figures from
    the log; the turn, model, log sequence and time travel as headers."""
    await publishers(plugin, "solo")
    assert (await command(client, "Hello there", channel="lobby", user="alice"))["success"]
    (response,) = await received.wait_for("response")
    log = await log_events(client)
    spent = next(e for _, e in log if isinstance(e, TokensSpent))
    seq, completed = next((s, e) for s, e in log if isinstance(e, TurnCompleted))
    assert isinstance(completed, TurnCompleted)
    assert response == {
        "channel": "lobby",
        "user": "alice",
        "prompt_length": len("Hello there"),
        "response_length": len("Hello from the fake model."),
        "tokens_used": spent.prompt_tokens + spent.completion_tokens,
        "provider": "ollama",
        "latency_ms": round(completed.latency_ms),
        "persona": "default",
    }
    assert type(response["latency_ms"]) is int
    (found,) = received.headers_of("response")
    assert found == {
        headers.MSG_ID: completed.id,
        headers.LLM_SEQ: str(seq),
        headers.LLM_TIMESTAMP: iso(completed.at),
        headers.LLM_TURN_ID: completed.turn_id,
        headers.LLM_MODEL: completed.model,
    }
    assert found[headers.LLM_TIMESTAMP].endswith("Z")
    assert received.of("error") == []


async def test_failed_turn_publishes_an_error_event(
    plugin: Plugin,
    publishers: PublisherFactory,
    client: NATS,
    received: Received,
    fake_llm: FakeLLMServer,
) -> None:
    """A provider failure gives one `error` with the recorded error text and type."""
    await publishers(plugin, "solo")
    fake_llm.fail_status = 400
    assert not (await command(client, "break it", user="bob"))["success"]
    (error,) = await received.wait_for("error")
    seq, failed = next((s, e) for s, e in await log_events(client) if isinstance(e, TurnFailed))
    assert isinstance(failed, TurnFailed)
    assert error == {
        "channel": "lobby",
        "user": "bob",
        "error": failed.error,
        "provider": "ollama",
        "error_type": "bad_request",
    }
    assert received.headers_of("error") == [
        {
            headers.MSG_ID: failed.id,
            headers.LLM_SEQ: str(seq),
            headers.LLM_TIMESTAMP: iso(failed.at),
            headers.LLM_TURN_ID: failed.turn_id,
        }
    ]
    assert received.of("response") == []


async def test_rejected_turn_publishes_an_error_event(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """A rate-limit refusal gives an `error` whose type is the rejection reason."""
    plugin = await start(rate_limits=RateLimitsConfig(requests_per_minute=1))
    await publishers(plugin, "solo")
    assert (await command(client, "one", user="carol"))["success"]
    refused = await command(client, "two", user="carol")
    assert not refused["success"]
    (error,) = await received.wait_for("error")
    seq, rejected = next((s, e) for s, e in await log_events(client) if isinstance(e, TurnRejected))
    assert isinstance(rejected, TurnRejected)
    assert error == {
        "channel": "lobby",
        "user": "carol",
        "error": refused["error"],
        "provider": "ollama",
        "error_type": "rate_limit",
    }
    (found,) = received.headers_of("error")
    assert (found[headers.LLM_TURN_ID], found[headers.LLM_TIMESTAMP], found[headers.LLM_SEQ]) == (
        rejected.turn_id,
        iso(rejected.at),
        str(seq),
    )


async def test_memory_commands_publish_memory_events(
    plugin: Plugin, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """remember, recall and forget each give one `memory` event counting the memories."""
    await publishers(plugin, "solo")
    remembered = await command(client, "remember The sky is blue", user="dana")
    memory_id = remembered["result"]["memory_id"]
    assert (await command(client, "recall sky", user="erik"))["result"]["count"] == 1
    assert (await command(client, f"forget {memory_id}", user="dana"))["success"]
    added, recalled, forgotten = await received.wait_for("memory", 3)
    log = await log_events(client)
    times = {type(e): (s, iso(e.at)) for s, e in log}
    assert added == {"channel": "lobby", "action": "add", "user_id": "dana", "memory_count": 1}
    assert recalled == {
        "channel": "lobby",
        "action": "recall",
        "user_id": "erik",
        "memory_count": 1,
    }
    assert forgotten == {
        "channel": "lobby",
        "action": "forget",
        "user_id": "dana",
        "memory_count": 1,
    }
    found = received.headers_of("memory")
    assert [(h[headers.LLM_SEQ], h[headers.LLM_TIMESTAMP]) for h in found] == [
        (str(times[kind][0]), times[kind][1])
        for kind in (MemoryAdded, MemoryRecalled, MemoryForgotten)
    ]
    assert all(headers.LLM_TURN_ID not in h for h in found)


async def test_summary_publishes_a_summarized_event(
    start: PluginStarter,
    publishers: PublisherFactory,
    client: NATS,
    received: Received,
    fake_llm: FakeLLMServer,
) -> None:
    """A channel summary gives one `summarized` event with its size and message count."""
    plugin = await start(max_context_messages=2, summarize_after_messages=4)
    await publishers(plugin, "solo")
    for text in ("I own a cat called Tom", "I like tea", "What a day"):
        assert (await command(client, text))["success"]
    (summarized,) = await received.wait_for("summarized")
    seq, summary = next(
        (s, e) for s, e in await log_events(client) if isinstance(e, ContextSummarized)
    )
    assert isinstance(summary, ContextSummarized)
    assert summarized == {
        "channel": "lobby",
        "message_count": 4,
        "summary_length": len(summary.summary),
    }
    (found,) = received.headers_of("summarized")
    assert (found[headers.LLM_SEQ], found[headers.LLM_TIMESTAMP]) == (str(seq), iso(summary.at))


# ---------------------------------------------------------------- usage thresholds


async def test_request_thresholds_fire_once_per_window_at_80_percent(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """With 5 requests a minute, hour and day, the 4th request crosses 80% of each limit:
    one event per limit, none for the 5th, none for other users."""
    limits = RateLimitsConfig(
        requests_per_minute=5, requests_per_hour=5, requests_per_day=5, tokens_per_day=None
    )
    plugin = await start(rate_limits=limits)
    await publishers(plugin, "solo")
    await asyncio.sleep(away_from_a_minute_boundary())
    for n in range(5):
        assert (await command(client, f"turn {n}", user="fay"))["success"]
    assert (await command(client, "someone else", user="gil"))["success"]
    await received.wait_for("response", 6)
    admitted = [(s, e) for s, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    fourth_seq, fourth = admitted[3]
    thresholds = received.of("usage_threshold")
    assert [t["threshold_type"] for t in thresholds] == ["minute", "hour", "day"]
    for threshold in thresholds:
        assert threshold == {
            "user": "fay",
            "channel": "lobby",
            "threshold_type": threshold["threshold_type"],
            "current": 4,
            "limit": 5,
            "percentage": 0.8,
        }
        assert isinstance(threshold["percentage"], float)
    found = received.headers_of("usage_threshold")
    for kind, threshold_headers in zip(("minute", "hour", "day"), found, strict=True):
        assert threshold_headers[headers.MSG_ID] == f"{fourth.id}:{kind}"
        assert threshold_headers[headers.LLM_SEQ] == str(fourth_seq)
        assert threshold_headers[headers.LLM_TURN_ID] == fourth.turn_id
        assert threshold_headers[headers.LLM_TIMESTAMP] == iso(fourth.at)
    assert found[2][headers.LLM_WINDOW_START] == iso(fourth.at)[:10] + "T00:00:00Z"


async def test_token_threshold_fires_once_a_day(
    start: PluginStarter,
    publishers: PublisherFactory,
    client: NATS,
    received: Received,
    fake_llm: FakeLLMServer,
) -> None:
    """Tokens spent today crossing 80% of `tokens_per_day` give one `tokens` event."""
    fake_llm.usage = (200, 100)
    plugin = await start(rate_limits=RateLimitsConfig(tokens_per_day=1000), max_tokens=100)
    await publishers(plugin, "solo")
    outcomes = [await command(client, f"turn {n}", user="hal") for n in range(4)]
    assert [o["success"] for o in outcomes] == [True, True, True, False]
    await received.wait_for("error")
    (threshold,) = received.of("usage_threshold")
    spent = [(s, e) for s, e in await log_events(client) if isinstance(e, TokensSpent)]
    third_seq, third = spent[2]
    assert threshold["threshold_type"] == "tokens"
    assert (threshold["current"], threshold["limit"], threshold["percentage"]) == (900, 1000, 0.9)
    assert threshold["user"] == "hal"
    (found,) = received.headers_of("usage_threshold")
    assert (found[headers.LLM_SEQ], found[headers.LLM_TURN_ID]) == (str(third_seq), third.turn_id)


# ---------------------------------------------------------------- one publisher at a time


async def traffic(
    client: NATS, rounds: int, tag: str, *, until: asyncio.Event | None = None
) -> int:
    """Chats and memory commands from a few users (every kind of published event but
    summaries): `rounds` of them, or fewer once `until` is set. Returns the rounds run."""
    for n in range(rounds):
        if until is not None and until.is_set():
            return n
        user = f"user{n % 3}"
        await command(client, f"{tag} chat {n}", channel=f"ch{n % 2}", user=user)
        if n % 4 == 0:
            await command(client, f"remember {tag} fact {n}", channel=f"ch{n % 2}", user=user)
            await command(client, f"recall {tag}", channel=f"ch{n % 2}", user=user)
    return rounds


async def test_two_publishers_one_publishes_and_hands_over_cleanly(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """Of two publishers only the lease holder publishes; when it stops in the middle of
    traffic the other continues from its position: every log event is published exactly once."""
    plugin = await start(rate_limits=NO_LIMITS)
    first = await publishers(plugin, "first")
    second = await publishers(plugin, "second", lead=False)
    await traffic(client, 6, "before")
    await caught_up(first, client)
    assert not second.is_leader
    assert second.position == 0

    enough = asyncio.Event()
    background = asyncio.create_task(traffic(client, 2000, "during", until=enough))
    await wait_until(lambda: len(received.of("response")) >= 12)
    await first.stop()
    stopped_at = first.position
    assert await second.stored_position() == stopped_at
    await wait_until(lambda: second.is_leader, within=10.0)
    enough.set()
    assert not background.done(), "the traffic ran across the handover"
    await background
    await traffic(client, 4, "after")
    await caught_up(second, client)

    log = await log_events(client)
    expected = expected_seqs(log)
    await wait_until(lambda: sum(received.seqs().values()) >= sum(expected.values()))
    assert received.seqs() == expected  # each exactly once: no duplicate, no gap
    assert any(seq > stopped_at for seq in expected), "the second publisher published too"
    assert any(seq <= stopped_at for seq in expected), "the first publisher published too"


async def test_crashed_publisher_is_replaced_after_the_lease_ttl(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """A publisher that dies without handing over loses its lease after the TTL; the standby
    continues from the last stored position: nothing is lost, and only events after that
    position can be published twice."""
    plugin = await start(rate_limits=NO_LIMITS)
    first = await publishers(plugin, "first")
    second = await publishers(plugin, "second", lead=False)
    await traffic(client, 4, "before")
    enough = asyncio.Event()
    background = asyncio.create_task(traffic(client, 2000, "during", until=enough))
    await wait_until(lambda: len(received.of("response")) >= 8)
    await first._nc.close()  # the process dies: no position write, no lease release
    stored_at_crash = await second.stored_position()
    await wait_until(lambda: second.is_leader, within=LEASE_TTL * 5)
    enough.set()
    assert not background.done(), "the traffic ran across the takeover"
    await background
    await caught_up(second, client)

    expected = expected_seqs(await log_events(client))
    await wait_until(lambda: set(received.seqs()) >= set(expected))
    got = received.seqs()
    assert set(got) == set(expected)  # nothing lost
    repeated = [seq for seq, count in got.items() if count > 1]
    assert all(seq > stored_at_crash for seq in repeated)


async def test_restarted_publisher_continues_from_its_stored_position(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """Events appended while no publisher ran are published by the next one to start."""
    plugin = await start(rate_limits=NO_LIMITS)
    first = await publishers(plugin, "first")
    await traffic(client, 3, "one")
    await caught_up(first, client)
    await first.stop()
    await traffic(client, 3, "gap")
    second = await publishers(plugin, "second")
    await caught_up(second, client)
    expected = expected_seqs(await log_events(client))
    await wait_until(lambda: sum(received.seqs().values()) >= sum(expected.values()))
    assert received.seqs() == expected


async def test_first_start_begins_at_the_end_of_the_log(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """With no stored position, history is not replayed as events: only what comes next."""
    plugin = await start(rate_limits=NO_LIMITS)
    await traffic(client, 2, "old")
    publisher = await publishers(plugin, "late")
    end = await log_seq(client)
    assert publisher.position == end
    await command(client, "new chat")
    (response,) = await received.wait_for("response")
    assert response["prompt_length"] == len("new chat")
    assert all(event.seq > end for event in received.events)


# ---------------------------------------------------------------- the views' feed


async def test_a_publisher_that_falls_behind_the_views_feed_reads_the_log_instead(
    start: PluginStarter,
    nats_server: EmbeddedNatsServer,
    client: NATS,
    received: Received,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no room to buffer the views' events (every event overflows the feed), the
    publisher keeps reading the log instead: every event is published exactly once."""
    monkeypatch.setattr(observation_source, "FEED_BUFFER", 0)
    plugin = await start(rate_limits=NO_LIMITS)
    assert plugin.views is not None
    publisher, nc = await connect_publisher(
        nats_server.url, plugin, "behind", from_beginning=True, feed=plugin.views
    )
    await publisher.start()
    try:
        await traffic(client, 8, "burst")
        await caught_up(publisher, client)
        expected = expected_seqs(await log_events(client))
        await wait_until(lambda: sum(received.seqs().values()) >= sum(expected.values()))
        assert received.seqs() == expected
    finally:
        await publisher.stop()
        await nc.drain()


async def test_plugin_publishes_every_event_once_across_a_blue_green_switch(
    nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer, client: NATS, received: Received
) -> None:
    """`llm-es serve`'s publisher follows the views; a rebuild folds a new bucket from the
    log's start beside the live one and swaps: no event is published twice or lost."""
    config = make_config(fake_llm.base_url, rate_limits=NO_LIMITS)
    assert config.service.publish_events
    plugin, nc = await start_plugin(nats_server.url, config)
    try:
        await command(client, "first", channel="ch0", user="user0")
        # From the beginning of the log on: the plugin's publisher published this event.
        await received.wait_for("response")
        await traffic(client, 4, "before")
        rebuilt = await run_script(
            console_script("llm-replay"), "rebuild", "--nats-url", nats_server.url
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        await wait_until(lambda: plugin.views is not None and plugin.views.bucket != "llm_data")
        await traffic(client, 4, "after")
        expected = expected_seqs(await log_events(client))
        await wait_until(lambda: sum(received.seqs().values()) >= sum(expected.values()))
        await asyncio.sleep(0.2)  # room for a duplicate to show up
        assert received.seqs() == expected
    finally:
        await stop_plugin(plugin, nc)


# ---------------------------------------------------------------- re-derivation


async def test_republish_from_a_position_derives_the_same_events(
    start: PluginStarter, publishers: PublisherFactory, client: NATS, received: Received
) -> None:
    """`republish(from_seq)` publishes again exactly what was published for those log events,
    thresholds included (the fold before `from_seq` is replayed without publishing)."""
    plugin = await start(rate_limits=RateLimitsConfig(requests_per_minute=5, tokens_per_day=None))
    publisher = await publishers(plugin, "solo")
    await asyncio.sleep(away_from_a_minute_boundary())
    for n in range(5):
        assert (await command(client, f"turn {n}", user="ivy"))["success"]
    assert (await command(client, "remember ivy likes tea", user="ivy"))["success"]
    await caught_up(publisher, client)
    admitted = [s for s, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    from_seq = admitted[2]  # before the threshold, which needs the two earlier admissions
    await wait_until(lambda: len(received.of("memory")) == 1)
    original = [event for event in received.events if event.seq >= from_seq]
    assert [event.kind for event in original].count("usage_threshold") == 1
    received.events.clear()

    count = await publisher.republish(from_seq)
    assert count == len(original)
    await wait_until(lambda: len(received.events) >= count)
    assert received.events == original
    assert await publisher.republish(from_seq, from_seq - 1) == 0


# ---------------------------------------------------------------- the fold, at chosen times
# Pure (no I/O): the windows depend on event times, which live tests cannot choose.

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def admitted(at: datetime, user: str = "kim", turn: str = "t") -> TurnAdmitted:
    return TurnAdmitted(
        at=at,
        turn_id=f"{turn}-{at.timestamp()}",
        channel="lobby",
        user=user,
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message="hi",
        reserved_tokens=10,
        max_tokens=10,
    )


def thresholds_of(fold: ObservationFold, events: list[Event]) -> list[dict[str, Any]]:
    """Each threshold's body with its window start, time and log sequence from the headers."""
    found = []
    for seq, event in enumerate(events, start=1):
        found += [
            {
                **o.body,
                "window_start": o.headers[headers.LLM_WINDOW_START],
                "timestamp": o.headers[headers.LLM_TIMESTAMP],
                "seq": int(o.headers[headers.LLM_SEQ]),
            }
            for o in fold.apply(seq, event)
            if o.subject.endswith("threshold")
        ]
    return found


def test_a_user_staying_above_80_percent_is_reported_once_per_clock_minute() -> None:
    """The sliding count decides the crossing; the clock minute it falls in is the window:
    staying busy gives one event per minute, not one per request."""
    limits = RateLimitsConfig(
        requests_per_minute=5, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
    )
    seconds = [0, 10, 20, 30, 40, 50, 70, 80, 90, 100, 130]
    found = thresholds_of(
        ObservationFold(limits), [admitted(T0 + timedelta(seconds=s)) for s in seconds]
    )
    assert [(t["current"], t["window_start"], t["timestamp"]) for t in found] == [
        (4, "2025-03-01T12:00:00Z", "2025-03-01T12:00:30Z"),
        (5, "2025-03-01T12:01:00Z", "2025-03-01T12:01:10Z"),
        (4, "2025-03-01T12:02:00Z", "2025-03-01T12:02:10Z"),
    ]


def test_day_thresholds_reset_at_utc_midnight_and_never_go_back() -> None:
    """Day counts restart at 00:00 UTC; an event stamped the day before by a slower clock,
    arriving after the new day began, counts into the new day (as the usage view does)."""
    limits = RateLimitsConfig(
        requests_per_minute=None, requests_per_hour=None, requests_per_day=5, tokens_per_day=None
    )
    evening = datetime(2025, 3, 1, 23, 0, tzinfo=UTC)
    morning = datetime(2025, 3, 2, 1, 0, tzinfo=UTC)
    events: list[Event] = [admitted(evening + timedelta(minutes=n)) for n in range(4)]
    events += [admitted(morning + timedelta(minutes=n)) for n in range(3)]
    events.append(admitted(datetime(2025, 3, 1, 23, 59, tzinfo=UTC)))  # late, slow clock
    found = thresholds_of(ObservationFold(limits), events)
    assert [(t["window_start"], t["current"], t["seq"]) for t in found] == [
        ("2025-03-01T00:00:00Z", 4, 4),
        ("2025-03-02T00:00:00Z", 4, 8),
    ]


def test_a_fold_from_the_window_start_gives_the_same_events_as_a_full_fold() -> None:
    """What a new publisher derives after position P, folding only from
    `fold_window_start(at of P)`, equals what a fold of the whole log derives."""
    limits = RateLimitsConfig(
        requests_per_minute=3, requests_per_hour=8, requests_per_day=20, tokens_per_day=500
    )
    rng = random.Random(7)
    events: list[Event] = []
    moment = T0
    for n in range(600):
        moment += timedelta(seconds=rng.choice([1, 5, 20, 90, 600, 3000]))
        user = rng.choice(["ann", "ben", "cat"])
        turn = admitted(moment, user=user, turn=str(n))
        events.append(turn)
        events.append(
            TokensSpent(
                at=moment,
                turn_id=turn.turn_id,
                channel="lobby",
                user=user,
                purpose="chat",
                provider="ollama",
                model="llama3.2",
                prompt_tokens=rng.randint(1, 40),
                completion_tokens=rng.randint(1, 40),
                estimated=False,
            )
        )
    full = ObservationFold(limits)
    derived = [(seq, o.body) for seq, e in enumerate(events, 1) for o in full.apply(seq, e)]
    assert sum(1 for _, body in derived if body.get("threshold_type")) > 20
    for position in (50, 333, 700, 1111):
        start = fold_window_start(events[position - 1].at)
        first = next(i for i, e in enumerate(events, 1) if e.at >= start)
        partial = ObservationFold(limits)
        again = [
            (seq, o.body)
            for seq, e in enumerate(events, 1)
            if seq >= first
            for o in partial.apply(seq, e)
        ]
        assert [d for d in again if d[0] > position] == [d for d in derived if d[0] > position]
