"""The running plugin: wires log, views, providers and the command surface together.

The composition root (with `llm_es.cli`): the one place that may import every
part, the `projections` read side included. `Plugin.start` ensures the stream,
starts the read side, waits until the views include the whole log, closes
turns a crash left open, and only then subscribes the command subjects.
With `http.listen` set it first opens the HTTP listener, `/metrics` and the
dashboard (a port taken stops the start before anything else runs); its
metrics live in a registry of this plugin's own (`PluginMetrics`), the
dashboard's figures in its own fold of the log (`Dashboard`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from llm_es.config import Config
from llm_es.domain.views import ViewRunner
from llm_es.errors import ConfigError, LLMESError
from llm_es.logs import log_kv
from llm_es.metrics import PluginMetrics, Sample
from llm_es.providers import HTTPProvider, build_provider
from llm_es.providers.base import LLMProvider
from llm_es.service.api import LLMServiceAPI
from llm_es.service.chat import ChatService
from llm_es.service.commands import CommandSurface
from llm_es.service.dashboard import Dashboard
from llm_es.service.event_publisher import EventPublisher
from llm_es.service.legacy import LegacySurface
from llm_es.service.log_metrics import LogCounts
from llm_es.service.metrics_http import MetricsListener
from llm_es.store.keyring import KeyRing
from llm_es.store.liveness import InstanceRegistry, new_instance_id
from llm_es.store.log import EventStore
from llm_es.store.sealed_log import SealingEventStore
from projections.runner import build_view_runner

logger = logging.getLogger("llm_es.app")

STARTUP_CATCH_UP_SECONDS = 300.0

ViewRunnerFactory = Callable[[NATS, JetStreamContext, EventStore, Config], ViewRunner]
"""Builds the read side (`projections.runner.build_view_runner` unless a test gives another)."""


def build_providers(config: Config) -> dict[str, LLMProvider]:
    """The default provider, the fallbacks, and any other one with an API key set.

    A hosted provider chosen without an API key stops the start: every call
    would fail with 401.
    """
    wanted = {config.default_provider, *config.fallback_providers}
    if config.providers.openai.api_key:
        wanted.add("openai")
    if config.providers.openrouter.api_key:
        wanted.add("openrouter")
    for name in ("openai", "openrouter"):
        settings = config.providers.openai if name == "openai" else config.providers.openrouter
        hosted = "api.openai.com" in settings.base_url or "openrouter.ai" in settings.base_url
        if name in wanted and hosted and not settings.api_key:
            env = "OPENAI_API_KEY" if name == "openai" else "OPENROUTER_API_KEY"
            raise ConfigError(f"providers.{name}.api_key", f"required for {name} (or set {env})")
    return {name: build_provider(name, config) for name in sorted(wanted)}


async def _stop_parts(*parts: tuple[str, Callable[[], Awaitable[None]] | None]) -> None:
    """Stop each part in turn (None: not running); one that fails is logged and the next
    still stops."""
    for part, stopping in parts:
        if stopping is None:
            continue
        try:
            await stopping()
        except Exception as exc:
            log_kv(logger, "stop_failed", level=logging.WARNING, part=part, error=repr(exc))


class Plugin:
    """One llm-es instance on a NATS connection."""

    def __init__(
        self,
        config: Config,
        nc: NATS,
        *,
        view_runner_factory: ViewRunnerFactory | None = None,
        providers: dict[str, LLMProvider] | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.keyring = KeyRing(self.js, replicas=config.nats.replicas)
        self.store: EventStore = SealingEventStore(
            nc, self.js, self.keyring, replicas=config.nats.replicas
        )
        self._factory = view_runner_factory
        self._providers = providers
        self.views: ViewRunner | None = None
        self.service: ChatService | None = None
        self._surface: CommandSurface | None = None
        self._instance_id = config.service.instance_id or instance_id or new_instance_id()
        self._registry: InstanceRegistry | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._api: LLMServiceAPI | None = None
        self.legacy: LegacySurface | None = None
        self._publisher: EventPublisher | None = None
        self.metrics = PluginMetrics()
        self._log_counts = LogCounts(self.metrics)
        self._listener: MetricsListener | None = None
        self.dashboard: Dashboard | None = None

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where `/metrics` is served (None: no listener)."""
        return None if self._listener is None else self._listener.address

    async def start(self) -> None:
        await self.store.ensure_stream()
        address = self.config.http.address
        if address is not None:
            self.dashboard = Dashboard(
                self.store, self.js, projection_positions=self._projection_positions
            )
            self._listener = MetricsListener(
                self.metrics, *address, refresh=self._sample_metrics, dashboard=self.dashboard
            )
            await self._listener.start()
        try:
            await self._start_serving()
        except BaseException:
            await self._stop_listener()  # the port is free again for the next attempt
            raise

    async def _start_serving(self) -> None:
        factory = self._factory or build_view_runner
        # The read side learns this instance's name from the config (its lease holder id).
        service = dataclasses.replace(self.config.service, instance_id=self._instance_id)
        self.views = factory(
            self.nc, self.js, self.store, dataclasses.replace(self.config, service=service)
        )
        await self.views.start()
        async with asyncio.timeout(STARTUP_CATCH_UP_SECONDS):
            position = await self.views.catch_up()
        # From here on: the counters start at zero, as a Prometheus counter does.
        self._log_counts.follow(self.views)
        if self.dashboard is not None:
            self.dashboard.follow(self.views)
        providers = self._providers if self._providers is not None else build_providers(self.config)
        self._providers = providers
        for each in providers.values():
            if isinstance(each, HTTPProvider):
                each.attempts = self._count_attempt
        self.service = ChatService(
            self.config,
            self.store,
            self.views,
            providers,
            instance_id=self._instance_id,
            metrics=self.metrics,
        )
        self._registry = InstanceRegistry(
            self.js,
            self.service.instance_id,
            self.config.service.instance_ttl_seconds,
            replicas=self.config.nats.replicas,
        )
        await self._registry.start()
        await self.service.close_abandoned_turns(self._registry.is_alive)
        self._sweeper = asyncio.create_task(self._sweep_abandoned_turns(), name="turn-sweeper")
        provider = providers[self.config.default_provider]
        if not await provider.is_available():
            log_kv(
                logger,
                "provider_unavailable",
                level=logging.WARNING,
                provider=provider.name,
                note="chat turns will fail until it answers",
            )
        # Before the command subjects: the first publisher ever starts at the log's end
        # as it is now, so every event of a command served from here on is published.
        if self.config.service.publish_events:
            self._publisher = EventPublisher(
                self.nc,
                self.js,
                self.store,
                self.config,
                instance_id=self.service.instance_id,
                # The same leases bucket as the views: its max_age is one TTL for both.
                lease_ttl_seconds=self.config.service.instance_ttl_seconds,
                feed=self.views,
                metrics=self.metrics,
            )
            await self._publisher.start()
        self._surface = CommandSurface(self.nc, self.service, self.config)
        await self._surface.start()
        views = self.views
        publisher = self._publisher
        readers = {} if publisher is None else {"event_publisher": lambda: publisher.crashed}
        self._api = LLMServiceAPI(
            self.nc,
            self.service,
            self.store,
            self.config,
            readers=readers,
            views_position=lambda: views.position,
        )
        await self._api.start()
        self.legacy = LegacySurface(self.nc, self.service, self.config)
        await self.legacy.start()
        log_kv(logger, "plugin_started", log_position=position, provider=provider.name)

    def _count_attempt(self, provider: str, status: str, retried: bool) -> None:
        self.metrics.provider_calls.labels(provider, status).inc()
        if retried:
            self.metrics.provider_retries.labels(provider, status).inc()

    def _projection_positions(self) -> dict[str, int]:
        return {} if self.views is None else self.views.projection_positions()

    async def _sample_metrics(self) -> None:
        """The gauges' values now (one stream info request for the log's size)."""
        size = await self.store.size()
        views, registry = self.views, self._registry
        last_beat = registry.last_beat if registry is not None else None
        self.metrics.sample(
            Sample(
                log_last_seq=size.last_seq,
                log_messages=size.messages,
                log_bytes=size.bytes,
                projection_positions=self._projection_positions(),
                views_lease_held=views is not None and views.lease_held(),
                publisher_lease_held=self._publisher is not None and self._publisher.is_leader,
                heartbeat_age_seconds=None if last_beat is None else time.monotonic() - last_beat,
                turns_in_flight=0 if self.service is None else len(self.service.turns.in_flight),
            )
        )

    async def _sweep_abandoned_turns(self) -> None:
        """Close, from time to time, turns whose instance died (crash, kill -9, partition)."""
        assert self.service is not None
        assert self._registry is not None
        interval = max(1.0, self.config.service.instance_ttl_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.service.close_abandoned_turns(self._registry.is_alive)
            except (LLMESError, TimeoutError, nats.errors.Error) as exc:
                log_kv(logger, "sweep_failed", level=logging.WARNING, error=repr(exc))

    async def stop(self) -> None:
        """Stop every part, the last started first. A part that fails to stop (its NATS
        connection already gone, say) is logged and the rest still stop; the provider
        pools' sockets and the HTTP listener are released even when the stop itself is
        cut short (cancelled while in-flight commands drain)."""
        api, legacy, surface = self._api, self.legacy, self._surface
        registry, publisher, views = self._registry, self._publisher, self.views
        self._api, self.legacy, self._surface = None, None, None
        self._registry, self._publisher, self.views = None, None, None
        try:
            await _stop_parts(
                ("service_api", None if api is None else api.stop),
                ("legacy", None if legacy is None else legacy.stop),
                ("commands", None if surface is None else surface.stop),
                ("service", self._stop_service),
                ("registry", None if registry is None else registry.stop),
                ("event_publisher", None if publisher is None else publisher.stop),
                ("log_counts", self._stop_log_counts),
                ("views", None if views is None else views.stop),
            )
        finally:
            providers = (self._providers or {}).items()
            await _stop_parts(
                *((f"provider {name}", provider.aclose) for name, provider in providers),
                ("http", self._stop_listener),
            )
        log_kv(logger, "plugin_stopped")

    async def _stop_service(self) -> None:
        if self.service is not None:
            await self.service.aclose()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    async def _stop_log_counts(self) -> None:
        self._log_counts.stop()

    async def _stop_listener(self) -> None:
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
