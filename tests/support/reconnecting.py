"""A plugin on a nats-server a test stops and starts: connected as `llm-es serve` connects
(reconnecting without limit), with a client that reconnects too."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import Config
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.connection import connect
from projections.runner import build_view_runner


@dataclasses.dataclass
class Running:
    server: EmbeddedNatsServer
    plugin: Plugin
    client: NATS


@contextlib.asynccontextmanager
async def running_plugin(data_dir: pathlib.Path, config: Config) -> AsyncIterator[Running]:
    """nats-server, a plugin connected the way `llm-es serve` connects (reconnecting
    without limit), and a client that reconnects too."""
    server = EmbeddedNatsServer(data_dir, port=0)
    await server.start()
    plugin_nc = await connect(config.nats, server.url, "llm-es-outage-test")
    plugin = Plugin(config, plugin_nc, view_runner_factory=build_view_runner)
    client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await plugin.start()
        yield Running(server, plugin, client)
    finally:
        await plugin.stop()
        await plugin_nc.close()
        await client.close()
        await server.stop()
