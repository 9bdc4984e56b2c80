"""Stopping a plugin: what it releases even when the stop is cut short."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.embedded import EmbeddedNatsServer
from llm_es.providers import HTTPProvider, build_provider
from projections.runner import build_view_runner
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, make_config, wait_until

ANSWER_DELAY_SECONDS = 30.0
"""Longer than the stop is given: the turn is still waiting for it when the stop is cut."""


async def test_a_stop_cut_short_still_closes_the_provider_connections(
    nats_server: EmbeddedNatsServer, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A stop cancelled while an in-flight turn drains (a supervisor's kill timeout, a
    test harness giving up) still closes the provider's HTTP pools, so no socket to the
    provider is left open; the views and the rest are stopped as far as it got."""
    config = make_config(fake_llm.base_url, timeout=ANSWER_DELAY_SECONDS * 2)
    provider = build_provider("ollama", config)
    assert isinstance(provider, HTTPProvider)
    nc = await nats.connect(nats_server.url)
    plugin = Plugin(
        config, nc, providers={"ollama": provider}, view_runner_factory=build_view_runner
    )
    await plugin.start()
    fake_llm.delay = ANSWER_DELAY_SECONDS
    turn = asyncio.create_task(command(client, "a question that will not be answered"))
    try:
        await wait_until(lambda: len(fake_llm.chat_requests) == 1, within=10)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await plugin.stop()
        assert provider.is_closed
    finally:
        turn.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.Error):
            await turn
        await nc.close()
