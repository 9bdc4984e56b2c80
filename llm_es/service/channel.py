"""A channel's own state: context reset, persona, memories, and the chat prompt built from them.

Each command decides with a pure decider (`llm_es.domain.channel`,
`llm_es.domain.memories`), appends, and answers once the views include it.
Per-channel facts need no lock: stream order is the order of the channel's history.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import cast

import msgspec

from llm_es.config import Config
from llm_es.domain import replies
from llm_es.domain.channel import decide_persona_switch, decide_reset
from llm_es.domain.events import Event, MemoryAdded, MemoryForgotten, UserErased
from llm_es.domain.idempotency import request_event_id, request_memory_id
from llm_es.domain.memories import (
    DEFAULT_IMPORTANCE,
    decide_forget,
    decide_recall,
    decide_remember,
    normalize_memory_id,
    rank_memories,
    recall_query,
)
from llm_es.domain.messages import ChatMessage
from llm_es.domain.personal_data import erased_key_names, memory_key_name
from llm_es.domain.prompt import build_chat_prompt
from llm_es.domain.views import (
    ContextMessage,
    ContextView,
    MemoryView,
    SettingsView,
    context_key,
    memories_group,
    memory_key,
    settings_key,
)
from llm_es.service.outcome import Outcome
from llm_es.service.recording import Recorder
from llm_es.store.keyring import KeyRing


def random_memory_id() -> str:
    """A candidate memory id: 8 random hex digits."""
    return secrets.token_hex(4)


class Channels:
    """Reads and commands of channels: context, persona and memories."""

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        *,
        clock: Callable[[], datetime],
        memory_ids: Callable[[], str] = random_memory_id,
        keyring: KeyRing | None = None,
    ) -> None:
        """`keyring`: opens the sealed text of memories (None: a log that seals nothing)."""
        self._config = config
        self._recorder = recorder
        self._views = recorder.views
        self._clock = clock
        self._memory_ids = memory_ids
        self._keyring = keyring
        if keyring is not None:
            # A memory forgotten on another instance: its key is gone, drop our copy too.
            self._views.follow(self._folded)

    def _folded(self, seq: int, event: Event | None) -> None:
        if self._keyring is None:
            return
        if isinstance(event, MemoryForgotten):
            self._keyring.forget_cached(memory_key_name(event.channel, event.memory_id))
        elif isinstance(event, UserErased):
            for name in erased_key_names(event):
                self._keyring.forget_cached(name)

    # ---------------------------------------------------------------- reads

    def persona_of(self, channel: str) -> str:
        """The channel's persona; the default when none is set or it is no longer configured."""
        settings = cast(SettingsView | None, self._views.get(settings_key(channel)))
        persona = settings["persona"] if settings else self._config.service.default_persona
        return persona if persona in self._config.personas else self._config.service.default_persona

    def memories_of(self, channel: str) -> list[MemoryView]:
        """The channel's memories with their text opened; those whose key is gone (or not
        fetched yet: `fetch_keys`) are left out."""
        stored = cast(list[MemoryView], self._views.values_under(memories_group(channel)))
        keyring = self._keyring
        if keyring is None:
            return stored
        opened: list[MemoryView] = []
        for memory in stored:
            content = keyring.open_cached(memory["content"])
            if content is not None:
                opened.append({**memory, "content": content})
        return opened

    def opened_context(self, channel: str) -> ContextView | None:
        """The channel's context view with its text opened (`fetch_keys` first); messages
        and a summary whose key is gone are left out."""
        context = cast(ContextView | None, self._views.get(context_key(channel)))
        return context if self._keyring is None else self._keyring.opened_context(context)

    async def fetch_keys(self, channel: str) -> None:
        """Fetch the keys of the channel's memories and context this instance has not seen."""
        if self._keyring is not None:
            stored = self._views.values_under(memories_group(channel))
            context = cast(ContextView | None, self._views.get(context_key(channel)))
            texts = [m["content"] for m in stored]
            await self._keyring.fetch_keys([*texts, *self._keyring.context_texts(context)])

    def chat_prompt(
        self, *, channel: str, user: str, message: str, persona: str | None
    ) -> list[ChatMessage]:
        """The prompt of a chat turn from the views as they are now (persona: an override)."""
        service = self._config.service
        window = service.max_context_messages
        context = cast(ContextView | None, self._views.get(context_key(channel)))
        summary: str | None = None
        recent: list[ContextMessage] = []
        if context is not None and self._keyring is None:
            summary, recent = context["summary"], context["messages"][-window:]
        elif context is not None and self._keyring is not None:
            # What `opened_context` gives, cut to the window: the older messages (kept for
            # the summarizer) are not opened at all.
            summary = self._keyring.opened_summary(context)
            recent = self._keyring.opened_recent(context, window)
        return build_chat_prompt(
            persona_prompt=self._config.personas[persona or self.persona_of(channel)],
            summary=summary,
            memories=rank_memories(
                message, self.memories_of(channel), service.max_memories_in_prompt
            ),
            recent=recent,
            user=user,
            message=message,
        )

    # ---------------------------------------------------------------- context and persona

    async def reset(self, *, channel: str, user: str) -> Outcome:
        await self._recorder.record(decide_reset(channel=channel, user=user, now=self._clock()))
        return Outcome.ok(replies.CONTEXT_RESET)

    async def persona(self, *, channel: str, user: str | None, name: str) -> Outcome:
        """List the personas (empty `name`) or switch the channel's persona to `name`."""
        await self._recorder.catch_up()
        names = list(self._config.personas)
        if not name:
            current = self.persona_of(channel)
            return Outcome.ok(replies.persona_list(names, current), persona=current)
        switched = decide_persona_switch(
            channel=channel, user=user, requested=name, personas=names, now=self._clock()
        )
        if switched is None:
            return Outcome.error(replies.unknown_persona(name.strip(), names))
        await self._recorder.record(switched)
        return Outcome.ok(replies.persona_changed(switched.persona), persona=switched.persona)

    # ---------------------------------------------------------------- memories

    async def remember(
        self,
        *,
        channel: str,
        user: str | None,
        content: str,
        category: str = "fact",
        importance: int = DEFAULT_IMPORTANCE,
        request_id: str | None = None,
    ) -> Outcome:
        """Remember a fact; with a `request_id`, a retry answers the first one's memory."""
        await self._recorder.catch_up()
        await self.fetch_keys(channel)
        memory_ids = self._memory_ids
        if request_id is not None:
            derived = request_memory_id(channel, user, request_id)
            known = next((m for m in self.memories_of(channel) if m["id"] == derived), None)
            if known is not None:
                return Outcome.ok(replies.remembered(known["content"], derived), memory_id=derived)
            memory_ids = lambda: derived  # noqa: E731  (one candidate: it is not taken)
        event = decide_remember(
            channel=channel,
            user=user,
            content=content,
            category=category,
            importance=importance,
            existing_ids=[m["id"] for m in self._views.values_under(memories_group(channel))],
            new_id=memory_ids,
            now=self._clock(),
            max_length=self._config.service.max_memory_length,
            max_memories=self._config.service.max_memories_per_channel,
        )
        if request_id is None:
            await self._recorder.record(event)
        else:
            event = msgspec.structs.replace(event, id=request_event_id(channel, user, request_id))
            appended = await self._recorder.store.append_once(event)
            await self._recorder.wait_for(appended.seq)
            if appended.duplicate:
                stored = await self._recorder.store.event_at(appended.seq)
                if stored is not None and isinstance(stored.event, MemoryAdded):
                    event = stored.event
                    if self._keyring is not None:
                        event = cast(MemoryAdded, await self._keyring.open_event(event))
        return Outcome.ok(
            replies.remembered(event.content, event.memory_id), memory_id=event.memory_id
        )

    async def recall(
        self, *, channel: str, user: str | None, query: str, limit: int = 5
    ) -> Outcome:
        query = recall_query(query)
        await self._recorder.catch_up()
        await self.fetch_keys(channel)
        found, event = decide_recall(
            channel=channel,
            user=user,
            query=query,
            memories=self.memories_of(channel),
            limit=limit,
            now=self._clock(),
        )
        if event is None:
            return Outcome.ok(replies.nothing_recalled(query), memories=[], count=0)
        await self._recorder.record(event)
        # Callers see no internal sequence numbers.
        listed = [{k: v for k, v in m.items() if k != "seq"} for m in found]
        return Outcome.ok(replies.recalled(query, found), memories=listed, count=len(listed))

    async def forget(self, *, channel: str, user: str | None, memory_id: str) -> Outcome:
        normalized = normalize_memory_id(memory_id)
        await self._recorder.catch_up()
        event = decide_forget(
            channel=channel,
            user=user,
            memory_id=normalized,
            exists=self._views.get(memory_key(channel, normalized)) is not None,
            now=self._clock(),
        )
        if event is None:
            return Outcome.error(replies.memory_not_found(normalized))
        if self._keyring is not None:
            # The key goes first: once it is purged the fact is erased everywhere, and a
            # failed append leaves a memory reading `[erased]` whose forget can be retried.
            await self._keyring.destroy(memory_key_name(channel, normalized))
        await self._recorder.record(event)
        return Outcome.ok(replies.forgot(normalized), memory_id=normalized)
