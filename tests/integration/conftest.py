"""Fixtures: store dir -> nats-server -> client; fake LLM; a running plugin."""

from __future__ import annotations

import gc
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import Config
from llm_es.embedded import EmbeddedNatsServer
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import make_config, start_plugin, stop_plugin


@pytest.fixture(autouse=True)
def _collect_cycles_after_each_test() -> Iterator[None]:
    """A socket or transport left open inside a reference cycle warns (an error, with
    `filterwarnings = error`) in the teardown of the test that left it, not at the end
    of the session where no one can tell which test it was."""
    yield
    gc.collect()


@pytest.fixture
async def nats_server(tmp_path: pathlib.Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    server = FakeLLMServer(reply="Hello from the fake model.")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


PluginStarter = Callable[..., Awaitable[Plugin]]


@pytest.fixture
async def start(
    nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer
) -> AsyncIterator[PluginStarter]:
    """Start plugin instances (stopped at teardown); kwargs go to `make_config`."""
    running: list[tuple[Plugin, NATS]] = []

    async def _start(config: Config | None = None, **kwargs: Any) -> Plugin:
        plugin, nc = await start_plugin(
            nats_server.url, config or make_config(fake_llm.base_url, **kwargs)
        )
        running.append((plugin, nc))
        return plugin

    try:
        yield _start
    finally:
        for plugin, nc in reversed(running):
            await stop_plugin(plugin, nc)


@pytest.fixture
async def plugin(start: PluginStarter) -> Plugin:
    return await start()
