"""`ensure_stream` at start fits an existing stream up and never undoes an operator's settings."""

from __future__ import annotations

import dataclasses

from nats.aio.client import Client as NATS

from llm_es.store.log import STREAM_NAME, EventStore


async def test_settings_set_by_hand_survive_a_restart(client: NATS) -> None:
    """An operator's max_age, max_bytes and longer duplicate window stay when llm-es starts
    again; what the log needs (atomic batches, no purge) is set back."""
    store = EventStore(client, client.jetstream())
    await store.ensure_stream()
    js = client.jetstream()
    info = await js.stream_info(STREAM_NAME)
    by_hand = dataclasses.replace(
        info.config, max_age=86400.0, max_bytes=10_000_000, duplicate_window=300.0
    )
    await js.update_stream(by_hand)
    await EventStore(client, js).ensure_stream()
    kept = (await js.stream_info(STREAM_NAME)).config
    assert (kept.max_age, kept.max_bytes, kept.duplicate_window) == (86400.0, 10_000_000, 300.0)
    assert kept.num_replicas == 1
    assert (kept.allow_atomic, kept.deny_purge, kept.deny_delete) == (True, True, True)
