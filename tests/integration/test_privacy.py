"""Privacy and abuse caps through NATS: secrets scrubbed from provider errors, caps that
refuse before anything is appended, names that could not fit the server's control line."""

from __future__ import annotations

import re

import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import NatsConfig, RateLimitsConfig
from llm_es.domain.events import TurnFailed, TurnRejected
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.connection import INITIAL_CONNECT_ATTEMPTS, connect
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, raw_request

KEY_ECHO = "Invalid key sk-or-...55aa; header was Bearer sk-or-v1-abcdef0123456789 (api_key=zz99)"


async def test_a_provider_error_echoing_a_key_is_scrubbed_everywhere(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A provider's error text that echoes a key fragment or a bearer token reaches neither the
    reply nor `TurnFailed`: the key-shaped parts are `***`, the rest of the reason stays."""
    fake_llm.raw_answer = orjson.dumps({"error": KEY_ECHO})
    answer = await command(client, "hello")
    expected = "Ollama error: Invalid key ***; header was Bearer *** (api_key=***)"
    assert answer == {"success": False, "error": expected}
    failed = [e for _, e in await log_events(client) if isinstance(e, TurnFailed)]
    assert [e.error for e in failed] == [expected]
    for text in ("55aa", "abcdef0123456789", "zz99"):
        assert text not in str(answer)
        assert text not in repr(failed)


async def test_a_flood_of_refusals_is_recorded_once_per_user_and_window(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """30 requests over a 2/minute limit: every one is answered with the seed's text, one
    `TurnRejected` is appended for the minute window, the others are counted, not appended;
    another user's refusal is recorded for them."""
    plugin = await start(rate_limits=RateLimitsConfig(2, None, None, None))
    for n in range(2):
        assert (await command(client, f"m{n}"))["success"]
    before = len(await log_events(client))
    refused = [await command(client, f"flood {n}") for n in range(30)]
    assert all(
        re.fullmatch(r"Rate limit: 2 requests/minute \(resets in \d+s\)", a["error"])
        for a in refused
    )
    appended = [e for _, e in await log_events(client)][before:]
    assert [type(e).__name__ for e in appended] == ["TurnRejected"]
    assert isinstance(appended[0], TurnRejected)
    assert (appended[0].window, appended[0].limit) == ("minute", 2)
    assert plugin.service is not None
    stats = plugin.service.admission_stats()
    assert (stats["rejected"], stats["refusals_unrecorded"]) == (30, 29)
    for n in range(3):
        await command(client, f"bob {n}", user="bob")
    rejected = [e for _, e in await log_events(client) if isinstance(e, TurnRejected)]
    assert [e.user for e in rejected] == ["alice", "bob"]
    assert len(fake_llm.chat_requests) == 4


async def test_memory_caps_refuse_before_appending(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Past `max_memories_per_channel` or `max_memory_length`, `remember` (command and
    service) is refused with a clear error and appends nothing; forgetting makes room."""
    await start(max_memories_per_channel=2, max_memory_length=40)
    ids = []
    for fact in ("first fact", "second fact"):
        answer = await command(client, f"remember {fact}")
        ids.append(answer["result"]["memory_id"])
    before = await log_events(client)
    full = "Memory limit reached: this channel keeps at most 2 memories; forget one first"
    assert await command(client, "remember third fact") == {"success": False, "error": full}
    body = orjson.dumps({"channel": "lobby", "content": "third fact"})
    answer = await raw_request(client, "rosey.llm.memory.add", body)
    assert (answer["success"], answer["error"]) == (False, full)
    too_long = "Memory too long: 41 characters (limit 40)"
    other = await command(client, f"remember {'x' * 41}", channel="other")
    assert other == {"success": False, "error": too_long}
    assert await log_events(client) == before
    assert (await command(client, f"forget {ids[0]}"))["success"]
    assert (await command(client, "remember third fact"))["success"]
    assert (await command(client, "remember a fact elsewhere", channel="other"))["success"]


HUGE_NAME = "\U0001f600" * 400  # 400 characters, 4,800 once encoded
TOO_LONG = "Field '{}' is too long for a NATS subject: 4800 characters once encoded (limit 1536)"


async def test_a_name_too_long_for_a_subject_is_refused_and_the_plugin_stays_connected(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """With `max_name_length` raised past what a subject can hold, a huge channel or user name
    gets a clear error before anything is published; the plugin's connection survives (the
    server would close it for a control line over 4,096 bytes) and answers the next one."""
    plugin = await start(max_name_length=5000)
    assert (await command(client, "hello"))["success"]
    before = await log_events(client)
    assert await command(client, "hi", user=HUGE_NAME) == {
        "success": False,
        "error": TOO_LONG.format("user"),
    }
    assert await command(client, "remember x", channel=HUGE_NAME) == {
        "success": False,
        "error": TOO_LONG.format("channel"),
    }
    body = orjson.dumps({"channel": "c", "user": HUGE_NAME, "message": "hi"})
    answer = await raw_request(client, "rosey.llm.chat", body)
    assert (answer["success"], answer["error"]) == (False, TOO_LONG.format("user"))
    long_reply = orjson.dumps({"channel": "c", "user": "u", "args": "help", "reply_to": "r" * 5000})
    await client.publish("rosey.command.chat", long_reply)  # an oversize reply_to is ignored
    assert await log_events(client) == before
    assert plugin.nc.is_connected
    assert (await command(client, "still there?"))["success"]
    assert plugin.nc.is_connected


async def test_serve_reconnects_without_limit(nats_server: EmbeddedNatsServer) -> None:
    """The connection `serve` makes keeps reconnecting for as long as the process lives; a
    terminal command's gives up after a few attempts."""
    nc = await connect(NatsConfig(), nats_server.url)
    try:
        assert nc.options["max_reconnect_attempts"] == -1
    finally:
        await nc.close()
    nc = await connect(NatsConfig(), nats_server.url, keep_reconnecting=False)
    try:
        assert nc.options["max_reconnect_attempts"] == INITIAL_CONNECT_ATTEMPTS
    finally:
        await nc.close()
