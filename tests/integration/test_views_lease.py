"""Single-active view writing across instances: one lease holder writes KV bucket `llm_data`,
every instance folds the log and serves its own reads, and a handover (clean stop or death)
loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import nats
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import Config, RateLimitsConfig
from llm_es.domain.views import BUCKET, context_key
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.lease import LEASE_BUCKET, STANDBY_POLL_SECONDS, KvLease, open_lease
from llm_es.store.log import STREAM_NAME
from projections.base import View
from projections.bucket_views import CHECKPOINT_INTERVAL_SECONDS
from projections.buckets import views_lease_key
from projections.runner import ViewRunner, default_projections
from replay.fold import LogFold
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import (
    bucket_snapshot,
    command,
    log_events,
    make_config,
    start_plugin,
    stop_plugin,
    wait_persisted,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

LEASE_TTL = 2.0
UNLIMITED = RateLimitsConfig(None, None, None, None)
TAKEOVER_WITHIN = LEASE_TTL * 5
"""Bound on a takeover: the lease TTL, a standby's poll, and room for a slow machine."""
VIEWS_STREAM = f"KV_{BUCKET}"
MAX_ROUNDS = 20_000
"""Bound on background traffic, which runs until the takeover (far fewer rounds)."""


def lease_config(fake_llm: FakeLLMServer, name: str) -> Config:
    """An instance named `name` with a short lease TTL (its views create the leases bucket)."""
    return make_config(
        fake_llm.base_url,
        rate_limits=UNLIMITED,
        instance_id=name,
        instance_ttl_seconds=LEASE_TTL,
        publish_events=False,
        summarize_after_messages=None,
    )


def runner(plugin: Plugin) -> ViewRunner:
    return cast(ViewRunner, plugin.views)


class Instances:
    """Plugin instances, each on its own connection as a separate process would be."""

    def __init__(self, url: str, fake_llm: FakeLLMServer) -> None:
        self._url = url
        self._fake_llm = fake_llm
        self.running: dict[str, tuple[Plugin, NATS]] = {}
        self._dead: list[Plugin] = []

    async def start(self, name: str) -> Plugin:
        plugin, nc = await start_plugin(self._url, lease_config(self._fake_llm, name))
        self.running[name] = (plugin, nc)
        return plugin

    async def stop(self, name: str) -> None:
        """A clean stop: the writer flushes and releases its lease."""
        plugin, nc = self.running.pop(name)
        await stop_plugin(plugin, nc)

    async def kill(self, name: str) -> None:
        """The instance's connection drops at once: no flush, no release, no more renewals."""
        plugin, nc = self.running.pop(name)
        self._dead.append(plugin)
        await nc.close()

    async def close(self) -> None:
        for plugin, nc in reversed(self.running.values()):
            await stop_plugin(plugin, nc)
        self.running.clear()
        for plugin in self._dead:
            # Its connection is gone; stopping only ends its tasks (errors are expected).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await plugin.stop()


@pytest.fixture
async def instances(
    nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer
) -> AsyncIterator[Instances]:
    group = Instances(nats_server.url, fake_llm)
    try:
        yield group
    finally:
        await group.close()


def writers(plugins: list[Plugin]) -> list[Plugin]:
    return [p for p in plugins if runner(p).lease_held()]


async def traffic(
    client: NATS,
    rounds: int,
    tag: str,
    *,
    until: asyncio.Event | None = None,
    lossy: bool = False,
) -> int:
    """Chats, memories added and forgotten, persona switches and resets in a few channels:
    `rounds` of them, or fewer once `until` is set. Returns the rounds run.

    `lossy`: a command left unanswered (its instance died holding it) is skipped.
    """
    for n in range(rounds):
        if until is not None and until.is_set():
            return n
        channel, user = f"ch{n % 3}", f"user{n % 2}"
        try:
            chat = await command(client, f"{tag} chat {n}", channel=channel, user=user)
            assert chat["success"], chat
            if n % 3 == 0:
                fact = await command(client, f"remember {tag} fact {n}", channel=channel, user=user)
                if n % 2 == 0:
                    forget = f"forget {fact['result']['memory_id']}"
                    await command(client, forget, channel=channel, user=user)
            if n % 5 == 0:
                await command(client, "persona concise" if n % 2 else "reset", channel=channel)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if not lossy:
                raise
    return rounds


async def folded_from_scratch(client: NATS, config: Config) -> dict[str, View]:
    """Every view value folded from sequence 1 in memory, the way a rebuild would."""
    fold = LogFold(default_projections(config))
    for seq, event in await log_events(client, sealed=True):  # views hold text sealed
        fold.apply(event, seq)
    return fold.values


async def assert_bucket_is_the_whole_log(
    client: NATS, plugin: Plugin, fake_llm: FakeLLMServer
) -> None:
    """KV holds exactly the views of the whole log: equal to a fold from scratch and to
    the writer's own memory. (A late append, e.g. a sweeper closing a dead instance's
    turn, makes it look again: bounded.)"""
    js = client.jetstream()
    for _ in range(5):
        end = (await js.stream_info(STREAM_NAME)).state.last_seq
        await wait_persisted(client)
        stored = await bucket_snapshot(client)
        expected = await folded_from_scratch(client, lease_config(fake_llm, "any"))
        memory = runner(plugin).snapshot()
        if (await js.stream_info(STREAM_NAME)).state.last_seq == end:
            break
    assert stored == expected
    assert memory == expected


async def test_one_instance_writes_and_each_reads_its_own_writes(
    instances: Instances, client: NATS
) -> None:
    """Of two instances exactly one holds the views lease and both know which; a memory
    added through either one is recalled at once through the other."""
    first = await instances.start("first")
    second = await instances.start("second")
    assert writers([first, second]) == [first]
    await wait_until(lambda: runner(second).writer == "first", within=STANDBY_POLL_SECONDS * 5)
    assert runner(first).writer == "first"
    leases = await client.jetstream().key_value(LEASE_BUCKET)
    holder = await leases.get(views_lease_key(BUCKET))
    assert holder.value is not None
    assert b'"first"' in holder.value

    for writer, reader, fact in ((first, second, "bees"), (second, first, "tomatoes")):
        assert writer.service is not None
        assert reader.service is not None
        added = await writer.service.remember(channel="lobby", user="alice", content=fact)
        assert added.success
        found = await reader.service.recall(channel="lobby", user="alice", query=fact)
        assert [m["id"] for m in found.data["memories"]] == [added.data["memory_id"]]

    assert (await command(client, "hello", channel="lobby"))["success"]
    await wait_persisted(client)
    stored = await bucket_snapshot(client)
    assert stored == runner(first).snapshot() == runner(second).snapshot()
    assert writers([first, second]) == [first]


async def take_over_during_traffic(
    client: NATS,
    fake_llm: FakeLLMServer,
    successor: Plugin,
    *,
    hand_over: Callable[[], Awaitable[None]],
    lossy: bool,
) -> None:
    """Run `hand_over` (the writer stops or dies) while commands keep coming, and wait
    until `successor` holds the lease; the traffic must still be running by then."""
    chats = len(fake_llm.chat_requests)
    enough = asyncio.Event()
    background = asyncio.create_task(
        traffic(client, MAX_ROUNDS, "during", until=enough, lossy=lossy)
    )
    try:
        await wait_until(lambda: len(fake_llm.chat_requests) >= chats + 4)
        await hand_over()
        await wait_until(lambda: runner(successor).lease_held(), within=TAKEOVER_WITHIN)
        enough.set()
        assert not background.done(), "the traffic ran across the takeover"
    finally:
        enough.set()
        await background


async def test_a_stopped_writer_hands_over_and_nothing_is_lost(
    instances: Instances, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The writer stops in the middle of traffic: the standby takes the lease, what is
    folded after the handover reaches KV, and the bucket equals a fold of the whole log."""
    first = await instances.start("first")
    second = await instances.start("second")
    assert writers([first, second]) == [first]
    await traffic(client, 6, "before")
    await take_over_during_traffic(
        client, fake_llm, second, hand_over=lambda: instances.stop("first"), lossy=False
    )
    assert runner(second).writer == "second"
    await traffic(client, 4, "after")
    await assert_bucket_is_the_whole_log(client, second, fake_llm)
    stored = await bucket_snapshot(client)
    said = [m["content"] for m in stored[context_key("ch0")]["messages"]]  # sealed in KV
    assert "after chat 3" in [await second.keyring.open_text(m) for m in said]


async def test_a_dead_writer_is_replaced_after_the_lease_ttl(
    instances: Instances, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The writer's connection drops (no flush, no release): the standby takes the lease
    once it expires, writes what the dead writer had not, and the bucket equals a fold of
    the whole log."""
    first = await instances.start("first")
    second = await instances.start("second")
    assert writers([first, second]) == [first]
    await traffic(client, 6, "before")

    async def die() -> None:
        await instances.kill("first")
        assert not runner(second).lease_held()

    await take_over_during_traffic(client, fake_llm, second, hand_over=die, lossy=True)
    await traffic(client, 4, "after")
    await assert_bucket_is_the_whole_log(client, second, fake_llm)


async def renew_forever(lease: KvLease) -> None:
    while True:
        await asyncio.sleep(lease.ttl_seconds / 4)
        await lease.renew()


async def test_a_standby_writes_nothing_until_it_takes_the_lease(
    instances: Instances, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """While someone else holds the views lease, an instance answers every command from its
    own fold but writes nothing to the views bucket; once the lease is free it takes it and
    writes everything it folded."""
    other = await open_lease(client.jetstream(), views_lease_key(BUCKET), "other", LEASE_TTL)
    assert await other.acquire()
    renewing = asyncio.create_task(renew_forever(other))
    try:
        standby = await instances.start("standby")
        assert not runner(standby).lease_held()
        assert runner(standby).writer == "other"
        await traffic(client, 6, "unwritten")
        answer = await command(client, "recall unwritten", channel="ch0", user="user0")
        assert "unwritten fact 3" in answer["result"]["message"]
        # Room for a standby that wrongly writes: a value batch and a checkpoint round.
        await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS + STANDBY_POLL_SECONDS)
        views = await client.jetstream().stream_info(VIEWS_STREAM)
        assert views.state.last_seq == 0
        assert not runner(standby).lease_held()
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
    await other.release()
    await wait_until(lambda: runner(standby).lease_held(), within=TAKEOVER_WITHIN)
    await assert_bucket_is_the_whole_log(client, standby, fake_llm)
