"""A turn that ends while nats-server is down is answered truthfully, never as a false failure.

nats-py buffers what is published while it reconnects and sends it once the
server is back: a turn's end published during an outage is stored then, and the
turn is completed and charged. Its answer must say so, or that its outcome is
not known yet, never "append to LLM_EVENTS failed".
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from typing import Any

import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.events import TurnCompleted, TurnFailed
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import log_events, make_config
from tests.support.reconnecting import Running, running_plugin

OUTAGE_SECONDS = 7.0
"""Longer than the old path took to give up (1 s unconfirmed + a 5 s ack timeout)."""
LONG_OUTAGE_SECONDS = 9.0
"""Longer than a 2 s deadline's end may wait to be confirmed (1 s + at least 5 s)."""
REPLY_TIMEOUT = 30.0


async def chat(client: NATS, request_id: str) -> tuple[dict[str, Any], str | None]:
    """The reply's body and its `Llm-Turn-Id` header (None on an error without a turn)."""
    body = {"channel": "lobby", "user": "alice", "message": "hi", "request_id": request_id}
    reply = await client.request("rosey.llm.chat", orjson.dumps(body), timeout=REPLY_TIMEOUT)
    return orjson.loads(reply.data), (reply.headers or {}).get("Llm-Turn-Id")


async def end_the_turn_during_an_outage(
    running: Running, fake_llm: FakeLLMServer, request_id: str, outage: float
) -> tuple[dict[str, Any], str | None]:
    """A chat whose provider answers while nats-server is stopped, restarted `outage`
    seconds later. Returns the chat's reply."""
    fake_llm.hold = asyncio.Event()
    asking = asyncio.create_task(chat(running.client, request_id))
    async with asyncio.timeout(10):
        await fake_llm.chat_started.wait()
    await running.server.stop()
    fake_llm.hold.set()  # the turn ends now, with the server away
    await asyncio.sleep(outage)
    await running.server.start()
    return await asyncio.wait_for(asking, REPLY_TIMEOUT)


async def turn_ends(client: NATS, turn_id: str) -> list[str]:
    return [
        event.TYPE
        for _, event in await log_events(client)
        if isinstance(event, TurnCompleted | TurnFailed) and event.turn_id == turn_id
    ]


@pytest.mark.timeout(60)
async def test_a_turn_ended_during_an_outage_is_answered_as_completed(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer
) -> None:
    """The provider answers while nats-server is down for 7 s: once it is back, the turn's
    end is stored once and the caller gets the answer (or, if NATS dropped it in the
    reconnect, its retry does), never an append failure."""
    async with running_plugin(tmp_path, make_config(fake_llm.base_url)) as running:
        try:
            answer, turn_id = await end_the_turn_during_an_outage(
                running, fake_llm, "outage-1", OUTAGE_SECONDS
            )
        except nats.errors.TimeoutError:
            # NATS core keeps no reply across a reconnect: when the plugin answers before
            # the client's inbox is subscribed again, the answer is dropped. The caller
            # retries with its request_id and gets the turn's outcome from the log.
            answer, turn_id = await chat(running.client, "outage-1")
        assert answer["success"] is True, answer
        assert answer["content"] == "Hello from the fake model."
        assert turn_id is not None
        assert await turn_ends(running.client, turn_id) == ["TurnCompleted"]


@pytest.mark.timeout(60)
async def test_an_end_not_confirmed_by_the_deadline_is_an_unknown_outcome(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 2 s turn deadline and nats-server down for 9 s, the answer says the outcome
    is not known yet and to retry with the same request_id; the retry after the restart
    gets the completed answer, and the log holds the turn's end once."""
    config = make_config(fake_llm.base_url, timeout=2.0)
    ollama = dataclasses.replace(config.providers.ollama, max_retries=0)
    config = dataclasses.replace(
        config, providers=dataclasses.replace(config.providers, ollama=ollama)
    )
    async with running_plugin(tmp_path, config) as running:
        try:
            answer, turn_id = await end_the_turn_during_an_outage(
                running, fake_llm, "outage-2", LONG_OUTAGE_SECONDS
            )
        except nats.errors.TimeoutError:
            # The answer goes out while nats-server is still away: when the plugin's
            # connection comes back before the client's inbox is subscribed again, the
            # server drops it. The plugin's log line says what it answered.
            unknown = [r for r in caplog.records if "turn_outcome_unknown" in r.getMessage()]
            assert len(unknown) == 1
            turn_id = None
        else:
            assert answer["success"] is False
            assert turn_id is not None
            assert answer["error"] == (
                f"This request (turn {turn_id}) was answered, but the event log could not"
                " confirm it in time (NATS unavailable); its outcome is not known yet. Retry"
                " with the same request_id to get it."
            )
        retried, retried_turn = await chat(running.client, "outage-2")
        assert retried["success"] is True, retried
        assert retried["content"] == "Hello from the fake model."
        assert retried_turn is not None
        assert turn_id in (None, retried_turn)
        assert await turn_ends(running.client, retried_turn) == ["TurnCompleted"]
        assert fake_llm.chat_count == 1
