"""A turn whose end could not be appended (its append was lost with the nats-server) ends
and gives its token reservation back as soon as the server is back, not at the deadline
plus grace: the instance appends the end again with the same ids while the turn runs,
and closes it as abandoned at its next sweep if it had given up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import time

import nats
import orjson
import pytest

from llm_es.app import Plugin
from llm_es.domain.events import TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.embedded import EmbeddedNatsServer
from llm_es.service.fallback import turn_deadline_seconds
from llm_es.store.acks import APPEND_TIMEOUT_SECONDS
from projections.runner import build_view_runner
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import log_events, make_config, wait_until

TTL_SECONDS = 3.0  # the sweep runs every third of it


@pytest.mark.timeout(120)
async def test_a_lost_turn_end_releases_the_reservation_once_the_log_is_back(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """The provider answers while nats-server is frozen (SIGSTOP): the end's append times out,
    and SIGKILL drops it with the server. Once the server is back (same store, same port),
    the instance that admitted the turn ends it (its end appended again, or an abandoned
    close): one end in the log, no open turn, the full budget again, in seconds rather
    than the turn deadline plus its 30 s grace."""
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    await server.start()
    config = make_config(fake_llm.base_url, instance_ttl_seconds=TTL_SECONDS)
    plugin_nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    plugin = Plugin(config, plugin_nc, view_runner_factory=build_view_runner)
    client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    fake_llm.hold = asyncio.Event()
    try:
        await plugin.start()
        assert plugin.views is not None
        views = plugin.views
        payload = {"channel": "lobby", "user": "alice", "args": "hello there"}
        asking = asyncio.create_task(
            client.request("rosey.command.chat", orjson.dumps(payload), timeout=30)
        )
        await asyncio.wait_for(fake_llm.chat_started.wait(), 10)
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        fake_llm.chat_answered.clear()
        fake_llm.hold.set()  # the answer arrives; its append waits on a frozen server
        await asyncio.wait_for(fake_llm.chat_answered.wait(), 10)
        # The end's append times out (5 s) while the server is frozen.
        await asyncio.sleep(APPEND_TIMEOUT_SECONDS + 1)
        os.kill(pid, signal.SIGKILL)  # the unread append dies with the server
        await server.stop()
        # The client's request may be lost with the server, or answered once the end lands.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asking, 1)
        await server.start()
        restarted = time.monotonic()

        def released() -> bool:
            usage = views.get("usage.alice")
            return usage is not None and not usage["open_turns"]

        await wait_until(released, within=30, interval=0.1)
        release_seconds = time.monotonic() - restarted
        events = [event for _, event in await log_events(client)]
        admitted = [e.turn_id for e in events if isinstance(e, TurnAdmitted)]
        ends = [e for e in events if isinstance(e, TurnCompleted | TurnFailed)]
        assert len(admitted) == 1
        assert [e.turn_id for e in ends] == admitted
        end = ends[0]
        # A plugin that re-sends its lost end would complete the turn instead.
        assert isinstance(end, TurnCompleted) or end.error_type == "abandoned"
        assert release_seconds < turn_deadline_seconds(config)
        print(f"reservation released {release_seconds:.1f} s after the server came back")
        # The full budget again: the next turn is admitted and answered.
        reply = await client.request("rosey.command.chat", orjson.dumps(payload), timeout=30)
        assert orjson.loads(reply.data)["success"] is True
    finally:
        fake_llm.hold.set()
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(server.pid, signal.SIGCONT)  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            await plugin.stop()
        for nc in (client, plugin_nc):
            with contextlib.suppress(Exception):
                await nc.close()
        await server.stop()
