"""The event publisher resumes within seconds after a nats-server restart, not after its TTL.

A lease renewal sent while nats-server is away is buffered by nats-py and stored
once it reconnects, unknown to the holder: its next renewal finds the revision
moved and counts the lease lost. The lease value names the holder, so it takes
its own lease back at once instead of standing by until the lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time

import nats.errors
import orjson
import pytest
from nats.aio.msg import Msg

from llm_es.config import RateLimitsConfig
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import make_config, wait_until
from tests.support.reconnecting import Running, running_plugin

logger = logging.getLogger(__name__)

NO_LIMITS = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)
LEASE_TTL_SECONDS = 15.0
"""The plugin's default `service.instance_ttl_seconds`: the lease TTL a pause would cost."""
OUTAGE_SECONDS = 5.0
"""Longer than a renewal interval (TTL / 4), so a renewal is sent during the outage."""
RESUMED_WITHIN_SECONDS = 5.0
"""A third of the lease TTL: resuming by then means the lease was not waited out."""


async def chat(running: Running, text: str) -> bool:
    body = {"channel": "lobby", "user": "alice", "message": text}
    try:
        reply = await running.client.request("rosey.llm.chat", orjson.dumps(body), timeout=3)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False
    return bool(orjson.loads(reply.data)["success"])


@pytest.mark.timeout(60)
async def test_events_resume_within_seconds_after_a_nats_server_restart(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """One instance publishing; nats-server stopped for 5 s and started again: a chat
    after the restart is published as `response` within 5 s of the restart (a lease
    lost and waited out would take its 15 s TTL)."""
    config = make_config(
        fake_llm.base_url, rate_limits=NO_LIMITS, instance_ttl_seconds=LEASE_TTL_SECONDS
    )
    async with running_plugin(tmp_path / "nats", config) as running:
        published: list[float] = []

        async def on_response(msg: Msg) -> None:
            published.append(time.monotonic())

        await running.client.subscribe("rosey.event.llm.response", cb=on_response)
        assert await chat(running, "before")
        await wait_until(lambda: len(published) == 1, within=10)

        await running.server.stop()
        await asyncio.sleep(OUTAGE_SECONDS)
        await running.server.start()
        restarted_at = time.monotonic()
        await wait_until(lambda: running.plugin.nc.is_connected, within=10)
        # Bounded: each round is one chat (3 s at most) and a short wait.
        async with asyncio.timeout(30):
            for _ in range(100):
                if await chat(running, "after") and len(published) > 1:
                    break
                await asyncio.sleep(0.5)
            await wait_until(lambda: len(published) > 1, within=20)
        resumed = published[1] - restarted_at
        logger.warning("publisher_resumed_after_restart seconds=%.2f", resumed)
        assert resumed < RESUMED_WITHIN_SECONDS
