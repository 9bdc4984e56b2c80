"""A turn's latency metrics: time to the first piece streamed, and the split of its total."""

from __future__ import annotations

import time

from llm_es.metrics import PluginMetrics
from llm_es.service.fallback import ChunkSink


def timing_first_chunk(
    on_chunk: ChunkSink | None, started: float, metrics: PluginMetrics
) -> ChunkSink | None:
    """`on_chunk`, observing the time from `started` to the first piece passed on."""
    if on_chunk is None:
        return None
    first_chunk = metrics.first_chunk_seconds
    waiting = True

    async def passed_on(piece: str) -> None:
        nonlocal waiting
        if waiting:
            waiting = False
            first_chunk.observe(time.perf_counter() - started)
        await on_chunk(piece)

    return passed_on


def observe_turn(metrics: PluginMetrics, started: float, provider_seconds: float) -> None:
    """An admitted turn's latency: in all, at the providers, and the plugin's own."""
    total = time.perf_counter() - started
    metrics.turn_total.observe(total)
    metrics.turn_provider.observe(provider_seconds)
    metrics.turn_own.observe(max(0.0, total - provider_seconds))
