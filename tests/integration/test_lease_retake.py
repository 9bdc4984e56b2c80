"""A lease holder whose own write was stored unseen (sent while nats-server was away) keeps
its lease; a lease naming another holder is never taken."""

from __future__ import annotations

import orjson
from nats.aio.client import Client as NATS

from llm_es.store.lease import open_lease

TTL_SECONDS = 15.0


async def test_a_renewal_stored_unseen_does_not_cost_the_lease(client: NATS) -> None:
    """The bucket holds a newer revision naming the holder (its renewal, buffered by
    nats-py and stored on reconnect): the next renewal re-takes the lease at once."""
    lease = await open_lease(client.jetstream(), "event-publisher", "alpha", TTL_SECONDS)
    assert await lease.acquire()
    kv = await client.jetstream().key_value("llm_leases")
    entry = await kv.get("event-publisher")
    await kv.update("event-publisher", orjson.dumps({"holder": "alpha"}), last=entry.revision)
    assert await lease.renew()
    assert lease.held()
    other = await open_lease(client.jetstream(), "event-publisher", "beta", TTL_SECONDS)
    assert not await other.acquire()


async def test_a_lease_left_naming_its_holder_is_taken_back_at_once(client: NATS) -> None:
    """A holder that lost track of its revision (a release that failed while the server
    was away) acquires its own lease again without waiting for the TTL."""
    lease = await open_lease(client.jetstream(), "views.llm_data", "alpha", TTL_SECONDS)
    assert await lease.acquire()
    again = await open_lease(client.jetstream(), "views.llm_data", "alpha", TTL_SECONDS)
    assert await again.acquire()
    assert await again.current_holder() == "alpha"


async def test_a_lease_naming_another_holder_is_lost_and_not_taken(client: NATS) -> None:
    """When another holder wrote the lease, renewal fails and acquiring fails: the
    lease is only ever re-taken from oneself."""
    lease = await open_lease(client.jetstream(), "event-publisher", "alpha", TTL_SECONDS)
    assert await lease.acquire()
    kv = await client.jetstream().key_value("llm_leases")
    entry = await kv.get("event-publisher")
    await kv.update("event-publisher", orjson.dumps({"holder": "beta"}), last=entry.revision)
    assert not await lease.renew()
    assert not lease.held()
    assert not await lease.acquire()
