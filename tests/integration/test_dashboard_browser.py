"""The dashboard page in headless Chromium: charts drawn, no console error, a live tail.

Skipped only where Chromium is not installed (`.ci/run` installs Debian's
`chromium` when it is missing). Set LLM_ES_DASHBOARD_SCREENSHOT=PATH to keep
the screenshot (docs/dashboard.png is made that way).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib

import pytest
from nats.aio.client import Client as NATS

from llm_es.config import HttpConfig
from tests.integration.conftest import PluginStarter
from tests.support.chromium import chromium_path, headless_chromium
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, make_config, wait_until

pytestmark = pytest.mark.timeout(120)
CHROMIUM = chromium_path()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run: apt-get install chromium)"
)
async def test_page_draws_charts_without_console_errors_and_tails_a_later_turn(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, tmp_path: pathlib.Path
) -> None:
    """Loaded in Chromium, the page shows bars in the usage chart and points in the latency
    chart, logs no console error or exception, and its live tail shows a turn made after
    it opened; the screenshot is a PNG of the whole page."""
    assert CHROMIUM is not None
    config = make_config(fake_llm.base_url)
    plugin = await start(dataclasses.replace(config, http=HttpConfig(listen="127.0.0.1:0")))
    assert plugin.metrics_address is not None
    assert plugin.dashboard is not None
    host, port = plugin.metrics_address
    for user in ("ann", "bob", "bob", "cyd"):
        assert (await command(client, f"a question from {user}", user=user))["success"] is True
    fake_llm.fail_status, fake_llm.fail_times = 503, 3
    assert (await command(client, "this one fails", user="ann"))["success"] is False
    dashboard = plugin.dashboard
    await wait_until(lambda: dashboard.loaded_up_to is not None)

    async with headless_chromium(CHROMIUM, tmp_path / "profile") as page:
        await page.call("Page.navigate", url=f"http://{host}:{port}/")
        await wait_until(
            lambda: any(e.get("method") == "Page.loadEventFired" for e in page.events),
            within=20.0,
        )
        await wait_until(lambda: dashboard.tail.watchers >= 1, within=20.0)
        reply = await command(client, "asked after the page opened", user="late_visitor")
        assert reply["success"] is True
        tail_shows = (
            "[...document.querySelectorAll('#tail div')].some("
            "d => d.dataset.user === 'late_visitor' && d.textContent.includes('TurnCompleted'))"
        )
        for _ in range(100):
            if await page.evaluate(tail_shows):
                break
            await asyncio.sleep(0.1)
        assert await page.evaluate(tail_shows) is True
        bars = await page.evaluate("document.querySelectorAll('#usage svg rect.bar').length")
        assert bars >= 2  # tokens and requests of today
        points = await page.evaluate("document.querySelectorAll('#latency svg circle').length")
        assert points == 2  # today's p50 and p99
        errors = await page.evaluate("document.querySelectorAll('#errors svg rect.bar').length")
        assert errors == 1  # today's provider_error
        users = await page.evaluate("document.querySelector('#top-today').textContent")
        assert "bob" in users
        shot = await page.screenshot()
        assert page.console_errors == []

    assert shot[:8] == PNG_MAGIC
    assert len(shot) > 20_000  # a drawn page, not a blank one
    keep = os.environ.get("LLM_ES_DASHBOARD_SCREENSHOT")
    if keep:
        await asyncio.to_thread(pathlib.Path(keep).write_bytes, shot)
