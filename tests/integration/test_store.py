"""The event store on a real JetStream: stream settings, idempotent and conditional appends."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from llm_es.domain.events import ContextReset, MemoryAdded, PersonaSwitched
from llm_es.domain.tokens import decode_name
from llm_es.errors import IntegrityError
from llm_es.store.log import STREAM_NAME, EventStore


@pytest.fixture
async def store(client: NATS) -> EventStore:
    event_store = EventStore(client, client.jetstream())
    await event_store.ensure_stream()
    return event_store


def switched(channel: str, user: str, persona: str = "concise") -> PersonaSwitched:
    return PersonaSwitched(channel=channel, user=user, persona=persona)


async def test_stream_settings_and_idempotent_creation(store: EventStore, client: NATS) -> None:
    """ensure_stream twice leaves one stream with the DESIGN.md settings."""
    await store.ensure_stream()
    info = await client.jetstream().stream_info(STREAM_NAME)
    config = info.config
    assert config.subjects == ["llm.ev.>"]
    assert config.storage == api.StorageType.FILE
    assert config.allow_atomic is True
    assert config.allow_direct is True
    assert config.deny_delete is True
    assert config.deny_purge is True
    assert config.duplicate_window == 120.0


async def test_append_returns_sequences_and_retries_are_noops(store: EventStore) -> None:
    """The event id is the Nats-Msg-Id: appending the same event twice stores it once."""
    event = switched("c", "alice")
    first = await store.append(event)
    again = await store.append(event)
    assert first == again == 1
    assert await store.last_seq() == 1


async def test_user_boundary_spans_channels_but_not_users(store: EventStore) -> None:
    """The per-user condition sees the user's events in every channel, not other users'."""
    boundary = store.user_boundary("alice")
    assert await store.append(switched("one", "alice"), expected_last_seq=0, boundary=boundary) == 1
    with pytest.raises(IntegrityError) as conflict:
        await store.append(switched("two", "alice"), expected_last_seq=0, boundary=boundary)
    assert conflict.value.actual_last_seq == 1  # the server names the real position
    bob = store.user_boundary("bob")
    assert await store.append(switched("two", "bob"), expected_last_seq=0, boundary=bob) == 2
    assert await store.append(switched("two", "alice"), expected_last_seq=1, boundary=boundary) == 3
    assert await store.last_seq(boundary) == 3
    assert await store.last_seq(bob) == 2


async def test_odd_names_become_valid_reversible_subjects(store: EventStore) -> None:
    """Dots, spaces, wildcards and unicode are encoded; subjects decode back to the names."""
    names = ["a.b", "with space", "*", ">", "_", "ünïcødé 🎉", "x=y"]
    for name in names:
        await store.append(switched(name, name))
    subjects = [r.subject async for r in store.read()]
    decoded = [(decode_name(s.split(".")[2]), decode_name(s.split(".")[3])) for s in subjects]
    assert decoded == [(n, n) for n in names]
    only_dotted = [r.event async for r in store.read(store.channel_filter("a.b"))]
    assert [e.channel_name for e in only_dotted] == ["a.b"]


async def test_atomic_batch_and_filtered_reads(store: EventStore) -> None:
    """An atomic batch stores all its events in order; reads filter and bound by sequence."""
    seqs = await store.append_atomic(
        [ContextReset(channel="c", user="u"), switched("c", "u"), switched("d", "v")]
    )
    assert seqs == [1, 2, 3]
    assert [r.seq async for r in store.read(from_seq=2)] == [2, 3]
    assert [r.seq async for r in store.read(to_seq=2)] == [1, 2]
    assert [r.seq async for r in store.read(store.channel_filter("d"))] == [3]
    assert [r.seq async for r in store.read(store.channel_filter("nobody"))] == []


async def test_events_without_user_use_the_placeholder_token(store: EventStore) -> None:
    """A memory added without a user is stored under `_`, which no real name encodes to."""
    memory = MemoryAdded(
        memory_id="0123abcd",
        channel="c",
        user_id=None,
        content="fact",
        category="fact",
        importance=3,
    )
    await store.append(memory)
    await store.append(switched("c", "_"))
    subjects = [r.subject async for r in store.read()]
    assert subjects == ["llm.ev.c._.MemoryAdded", "llm.ev.c.=5F.PersonaSwitched"]
