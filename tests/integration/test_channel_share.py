"""One channel's hung provider calls cannot take the connections every other channel needs:
past `service.max_concurrent_turns_per_channel` a channel's turns are refused at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.domain.events import TurnAdmitted, TurnCompleted
from llm_es.providers.pool import ShardedClient
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer, Messages
from tests.support.harness import log_events, wait_until

HUNG_CALLS = 80  # more than the provider's 64 connections, as in the measurement
BUSY_TEXT = "This channel already has 16 replies in progress; try again when one has finished."


def mentions_hang(messages: Messages) -> bool:
    return any("HANG" in str(message.get("content")) for message in messages)


async def chat(client: NATS, channel: str, user: str, message: str) -> dict[str, Any]:
    payload = {"channel": channel, "user": user, "args": message}
    reply = await client.request("rosey.command.chat", orjson.dumps(payload), timeout=60)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer


@pytest.mark.timeout(120)
async def test_a_channel_with_hung_calls_leaves_connections_for_the_others(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """80 turns in one channel hang at the provider: 16 (the default share) run, the other 64
    are refused at once with the busy text and append nothing; a turn in another channel is
    answered meanwhile, as fast as ever; once the provider answers, the 16 complete."""
    plugin: Plugin = await start(timeout=8.0)
    fake_llm.hold = asyncio.Event()
    fake_llm.hold_if = mentions_hang
    hung = [
        asyncio.create_task(chat(client, "busy", f"user{n}", "HANG on")) for n in range(HUNG_CALLS)
    ]
    try:
        await wait_until(lambda: sum(task.done() for task in hung) == HUNG_CALLS - 16, within=30)
        refused = [task.result() for task in hung if task.done()]
        assert {(r["success"], r["error"]) for r in refused} == {(False, BUSY_TEXT)}
        await wait_until(lambda: fake_llm.chat_count == 16, within=10)
        asked = time.monotonic()
        other = await chat(client, "lobby", "carol", "hello")
        other_seconds = time.monotonic() - asked
        assert other["success"] is True
        assert other["result"]["message"] == "Hello from the fake model."
        print(f"another channel's turn answered in {other_seconds:.2f} s beside 16 hung calls")
    finally:
        fake_llm.hold.set()
    answered = await asyncio.wait_for(asyncio.gather(*hung), 60)
    assert sum(a["success"] is True for a in answered) == 16
    events = [event for _, event in await log_events(client)]
    admitted = [e for e in events if isinstance(e, TurnAdmitted)]
    assert sorted(e.channel or "" for e in admitted) == ["busy"] * 16 + ["lobby"]
    assert sum(isinstance(e, TurnCompleted) for e in events) == 17
    # Nothing for a refusal: every event names one of the 17 admitted turns' users.
    running_users = {e.user for e in admitted}
    assert {getattr(e, "user", None) for e in events} <= {*running_users, None}
    assert len(running_users) == 17
    assert plugin.service is not None
    assert plugin.service.turns.slots.running("busy") == 0


@pytest.mark.timeout(60)
async def test_no_cap_when_the_share_is_null(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """`max_concurrent_turns_per_channel: null` refuses nothing: 20 hung turns all run."""
    await start(max_concurrent_turns_per_channel=None)
    fake_llm.hold = asyncio.Event()
    hung = [asyncio.create_task(chat(client, "busy", f"u{n}", "HANG")) for n in range(20)]
    try:
        await wait_until(lambda: fake_llm.chat_count == 20, within=30)
        assert not any(task.done() for task in hung)
    finally:
        fake_llm.hold.set()
    answered = await asyncio.wait_for(asyncio.gather(*hung), 60)
    assert all(a["success"] is True for a in answered)


@pytest.mark.timeout(60)
async def test_the_provider_pool_is_as_large_as_configured(fake_llm: FakeLLMServer) -> None:
    """A pool of `max_connections: 6` (no multiple of a shard's 4 connections) holds six
    calls at once; a seventh waits for a connection and gives up after its pool timeout
    (which the provider reports as busy), while the six are still held."""
    pool = ShardedClient(
        base_url=fake_llm.base_url, timeout=httpx.Timeout(30.0, pool=0.5), max_connections=6
    )
    fake_llm.hold = asyncio.Event()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}

    async def call() -> httpx.Response:
        with pool.lease() as client:
            return await client.post("/api/chat", json=body)

    held = [asyncio.create_task(call()) for _ in range(6)]
    try:
        await wait_until(lambda: fake_llm.chat_count == 6, within=10)
        with pytest.raises(httpx.PoolTimeout):
            await call()
        assert fake_llm.chat_count == 6
    finally:
        fake_llm.hold.set()
        answers = await asyncio.gather(*held)
        await pool.aclose()
    assert [a.status_code for a in answers] == [200] * 6
