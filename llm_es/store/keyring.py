"""The keys that seal personal data: a KV bucket every instance reads, cached in memory.

Bucket `llm_keys` (history 1) holds one random AES-256 key per subject, named by
`llm_es.domain.personal_data` (`memory.<channel>.<id>`, ...). A key is created the
first time text is sealed under its name (`kv.create`: of two instances racing, one
creates, the other reads it) and destroyed with `kv.purge`, whose rollup drops every
revision, so the bucket's stream keeps no copy. A key that is missing, or one that
no longer opens a value (destroyed, then made again under the same name), means the
text is erased: readers show `ERASED`, never fail.

Keys are cached in memory, and opened texts too, with the texts sealed here (a prompt
ranks every memory of the channel on each turn: AES-GCM plus base64 cost ~3 us a value,
a dict lookup 40 ns).
Destroying a key here drops both caches; another instance drops its own when its
views fold the event that records the destruction (`forget_cached`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from llm_es.domain.events import Event
from llm_es.domain.personal_data import ERASED, sealing_plan
from llm_es.domain.views import ContextMessage, ContextView
from llm_es.errors import OperationalError
from llm_es.store.kv import bucket_config, ensure_bucket
from llm_es.store.sealing import SealBroken, new_key, open_sealed, seal, sealed_key

KEYS_BUCKET = "llm_keys"
KEY_STORE_PATIENCE_SECONDS = 4.0
"""How long a key lookup waits out a bucket without a leader (an election after a node
was lost takes a few seconds) before the request fails with `OperationalError`."""
KEY_STORE_RETRY_PAUSE_SECONDS = 0.2
OPENED_CACHED = 65_536
"""Opened texts kept in memory (a channel's memories, recent messages); beyond, the oldest go."""

KEY_NAMES_CACHED = 8192
"""Texts whose key names are remembered: the contexts of ~130 busy channels. A text past it
is parsed again (the same answer, ~1 us slower); kept well below OPENED_CACHED, as each
entry holds on to a sealed text the views may have dropped already."""

_key_name = functools.lru_cache(maxsize=KEY_NAMES_CACHED)(sealed_key)
"""`sealed_key`, remembered for the texts met lately: `fetch_keys` asks it of every message
of a channel's context (up to 60) on each turn, and parsing the sealed form costs ~1.2 us a
text against ~0.1 for a cache hit."""


def keys_bucket_config(bucket: str = KEYS_BUCKET, *, replicas: int = 1) -> api.KeyValueConfig:
    """The key bucket's settings: one revision a key, so a purge leaves nothing behind."""
    return bucket_config(
        bucket,
        "llm-es: keys sealing personal data in LLM_EVENTS (destroyed = erased)",
        replicas=replicas,
    )


_T = TypeVar("_T")
_UNAVAILABLE = (
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    TimeoutError,
    NoStreamResponseError,
    APIError,
)
"""What a bucket without a leader (or a server away) answers a key request with."""


class KeyRing:
    """Seal events before they are stored; open sealed text; destroy keys to erase it."""

    def __init__(
        self, js: JetStreamContext, *, bucket: str = KEYS_BUCKET, replicas: int = 1
    ) -> None:
        self._js = js
        self._bucket_name = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._keys: dict[str, bytes] = {}
        self._opened: dict[str, str] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await ensure_bucket(
                self._js, keys_bucket_config(self._bucket_name, replicas=self._replicas)
            )
        return self._kv

    async def _lookup(self, name: str) -> bytes | None:
        try:
            # A reader does not make the bucket: without one, no text was ever sealed.
            kv = self._kv or await self._js.key_value(self._bucket_name)
            entry = await kv.get(name)
        except (BucketNotFoundError, KeyNotFoundError):  # KeyDeletedError too: purged
            return None
        return entry.value or None

    async def _sealing_key(self, name: str) -> bytes:
        """The key to seal under `name`, made now when there is none."""
        key = self._keys.get(name)
        if key is not None:
            return key

        async def fetch_or_create() -> bytes:
            stored = await self._lookup(name)
            if stored is not None:
                return stored
            fresh = new_key()
            try:
                await (await self._bucket()).create(name, fresh)
            except KeyWrongLastSequenceError:  # another writer (or our lost try) made it first
                stored = await self._lookup(name)
                if stored is None:
                    raise
                return stored
            return fresh

        key = await self._patiently(fetch_or_create)
        self._keys[name] = key
        return key

    async def _patiently(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt()`, again while the bucket does not answer, for at most
        `KEY_STORE_PATIENCE_SECONDS`; then OperationalError naming the store. Safe for a
        create too: one that was stored meanwhile fails again as an existing key."""
        deadline = time.monotonic() + KEY_STORE_PATIENCE_SECONDS
        while True:
            try:
                return await attempt()
            except _UNAVAILABLE as exc:
                if time.monotonic() >= deadline:
                    raise OperationalError(
                        f"key store {self._bucket_name} unavailable ({type(exc).__name__})"
                    ) from exc
                await asyncio.sleep(KEY_STORE_RETRY_PAUSE_SECONDS)

    async def _opening_key(self, name: str, *, again: bool = False) -> bytes | None:
        """The key stored under `name`, None when there is none (never made, or destroyed):
        the cached one if any and not `again`, else the bucket's answer (the cache follows it)."""
        if not again and name in self._keys:
            return self._keys[name]
        key = await self._patiently(lambda: self._lookup(name))
        if key is None:
            self._keys.pop(name, None)
        else:
            self._keys[name] = key
        return key

    # ---------------------------------------------------------------- writing

    async def seal_text(self, key_name: str, text: str) -> str:
        """`text` sealed under the key `key_name` (made now if it does not exist), and
        remembered opened: a turn's words come back in its channel's next prompt, which
        would otherwise open them again (two AES-GCM opens and parses a turn: `fetch_keys` took
        56-64 us a turn at concurrency 1 with them, ~20 without)."""
        sealed = seal(await self._sealing_key(key_name), key_name, text)
        self._remember(sealed, text)
        return sealed

    async def seal_event(self, event: Event) -> Event:
        """`event` with its personal text sealed (`sealing_plan`); the same event when none."""
        plan = sealing_plan(event)
        if plan is None:
            return event
        key_name, fields = plan
        changes: dict[str, Any] = {}
        for field in fields:
            text = getattr(event, field)
            if isinstance(text, str) and sealed_key(text) is None:
                changes[field] = await self.seal_text(key_name, text)
        return msgspec.structs.replace(event, **changes) if changes else event

    # ---------------------------------------------------------------- reading

    def open_cached(self, text: str) -> str | None:
        """`text` opened from the caches alone (`ERASED` once known to be); None when its
        key was not fetched yet."""
        # Only sealed values are ever remembered, so a hit needs no parse of `text`.
        opened = self._opened.get(text)
        if opened is not None:
            return opened
        name = _key_name(text)
        if name is None:
            return text
        key = self._keys.get(name)
        if key is None:
            return None
        try:
            opened = open_sealed(key, text)
        except SealBroken:
            return None
        self._remember(text, opened)
        return opened

    def opened_context(self, context: ContextView | None) -> ContextView | None:
        """A channel's context with its text opened from the caches (`fetch_keys` first):
        messages that do not open (erased, or their key not fetched) are left out, and so
        is a summary that does not."""
        if context is None:
            return None
        messages = [
            opened
            for message in context["messages"]
            if (opened := self._opened_message(message)) is not None
        ]
        return {**context, "messages": messages, "summary": self.opened_summary(context)}

    def opened_recent(self, context: ContextView, last: int) -> list[ContextMessage]:
        """The last `last` (>= 1) messages of `opened_context`, without opening the older ones
        (a prompt sends the last few of a history kept for the summarizer, up to 60)."""
        recent: list[ContextMessage] = []
        for message in reversed(context["messages"]):
            if len(recent) == last:
                break
            opened = self._opened_message(message)
            if opened is not None:
                recent.append(opened)
        recent.reverse()
        return recent

    def opened_summary(self, context: ContextView) -> str | None:
        """The context's summary opened from the caches; None when there is none, or it does
        not open."""
        summary = context["summary"]
        if summary is not None:
            summary = self.open_cached(summary)
            summary = None if summary == ERASED else summary
        return summary

    def _opened_message(self, message: ContextMessage) -> ContextMessage | None:
        content = self.open_cached(message["content"])
        if content is None or content == ERASED:
            return None
        return {**message, "content": content}

    @staticmethod
    def context_texts(context: ContextView | None) -> list[str]:
        """The sealed texts of a context the prompt may open (for `fetch_keys`)."""
        if context is None:
            return []
        texts = [m["content"] for m in context["messages"]]
        return texts if context["summary"] is None else [*texts, context["summary"]]

    async def open_text(self, text: str) -> str:
        """The plain text of `text` (as it is when not sealed); `ERASED` when its key is gone."""
        cached = self.open_cached(text)
        if cached is not None:
            return cached
        name = sealed_key(text)
        assert name is not None  # open_cached returns plain text as it is
        # A cached key that fails may be an old one, replaced since: ask the bucket once.
        key = await self._opening_key(name, again=name in self._keys)
        if key is None:
            # Not cached: a replica behind its leader may not have the key yet.
            return ERASED
        try:
            opened = open_sealed(key, text)
        except SealBroken:
            opened = ERASED  # the key it was sealed with is gone for good
        self._remember(text, opened)
        return opened

    async def fetch_keys(self, texts: Iterable[str]) -> None:
        """Fetch the keys of these sealed texts not cached yet (so `open_cached` can open them)."""
        # A turn asks this of its channel's whole context, nearly all of it opened on an
        # earlier turn: one dict lookup a text sets those aside (120 texts: 29 -> 5 us).
        opened = self._opened
        unopened = [text for text in texts if text not in opened]
        for name in {_key_name(t) for t in unopened} - {None} - self._keys.keys():
            assert name is not None
            await self._opening_key(name)
        # Values sealed under a key destroyed and made again (a user erased who came back)
        # are known erased from here on, so `open_cached` stops asking for them.
        for text in unopened:
            if self.open_cached(text) is None and _key_name(text) in self._keys:
                self._remember(text, ERASED)

    async def open_event(self, event: Event) -> Event:
        """`event` with its sealed text opened (`ERASED` where the key is gone)."""
        plan = sealing_plan(event)
        if plan is None:
            return event
        changes: dict[str, Any] = {}
        for field in plan[1]:
            text = getattr(event, field)
            if isinstance(text, str):
                changes[field] = await self.open_text(text)
        return msgspec.structs.replace(event, **changes) if changes else event

    def _remember(self, sealed: str, opened: str) -> None:
        if len(self._opened) >= OPENED_CACHED:
            del self._opened[next(iter(self._opened))]
        self._opened[sealed] = opened

    # ---------------------------------------------------------------- erasing

    async def destroy(self, key_name: str) -> None:
        """Erase every text sealed under `key_name`: purge the key (all its revisions)."""
        await (await self._bucket()).purge(key_name)
        self.forget_cached(key_name)

    def forget_cached(self, key_name: str) -> None:
        """Drop a key from memory (another instance destroyed it); opened texts go too."""
        self._keys.pop(key_name, None)
        self._opened.clear()
