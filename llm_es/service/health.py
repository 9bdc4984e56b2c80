"""The health probe behind `rosey.llm.status`: provider and event log checked off the request path.

`status` makes no provider call of its own; it reads what the last probe found
(at start, then every `HEALTH_PROBE_SECONDS`), and asks the log's readers (`ReaderCheck`:
the views, the event publisher) whether they are down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import nats.errors

from llm_es.errors import LLMESError, ProviderError
from llm_es.logs import log_kv
from llm_es.service.chat import ChatService
from llm_es.store.log import EventStore

logger = logging.getLogger("llm_es.service.health")

HEALTH_PROBE_SECONDS = 30.0

ReaderCheck = Callable[[], bool]
"""Whether one reader of the log is down (True: `status` says not healthy)."""


class ViewsStall:
    """A `ReaderCheck` for the views: down when they have not reached, by one probe, the
    log's end as the probe before saw it (`HEALTH_PROBE_SECONDS` to fold what was there)."""

    def __init__(self, position: Callable[[], int]) -> None:
        self._position = position
        self._wanted = 0
        self._stalled = False

    def observe(self, log_end: int) -> None:
        """A probe read the log's end: the views must reach it by the next one."""
        self._stalled = self._position() < self._wanted
        self._wanted = log_end

    def __call__(self) -> bool:
        return self._stalled


class HealthProbe:
    """Whether the default provider answers, the log can be read and its readers run."""

    def __init__(
        self,
        chat: ChatService,
        store: EventStore,
        *,
        readers: Mapping[str, ReaderCheck],
        views: ViewsStall,
    ) -> None:
        self._chat = chat
        self._store = store
        self._readers = dict(readers)
        self._views = views
        self._readers.setdefault("views", views)
        self._provider_ok = False
        self._log_ok = False
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._provider_ok and self._log_ok and not self.readers_down()

    def readers_down(self) -> list[str]:
        """The readers of the log that are down now (named as given)."""
        return [name for name, down in self._readers.items() if down()]

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
            # The log's own subjects: an operator may have added others to its stream,
            # which no reader of the log ever sees.
            log_end = await self._store.last_seq(f"{self._store.prefix}.>")
        except (nats.errors.Error, LLMESError, TimeoutError):
            self._log_ok = False
            return
        self._log_ok = True
        self._views.observe(log_end)
        down = self.readers_down()
        if down:
            log_kv(logger, "log_readers_down", level=logging.ERROR, readers=",".join(down))

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            try:
                await self._probe()
            except (ProviderError, OSError) as exc:  # never let the probe die
                self._provider_ok = False
                log_kv(logger, "health_probe_failed", level=logging.WARNING, error=repr(exc))
