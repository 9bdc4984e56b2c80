"""The log is the truth: restarts, view rebuilds, nats-server restarts, crashes mid-turn."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable

import nats
import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.domain.events import TurnAdmitted, TurnFailed
from llm_es.domain.views import usage_key
from llm_es.embedded import EmbeddedNatsServer
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import (
    bucket_snapshot,
    command,
    log_events,
    make_config,
    start_plugin,
    stop_plugin,
    wait_until,
)


async def mixed_history(client: NATS) -> None:
    """Chats, memories, persona, reset, forget: every kind of change once."""
    await command(client, "Hello there", channel="a")
    await command(client, "How are you?", channel="a")
    await command(client, "persona technical", channel="a")
    fact = await command(client, "remember Alice likes Python", channel="a")
    await command(client, "remember Bob likes Rust", channel="a")
    await command(client, "recall likes", channel="a")
    await command(client, f"forget {fact['result']['memory_id']}", channel="a")
    await command(client, "Other channel", channel="b", user="bob")
    await command(client, "reset", channel="b", user="bob")


async def test_state_survives_a_plugin_restart(
    nats_server: EmbeddedNatsServer, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A new instance continues the channel's context, persona and memories."""
    config = make_config(fake_llm.base_url)
    plugin, nc = await start_plugin(nats_server.url, config)
    await command(client, "My name is Alice")
    await command(client, "persona concise")
    await command(client, "remember Alice owns a cat")
    await stop_plugin(plugin, nc)

    plugin, nc = await start_plugin(nats_server.url, config)
    try:
        await command(client, "What pet do I have? cat?")
        sent = fake_llm.chat_requests[-1].body
        assert sent is not None
        contents = [m["content"] for m in sent["messages"]]
        assert "alice: My name is Alice" in contents
        assert "briefly" in contents[0]
        assert 'fact: "Alice owns a cat"' in contents[1]  # the channel data, after the persona
    finally:
        await stop_plugin(plugin, nc)


async def test_deleting_the_bucket_rebuilds_identical_views(
    nats_server: EmbeddedNatsServer, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Views folded again from sequence 1 equal the ones built live."""
    config = make_config(fake_llm.base_url)
    plugin, nc = await start_plugin(nats_server.url, config)
    await mixed_history(client)
    await stop_plugin(plugin, nc)
    live = await bucket_snapshot(client)
    assert any(k.startswith("memories.") for k in live)

    await client.jetstream().delete_key_value("llm_data")
    plugin, nc = await start_plugin(nats_server.url, config)
    try:
        assert plugin.views is not None
        rebuilt_in_memory = plugin.views.snapshot()  # type: ignore[attr-defined]
    finally:
        await stop_plugin(plugin, nc)
    assert await bucket_snapshot(client) == live
    assert rebuilt_in_memory == live


async def test_nothing_acknowledged_is_lost_across_a_nats_server_restart(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """After nats-server stops and starts again, the plugin reconnects and the log is whole."""
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    await server.start()
    plugin = nc = client = None
    try:
        plugin, nc = await start_plugin(server.url, make_config(fake_llm.base_url))
        client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        assert (await command(client, "before the restart"))["success"]
        await server.stop()
        await server.start()
        await wait_until(lambda: nc.is_connected and client.is_connected, within=20)

        async def chat_works() -> bool:
            try:
                return bool((await command(client, "after the restart"))["success"])
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False

        await wait_until(chat_works, within=30, interval=0.5)
        kinds = [e.TYPE for _, e in await log_events(client)]
        assert kinds[:3] == ["TurnAdmitted", "TokensSpent", "TurnCompleted"]
        assert kinds.count("TurnCompleted") >= 2
        sent = fake_llm.chat_requests[-1].body
        assert sent is not None
        assert "alice: before the restart" in [m["content"] for m in sent["messages"]]
    finally:
        if plugin is not None and nc is not None:
            await stop_plugin(plugin, nc)
        if client is not None:
            await client.close()
        await server.stop()


def llm_es_script() -> str:
    return str(pathlib.Path(sys.executable).parent / "llm-es")


async def kill_9_mid_turn(
    nats_url: str,
    client: NATS,
    fake_llm: FakeLLMServer,
    config_path: pathlib.Path,
    before_kill: Callable[[], Awaitable[object]] | None = None,
) -> TurnAdmitted:
    """Run `llm-es serve`, start a turn the model never answers, SIGKILL the process."""
    fake_llm.hold = asyncio.Event()
    process = await asyncio.create_subprocess_exec(
        llm_es_script(),
        "serve",
        "--nats-url",
        nats_url,
        "--config",
        str(config_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def answers_help() -> bool:
            try:
                return bool((await command(client, "help"))["success"])
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False

        await wait_until(answers_help, within=30, interval=0.2)
        pending = asyncio.ensure_future(command(client, "this turn never ends"))
        async with asyncio.timeout(10):
            await fake_llm.chat_started.wait()
        if before_kill is not None:
            await before_kill()
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    fake_llm.hold.set()
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert len(admitted) == 1
    return admitted[0]


async def assert_closed_as_abandoned(client: NATS, plugin: Plugin, turn: TurnAdmitted) -> None:
    failed = [e for _, e in await log_events(client) if isinstance(e, TurnFailed)]
    assert [(f.turn_id, f.error_type) for f in failed] == [(turn.turn_id, "abandoned")]
    assert plugin.views is not None
    usage = plugin.views.get(usage_key("alice"))
    assert usage is not None
    assert usage["open_turns"] == {}
    assert (await command(client, "a new turn works"))["success"]


def serve_config(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer, **service: object
) -> pathlib.Path:
    path = tmp_path / "config.json"
    path.write_bytes(
        orjson.dumps(
            {
                "providers": {"ollama": {"base_url": fake_llm.base_url}},
                "service": service,
                "http": {"listen": None},
            }
        )
    )
    return path


async def test_kill_9_mid_turn_is_closed_as_abandoned_at_next_start(
    nats_server: EmbeddedNatsServer,
    client: NATS,
    fake_llm: FakeLLMServer,
    tmp_path: pathlib.Path,
    start: PluginStarter,
) -> None:
    """A turn admitted by an instance killed with SIGKILL is failed as `abandoned` as soon as
    that instance (same instance_id) starts again."""
    path = serve_config(tmp_path, fake_llm, instance_id="worker-1")
    turn = await kill_9_mid_turn(nats_server.url, client, fake_llm, path)
    assert turn.instance == "worker-1"
    config = make_config(fake_llm.base_url)
    config = dataclasses.replace(
        config, service=dataclasses.replace(config.service, instance_id="worker-1")
    )
    plugin = await start(config)
    await assert_closed_as_abandoned(client, plugin, turn)


async def test_a_surviving_instance_closes_a_dead_instances_turn(
    nats_server: EmbeddedNatsServer,
    client: NATS,
    fake_llm: FakeLLMServer,
    tmp_path: pathlib.Path,
    start: PluginStarter,
) -> None:
    """Another instance, running all along, closes the turn once the dead one's heartbeat
    expires, so its reservation does not wait for a restart."""
    survivors: list[Plugin] = []

    async def start_survivor() -> None:
        survivors.append(await start(instance_ttl_seconds=3.0))

    path = serve_config(tmp_path, fake_llm, instance_ttl_seconds=1.0)
    turn = await kill_9_mid_turn(nats_server.url, client, fake_llm, path, start_survivor)
    (survivor,) = survivors

    async def closed() -> bool:
        return any(isinstance(e, TurnFailed) for _, e in await log_events(client))

    await wait_until(closed, within=15, interval=0.2)
    await assert_closed_as_abandoned(client, survivor, turn)


async def test_a_live_instances_turn_is_left_alone(
    nats_server: EmbeddedNatsServer, client: NATS, fake_llm: FakeLLMServer, start: PluginStarter
) -> None:
    """A slow turn of a running instance is not closed by another instance's start or sweep."""
    await start(instance_ttl_seconds=3.0)
    fake_llm.hold = asyncio.Event()
    pending = asyncio.ensure_future(command(client, "slow one"))
    async with asyncio.timeout(10):
        await fake_llm.chat_started.wait()
    await start(instance_ttl_seconds=3.0)
    await asyncio.sleep(2.5)  # at least one sweep of each instance
    fake_llm.hold.set()
    answer = await pending
    assert answer["success"] is True
    kinds = [e.TYPE for _, e in await log_events(client)]
    assert "TurnFailed" not in kinds


async def test_unreachable_provider_fails_the_turn_and_releases_the_reservation(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Ollama down: a clear error, TurnFailed recorded, no open reservation left."""
    down_url = fake_llm.base_url
    await fake_llm.stop()
    plugin = await start(make_config(down_url, timeout=2.0))
    answer = await command(client, "anyone there?")
    assert answer["success"] is False
    assert answer["error"] == f"Ollama is not reachable at {down_url}"
    kinds = [e for _, e in await log_events(client)]
    assert [e.TYPE for e in kinds] == ["TurnAdmitted", "TurnFailed"]
    failed = kinds[1]
    assert isinstance(failed, TurnFailed)
    assert failed.error_type == "unavailable"
    assert plugin.views is not None
    usage = plugin.views.get(usage_key("alice"))
    assert usage is not None
    assert usage["open_turns"] == {}


async def test_provider_error_status_and_timeout(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """HTTP 500 and a slow model both end the turn with a clear, recorded error."""
    await start(timeout=0.5)
    fake_llm.fail_status = 500
    broken = await command(client, "break")
    assert broken["success"] is False
    assert broken["error"].startswith("Ollama API error: 500")
    fake_llm.fail_status = None
    fake_llm.delay = 2.0
    slow = await command(client, "slow")
    assert slow["error"] == "Ollama did not answer within 0.5s"
    failed = [e for _, e in await log_events(client) if isinstance(e, TurnFailed)]
    assert [f.error_type for f in failed] == ["provider_error", "timeout"]
