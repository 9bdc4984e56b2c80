"""The event log with personal text sealed on the way in (`llm_es.domain.personal_data`).

Every append path of `EventStore` seals first, so no writer can store such text
in the clear; reads return events as stored (sealed), and whoever needs the text
opens it with the `KeyRing` (`ERASED` once its key is destroyed). The key is made
before the event is sent: a reader that sees the event can always find its key,
unless it was destroyed since.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from llm_es.domain.events import Event
from llm_es.store.keyring import KeyRing
from llm_es.store.log import STREAM_NAME, SUBJECT_PREFIX, Appended, EventStore


class SealingEventStore(EventStore):
    """`EventStore` whose appends seal personal text with `keyring` first."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        keyring: KeyRing,
        *,
        stream: str = STREAM_NAME,
        prefix: str = SUBJECT_PREFIX,
        replicas: int = 1,
    ) -> None:
        super().__init__(nc, js, stream=stream, prefix=prefix, replicas=replicas)
        self.keyring = keyring

    async def _sealed(self, events: Sequence[Event]) -> list[Event]:
        return [await self.keyring.seal_event(e) for e in events]

    async def append_once(
        self,
        event: Event,
        *,
        expected_last_seq: int | None = None,
        boundary: str | None = None,
    ) -> Appended:
        sealed = await self.keyring.seal_event(event)
        return await super().append_once(
            sealed, expected_last_seq=expected_last_seq, boundary=boundary
        )

    async def append_all(self, events: Sequence[Event]) -> list[int]:
        return await super().append_all(await self._sealed(events))

    async def send(self, events: Sequence[Event]) -> None:
        await super().send(await self._sealed(events))

    async def append_atomic(self, events: Sequence[Event]) -> list[int]:
        return await super().append_atomic(await self._sealed(events))
