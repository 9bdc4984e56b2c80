"""Admission against a real log and real views: per-user locks, and ids a test can fix.

`ChatService` is built by hand here (a real `EventStore` on nats-server, the
real view runner, the fake LLM over HTTP), so the test can reach its admission
and hand it fixed id sources.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from llm_es.app import build_providers
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import MemoryAdded, TokensSpent, TurnAdmitted, TurnCompleted
from llm_es.domain.limits import TurnRequest
from llm_es.service.chat import ChatService
from llm_es.store.log import EventStore
from projections.runner import build_view_runner
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import log_events, make_config

UNLIMITED = RateLimitsConfig(None, None, None, None)
MEMORY_IDS = ("0000abcd", "0000beef")


@pytest.fixture
async def service(client: NATS, fake_llm: FakeLLMServer) -> AsyncIterator[ChatService]:
    config = make_config(fake_llm.base_url, rate_limits=UNLIMITED)
    store = EventStore(client, client.jetstream())
    await store.ensure_stream()
    views = build_view_runner(client, client.jetstream(), store, config)
    await views.start()
    providers = build_providers(config)
    memory_ids = iter(MEMORY_IDS)
    turn_ids = (f"turn-{n:04d}" for n in itertools.count())
    try:
        yield ChatService(
            config,
            store,
            views,
            providers,
            instance_id="tester",
            turn_ids=lambda: next(turn_ids),
            memory_ids=lambda: next(memory_ids),
        )
    finally:
        await views.stop()
        for provider in providers.values():
            await provider.aclose()


def request(user: str, turn_id: str) -> TurnRequest:
    return TurnRequest(
        turn_id=turn_id,
        channel="lobby",
        user=user,
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message="hello",
        instance="tester",
    )


async def test_admissions_of_many_users_leave_no_lock_behind(service: ChatService) -> None:
    """500 users admitted at once: every one admitted, and no per-user lock is left over
    (the old registry kept every user's lock until it held 10,000)."""
    admission = service.admission
    decisions = await asyncio.gather(
        *(admission.admit_turn(request(f"user-{n}", f"t{n}"), 10, 100) for n in range(500))
    )
    assert all(isinstance(d, TurnAdmitted) for d in decisions)
    assert (admission.admitted, admission.conflicts) == (500, 0)
    assert len(admission.locks) == 0


async def test_concurrent_admissions_of_one_user_take_turns(service: ChatService) -> None:
    """30 admissions of one user at once all wait on one lock and go one after the other:
    each reads the view its predecessor's admission is in, so none loses a race."""
    admission = service.admission
    tasks = [
        asyncio.create_task(admission.admit_turn(request("alice", f"t{n}"), 10, 100))
        for n in range(30)
    ]
    await asyncio.sleep(0)  # every task has asked for the lock
    assert admission.locks.waiting("alice") == 30
    decisions = await asyncio.gather(*tasks)
    assert all(isinstance(d, TurnAdmitted) for d in decisions)
    assert (admission.admitted, admission.conflicts) == (30, 0)
    assert len(admission.locks) == 0


async def test_turn_and_memory_ids_come_from_the_sources_given(
    service: ChatService, client: NATS
) -> None:
    """With fixed id sources, a turn's events and a memory carry exactly those ids."""
    answer = await service.complete(messages=[{"role": "user", "content": "hi"}], user="alice")
    assert answer.success
    assert answer.data["turn_id"] == "turn-0000"
    remembered = await service.remember(channel="lobby", user="alice", content="tea at five")
    assert remembered.message == "Remembered: tea at five (ID: 0000abcd)"
    events = [e for _, e in await log_events(client)]
    assert [type(e) for e in events] == [TurnAdmitted, TokensSpent, TurnCompleted, MemoryAdded]
    assert {getattr(e, "turn_id", None) for e in events[:3]} == {"turn-0000"}
    assert isinstance(events[3], MemoryAdded)
    assert events[3].memory_id == "0000abcd"
