"""nats-server stopped (SIGTERM) or killed (SIGKILL) under a load of chats and remembers, then
started again on the same port and store: `llm-es serve` reconnects on its own, no request
hangs, nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time
from dataclasses import dataclass
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.domain.events import Event, MemoryAdded, TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.embedded import EmbeddedNatsServer
from tests.support.cli import run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import log_events, wait_persisted, wait_until
from tests.support.serve import LLM_REPLAY, ServeProcess, write_config

WORKERS = 4
REQUEST_SECONDS = 5.0
OUTAGE_SECONDS = 2.0
MAX_REQUESTS_PER_WORKER = 500
UNLIMITED = {
    "requests_per_minute": 100_000,
    "requests_per_hour": 100_000,
    "requests_per_day": 100_000,
    "tokens_per_day": 1_000_000_000,
}


@dataclass
class Sent:
    """One request and what the client got back: a reply (ok or not) or an exception."""

    kind: str  # "chat" or "remember"
    text: str
    started: float
    seconds: float
    ok: bool
    reply: dict[str, Any] | None
    failure: str | None


async def send(client: NATS, worker: int, n: int) -> Sent:
    kind = "remember" if n % 3 == 2 else "chat"
    text = f"fact w{worker}-{n}" if kind == "remember" else f"hello {worker}-{n}"
    args = f"remember {text}" if kind == "remember" else text
    payload = {"channel": f"room{worker}", "user": f"user{worker}", "args": args}
    started = time.monotonic()
    try:
        raw = await client.request(
            "rosey.command.chat", orjson.dumps(payload), timeout=REQUEST_SECONDS
        )
    except (nats.errors.Error, OSError) as exc:
        seconds = time.monotonic() - started
        return Sent(kind, text, started, seconds, False, None, type(exc).__name__)
    reply: dict[str, Any] = orjson.loads(raw.data)
    ok = reply["success"] is True
    failure = None if ok else str(reply.get("error"))
    return Sent(kind, text, started, time.monotonic() - started, ok, reply, failure)


async def load(client: NATS, worker: int, stop: asyncio.Event, sent: list[Sent]) -> None:
    for n in range(MAX_REQUESTS_PER_WORKER):
        if stop.is_set():
            return
        sent.append(await send(client, worker, n))
        await asyncio.sleep(0.05)


async def expected_errors(error: Exception) -> None:
    """The client's connection errors while the server is away are the point of the test."""


async def events_of(client: NATS) -> list[Event]:
    return [event for _, event in await log_events(client)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_nats_server_restarted_under_load(
    tmp_path: pathlib.Path, fake_llm: FakeLLMServer, sig: int
) -> None:
    """Four clients chat and remember while nats-server goes away for 2 s and comes back on
    the same port and store. Every request is answered or fails within its 5 s timeout; serve
    stays up and answers again on its own; every chat and remember acknowledged to a client is
    in the log (lost = 0), each turn ends once, each memory is stored once; every admitted
    turn ends; the views resumed from their checkpoints equal a rebuild (`verify` exits 0)."""
    fake_llm.delay = 0.3  # turns are mid-provider-call when the server goes
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    await server.start()
    config = write_config(tmp_path / "config.json", fake_llm.base_url, instance_ttl_seconds=3)
    settings = {**orjson.loads(config.read_bytes()), "rate_limits": UNLIMITED}
    config.write_bytes(orjson.dumps(settings))
    serve = ServeProcess(server.url, config, tmp_path / "serve.log")
    client = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=expected_errors
    )
    stop = asyncio.Event()
    sent: list[Sent] = []
    try:
        await serve.start()
        await serve.wait_ready(client)
        workers = [asyncio.create_task(load(client, w, stop, sent)) for w in range(WORKERS)]
        await asyncio.sleep(1.5)
        if sig == signal.SIGKILL:
            pid = server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        down = time.monotonic()
        await server.stop()  # SIGTERM, or reaps the killed one
        await asyncio.sleep(OUTAGE_SECONDS)
        await server.start()
        back = time.monotonic()
        served_again = len(sent)

        def answering_again() -> bool:
            return any(s.ok for s in sent[served_again:])

        await wait_until(answering_again, within=30, interval=0.1)
        reconnect_seconds = time.monotonic() - back
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), REQUEST_SECONDS * 3)
        assert serve.process is not None
        assert serve.process.returncode is None, "serve exited during the outage"

        async def every_turn_ended() -> bool:
            events = await events_of(client)
            admitted = {e.turn_id for e in events if isinstance(e, TurnAdmitted)}
            ended = {e.turn_id for e in events if isinstance(e, TurnCompleted | TurnFailed)}
            return admitted <= ended

        await wait_until(every_turn_ended, within=60, interval=0.2)
        events = await events_of(client)
        ends = [e.turn_id for e in events if isinstance(e, TurnCompleted | TurnFailed)]
        completed = {e.turn_id for e in events if isinstance(e, TurnCompleted)}
        memories = [e.content for e in events if isinstance(e, MemoryAdded)]
        assert len(ends) == len(set(ends)), "a turn ended twice"
        assert len(memories) == len(set(memories)), "a memory was stored twice"
        acked_turns = [
            s.reply["result"]["turn_id"] for s in sent if s.ok and s.kind == "chat" and s.reply
        ]
        acked_memories = [s.text for s in sent if s.ok and s.kind == "remember"]
        lost = [t for t in acked_turns if t not in completed]
        lost += [m for m in acked_memories if m not in memories]
        assert lost == []
        failed = [s for s in sent if not s.ok]
        across = [s for s in sent if s.started < back and s.started + s.seconds > down]
        assert across, "no request was pending while the server was away"
        # No hang: each got its answer, or a clear error, within its own timeout.
        assert max(s.seconds for s in sent) < REQUEST_SECONDS + 1.0
        for each in failed:
            assert each.failure, each
        print(
            f"{signal.Signals(sig).name}: {len(sent)} requests, {len(acked_turns)} chats and"
            f" {len(acked_memories)} memories acknowledged, all in the log; {len(failed)} failed"
            f" ({sorted({s.failure or '' for s in failed})}); slowest"
            f" {max(s.seconds for s in sent):.2f} s; {len(across)} pending across the outage;"
            f" answering again {reconnect_seconds:.1f} s"
            " after the server was back"
        )
        await wait_persisted(client)
        verified = await run_script(
            LLM_REPLAY, "verify", "--json", "--no-progress", "--nats-url", server.url
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.json()["ok"] is True
    finally:
        stop.set()
        await serve.stop()
        await client.close()
        await server.stop()
