"""`erase --user U`: the right to erasure, by destroying the keys that seal the user's words.

What the user said and was answered is sealed under `user.<U>`, each fact they
remembered under its own key, and the summaries of the channels they spoke in under
`summary.<channel>` (they mix the user's words with others'). Erasing destroys those
keys first, then appends a `MemoryForgotten` for each fact still remembered (the
views drop it) and `UserErased` (the record, and what tells every instance to drop
its cached keys). In that order a crash half-way leaves text erased, the safe side;
running the command again destroys nothing new and appends what is missing. Counts,
tokens and every other figure stay: only text becomes `[erased]`.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from llm_es.domain.events import Event, MemoryAdded, MemoryForgotten, UserErased
from llm_es.domain.personal_data import memory_key_name, summary_key_name, user_key_name
from llm_es.store.codec import UnknownEventError
from llm_es.store.log import EventStore
from llm_es.store.quarantine import admit_event
from replay.errors import UsageError
from replay.reading import EventLog, LogSelection, event_filter

_ERASE_IDS = uuid.UUID("6f1c7a52-3d0e-4c55-9f6e-0d7e1f2b8a41")
"""Namespace of the ids of the events an erasure appends: a rerun within the stream's
duplicate window appends nothing twice."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure destroyed and recorded."""

    user: str
    channels: tuple[str, ...]
    facts: int
    keys_destroyed: int
    seq: int
    """Sequence of the `UserErased` event."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)  # `channels` stays a tuple: JSON writes it as a list all the same

    def render(self) -> str:
        channels = ", ".join(self.channels) or "none"
        return (
            f"erased user {self.user!r}: their messages, {self.facts} remembered fact(s) and "
            f"the summaries of {len(self.channels)} channel(s) ({channels}) read [erased] "
            f"from now on; {self.keys_destroyed} key(s) destroyed; UserErased at sequence "
            f"{self.seq:,}"
        )


def _event_id(*parts: str) -> str:
    return uuid.uuid5(_ERASE_IDS, "\x1f".join(parts)).hex


async def _events(log: EventLog, selection: LogSelection) -> list[Event]:
    """The selected events the log holds now, in order (quarantined ones left out, as
    every reader leaves them out)."""
    found: list[Event] = []
    async with aclosing(log.read(selection)) as batches:
        async for batch in batches:
            for seq, subject, data, stored_ns in batch:
                try:
                    found.append(admit_event(seq, subject, data, stored_ns))
                except UnknownEventError:
                    continue
    return found


async def run_erase(log: EventLog, user: str) -> Erasure:
    """Erase `user`: destroy their keys, forget their facts, record `UserErased`."""
    if not await log.last_seq_matching(event_filter(user=user).subject):
        raise UsageError(f"unknown user {user!r}: no event in the log names them")
    spoken = await _events(log, event_filter(user=user, types=("TurnAdmitted",)))
    channels = tuple(dict.fromkeys(c for e in spoken if (c := e.channel_name) is not None))
    added = await _events(log, event_filter(user=user, types=("MemoryAdded",)))
    facts = [e for e in added if isinstance(e, MemoryAdded)]
    forgotten = {
        (e.channel, e.memory_id)
        for e in await _events(log, event_filter(types=("MemoryForgotten",)))
        if isinstance(e, MemoryForgotten)
    }
    remembered = [f for f in facts if (f.channel, f.memory_id) not in forgotten]

    keyring = log.keyring
    names = [
        user_key_name(user),
        *(summary_key_name(c) for c in channels),
        *(memory_key_name(f.channel, f.memory_id) for f in facts),
    ]
    for name in names:
        await keyring.destroy(name)

    now = datetime.now(UTC)
    store = EventStore(log.nc, log.js, stream=log.stream)
    for fact in remembered:
        await store.append(
            MemoryForgotten(
                id=_event_id("forget", user, fact.channel, fact.memory_id),
                at=now,
                channel=fact.channel,
                user=user,
                memory_id=fact.memory_id,
            )
        )
    seq = await store.append(
        UserErased(
            id=_event_id("erase", user, str(await log.end())),
            at=now,
            user=user,
            channels=channels,
            memories=len(facts),
        )
    )
    return Erasure(user, channels, len(facts), len(names), seq)
