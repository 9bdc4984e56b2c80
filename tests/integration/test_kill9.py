"""`llm-es serve` killed with SIGKILL at each step of a turn, then started again: the turn ends
exactly once, its reservation is released, the views equal a fresh rebuild, and a client that
retries with the same request_id gets one answer, never a second turn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import time
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.abandoned import ABANDONED_ERROR
from llm_es.domain.events import Event, TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.embedded import EmbeddedNatsServer
from tests.support.cli import run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import log_events, stored_view, wait_persisted, wait_until
from tests.support.serve import LLM_REPLAY, ServeProcess, write_config

TOKENS_PER_DAY = 1500
"""Room for one turn's reservation (~1070 tokens) and not two: a leaked one blocks the next."""


async def chat(client: NATS, message: str, request_id: str, within: float) -> dict[str, Any]:
    payload = {"channel": "lobby", "user": "alice", "args": message, "request_id": request_id}
    reply = await client.request("rosey.command.chat", orjson.dumps(payload), timeout=within)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer


async def events_of(client: NATS) -> list[Event]:
    return [event for _, event in await log_events(client)]


def ends_by_turn(events: list[Event]) -> dict[str, list[Event]]:
    """Every admitted turn's ends (TurnCompleted or TurnFailed), in log order."""
    ends: dict[str, list[Event]] = {e.turn_id: [] for e in events if isinstance(e, TurnAdmitted)}
    for event in events:
        if isinstance(event, TurnCompleted | TurnFailed):
            ends.setdefault(event.turn_id, []).append(event)
    return ends


async def kill_at(
    step: str, serve: ServeProcess, client: NATS, llm: FakeLLMServer, server: EmbeddedNatsServer
) -> None:
    """Drive the turn to `step` and SIGKILL serve there."""
    if step == "admitted":
        # The provider holds the call: the turn is admitted and nothing has answered.
        llm.hold = asyncio.Event()

        async def admitted() -> bool:
            return any(isinstance(e, TurnAdmitted) for e in await events_of(client))

        await wait_until(admitted, within=15, interval=0.05)
        await serve.stop(signal.SIGKILL)
    elif step == "provider_call":
        # The provider has the request and takes 5 s over it: killed while it thinks.
        llm.delay = 5.0
        await asyncio.wait_for(llm.chat_started.wait(), 15)
        await asyncio.sleep(0.3)
        await serve.stop(signal.SIGKILL)
    else:
        # The answer leaves the provider as nats-server freezes: serve has the whole answer
        # and its appends wait on a frozen server when it is killed.
        pid = server.pid
        assert pid is not None
        llm.before_answer = lambda: os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.wait_for(llm.chat_answered.wait(), 15)
            await asyncio.sleep(0.5)
            await serve.stop(signal.SIGKILL)
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("step", "instance_id"),
    [
        ("admitted", "kill9-worker"),
        ("provider_call", "kill9-worker"),
        ("answered", "kill9-worker"),
        ("admitted", None),
    ],
    ids=["after-admission", "during-provider-call", "after-provider-answered", "fresh-id"],
)
async def test_serve_killed_mid_turn_ends_the_turn_exactly_once(
    tmp_path: pathlib.Path,
    nats_server: EmbeddedNatsServer,
    client: NATS,
    fake_llm: FakeLLMServer,
    step: str,
    instance_id: str | None,
) -> None:
    """Killed after admission, while the provider works on the request, or with the
    provider's answer in hand but not yet in the log: after a restart the turn has exactly
    one end (completed if its append landed, else failed `abandoned`); the retry with the
    same request_id answers that end, twice alike, with one TurnAdmitted; the next turn is
    admitted under a daily budget with room for one reservation only; `llm-replay verify`
    finds no difference.

    With a fixed instance_id the restarted instance closes its earlier run's turn at start;
    with a fresh id, the turn is closed once the dead instance's heartbeat expires (3 s)."""
    service: dict[str, Any] = {"instance_ttl_seconds": 3, "max_tokens": 1000}
    if instance_id is not None:
        service["instance_id"] = instance_id
    config = write_config(tmp_path / "config.json", fake_llm.base_url, **service)
    config.write_bytes(
        orjson.dumps(
            {**orjson.loads(config.read_bytes()), "rate_limits": {"tokens_per_day": TOKENS_PER_DAY}}
        )
    )
    serve = ServeProcess(nats_server.url, config, tmp_path / "serve.log")
    await serve.start()
    try:
        await serve.wait_ready(client)
        first = asyncio.create_task(chat(client, "hello there", "r-1", within=60))
        await kill_at(step, serve, client, fake_llm, nats_server)
        first.cancel()
        with contextlib.suppress(BaseException):
            await first  # its reply died with the process
        fake_llm.hold = None
        fake_llm.delay = 0.0
        fake_llm.before_answer = None

        restarted = time.monotonic()
        await serve.start()
        await serve.wait_ready(client)

        async def ended() -> bool:
            return all(ends_by_turn(await events_of(client)).values())

        await wait_until(ended, within=30, interval=0.1)
        recovery_seconds = time.monotonic() - restarted
        events = await events_of(client)
        ends = ends_by_turn(events)
        assert len(ends) == 1
        ((turn_id, (end,)),) = ends.items()
        print(f"{step}: {end.TYPE} {recovery_seconds:.1f} s after serve was started again")
        retried = await chat(client, "hello there", "r-1", within=30)
        assert await chat(client, "hello there", "r-1", within=30) == retried
        if isinstance(end, TurnCompleted):
            assert step == "answered"  # only there can the answer have reached the log
            assert retried["success"] is True
            assert retried["result"]["message"] == "Hello from the fake model."
        else:
            assert isinstance(end, TurnFailed)
            assert (end.error_type, end.error) == ("abandoned", ABANDONED_ERROR)
            assert (retried["success"], retried["error"]) == (False, ABANDONED_ERROR)
        usage = await stored_view(client, "usage.alice")
        assert usage is not None
        assert usage["open_turns"] == {}

        again = await chat(client, "and again", "r-2", within=30)
        assert again["success"] is True, again
        events = await events_of(client)
        admitted = [e.turn_id for e in events if isinstance(e, TurnAdmitted)]
        assert admitted.count(turn_id) == 1
        assert len(admitted) == 2
        assert all(len(each) == 1 for each in ends_by_turn(events).values())

        await wait_persisted(client)
        verified = await run_script(
            LLM_REPLAY, "verify", "--json", "--no-progress", "--nats-url", nats_server.url
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.json()["ok"] is True
    finally:
        fake_llm.hold = None
        assert await serve.stop() in (0, -signal.SIGKILL)
