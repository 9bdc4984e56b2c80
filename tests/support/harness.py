"""Test harness: a real nats-server, a real fake-LLM HTTP server, and plugin instances.

Everything runs on 127.0.0.1 with OS-picked ports and temp directories. The
plugin is driven only through NATS, the way the bot and other plugins use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import (
    Config,
    HttpConfig,
    OllamaConfig,
    ProvidersConfig,
    RateLimitsConfig,
    ServiceConfig,
)
from llm_es.domain.events import Event
from llm_es.local_access import ACCESS_FILE
from llm_es.store.codec import decode_event
from llm_es.store.keyring import KeyRing
from llm_es.store.kv import read_bucket
from llm_es.store.log import STREAM_NAME
from projections.runner import build_view_runner

REQUEST_TIMEOUT = 10.0


def make_config(
    ollama_url: str,
    *,
    rate_limits: RateLimitsConfig | None = None,
    timeout: float = 10.0,
    **service: Any,
) -> Config:
    """A config pointing the Ollama provider at the fake server, with no HTTP listener."""
    return Config(
        service=dataclasses.replace(ServiceConfig(), **service),
        providers=ProvidersConfig(
            ollama=OllamaConfig(base_url=ollama_url, timeout=timeout, default_model="llama3.2")
        ),
        rate_limits=rate_limits or RateLimitsConfig(),
        http=HttpConfig(listen=None),
    )


async def start_plugin(url: str, config: Config) -> tuple[Plugin, NATS]:
    """A plugin instance on its own connection (as a separate process would have)."""
    nc = await nats.connect(url, max_reconnect_attempts=2)
    plugin = Plugin(config, nc, view_runner_factory=build_view_runner)
    await plugin.start()
    return plugin, nc


async def stop_plugin(plugin: Plugin, nc: NATS) -> None:
    await plugin.stop()
    await nc.drain()


async def command(
    client: NATS,
    args: str,
    *,
    channel: str = "lobby",
    user: str = "alice",
    subject: str = "rosey.command.chat",
) -> dict[str, Any]:
    """Send a `!chat` command the way the bot relays it and return the reply."""
    payload = {"channel": channel, "user": user, "args": args}
    reply = await client.request(subject, orjson.dumps(payload), timeout=REQUEST_TIMEOUT)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer


async def raw_request(client: NATS, subject: str, data: bytes) -> dict[str, Any]:
    reply = await client.request(subject, data, timeout=REQUEST_TIMEOUT)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer


async def log_events(
    client: NATS, subject: str = "llm.ev.>", *, sealed: bool = False
) -> list[tuple[int, Event]]:
    """Every event in the log (in order) read with a fresh ordered consumer, its personal
    text opened as readers show it (`[erased]` once destroyed); `sealed`: as stored."""
    js = client.jetstream()
    keyring = KeyRing(js)
    info = await js.stream_info(STREAM_NAME)
    last = info.state.last_seq
    found: list[tuple[int, Event]] = []
    if last == 0:
        return found
    sub = await js.subscribe(subject, stream=STREAM_NAME, ordered_consumer=True)
    try:
        for _ in range(last):
            msg = await sub.next_msg(timeout=5)
            meta = msg.metadata
            event = decode_event(msg.data)
            found.append(
                (meta.sequence.stream, event if sealed else await keyring.open_event(event))
            )
            if meta.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def event_types(client: NATS) -> list[str]:
    return [e.TYPE for _, e in await log_events(client)]


async def wait_persisted(client: NATS) -> None:
    """Wait until every projection checkpoint in KV has reached the log's end.

    Views are written to KV a few milliseconds after they are folded (the
    runner batches writes off the request path), so KV checks wait for this.
    """
    js = client.jetstream()
    last = (await js.stream_info(STREAM_NAME)).state.last_seq

    async def persisted() -> bool:
        stored = await read_bucket(js, "llm_data")
        checkpoints = [
            orjson.loads(stored.get(f"checkpoint.{name}", b'{"seq": 0}'))["seq"]
            for name in ("context", "memories", "settings", "usage")
        ]
        return min(checkpoints) >= last

    await wait_until(persisted, within=10.0, interval=0.01)


async def stored_view(client: NATS, key: str) -> dict[str, Any] | None:
    """One view as KV bucket `llm_data` holds it once the runner has written the log's end."""
    await wait_persisted(client)
    stored = await read_bucket(client.jetstream(), "llm_data")
    raw = stored.get(key)
    if not raw:
        return None
    view: dict[str, Any] = orjson.loads(raw)
    return view


async def bucket_snapshot(client: NATS) -> dict[str, Any]:
    """Every view key and value in KV bucket `llm_data` (checkpoints excluded)."""
    stored = await read_bucket(client.jetstream(), "llm_data")
    return {k: orjson.loads(v) for k, v in stored.items() if not k.startswith("checkpoint.")}


def stored_access(data_dir: pathlib.Path) -> dict[str, Any]:
    """The embedded server's plugin credentials `llm-es serve` keeps in its data dir."""
    access: dict[str, Any] = orjson.loads((data_dir / ACCESS_FILE).read_bytes())
    return access


async def operator_client(data_dir: pathlib.Path) -> NATS:
    """A connection to `llm-es serve`'s embedded server as its plugin user (the log and
    the views need it), from the credentials file in the data dir."""
    access = stored_access(data_dir)
    return await nats.connect(
        access["url"],
        user=access["user"],
        password=access["password"],
        inbox_prefix=access["inbox_prefix"],
        max_reconnect_attempts=2,
    )


async def wait_until(predicate: Any, *, within: float = 10.0, interval: float = 0.02) -> None:
    """Poll an async or sync predicate until it holds (bounded)."""
    async with asyncio.timeout(within):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


async def aiter_events(client: NATS) -> AsyncIterator[Event]:
    for _, event in await log_events(client):
        yield event
