"""The health probe behind `rosey.llm.status`: provider and event log checked off the request path.

`status` makes no provider call of its own; it reads what the last probe found
(at start, then every `HEALTH_PROBE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors

from llm_es.errors import LLMESError, ProviderError
from llm_es.logs import log_kv
from llm_es.service.chat import ChatService
from llm_es.store.log import EventStore

logger = logging.getLogger("llm_es.service.health")

HEALTH_PROBE_SECONDS = 30.0


class HealthProbe:
    """Whether the default provider answers and the log can be read, refreshed in the background."""

    def __init__(self, chat: ChatService, store: EventStore) -> None:
        self._chat = chat
        self._store = store
        self._provider_ok = False
        self._log_ok = False
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._provider_ok and self._log_ok

    async def start(self) -> None:
        """Probe once (so the first `status` is already true), then keep probing."""
        await self._probe()
        self._task = asyncio.create_task(self._probe_forever(), name="health-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _probe(self) -> None:
        provider = self._chat.provider_chain()[0]
        self._provider_ok = await provider.is_available()
        try:
            await self._store.last_seq()
        except (nats.errors.Error, LLMESError, TimeoutError):
            self._log_ok = False
        else:
            self._log_ok = True

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            try:
                await self._probe()
            except (ProviderError, OSError) as exc:  # never let the probe die
                self._provider_ok = False
                log_kv(logger, "health_probe_failed", level=logging.WARNING, error=repr(exc))
