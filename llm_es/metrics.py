"""The plugin's Prometheus metrics: one registry per running plugin and every metric in it.

Three sources fill them (docs/metrics.md lists each metric and its labels):

- the log: `llm_es.service.log_metrics.LogCounts` follows the views' fold and
  counts turns, tokens and events as the log records them;
- the turn path: the service observes latencies and counts provider attempts
  (an increment or an observation: no I/O, nothing awaited);
- a scrape: `sample` sets the gauges (log size, views lag, leases, heartbeat)
  just before the exposition is written.

Label values are bounded names (outcomes, error types, providers, models, event
types, projections), never a user's or a channel's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "llm_es"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Seconds: from the plugin's own millisecond overhead to a slow model's minute."""

UNKNOWN = "unknown"
"""A label value the log does not record (the purpose of a rejected turn, say)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What the gauges show, read at scrape time by the composition root."""

    log_last_seq: int
    log_messages: int
    log_bytes: int
    projection_positions: Mapping[str, int]
    views_lease_held: bool
    publisher_lease_held: bool
    heartbeat_age_seconds: float | None
    turns_in_flight: int


class _SampledCounter(Collector):
    """A counter the plugin already keeps, read when scraped (never on the turn path)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class PluginMetrics:
    """Every metric of one plugin instance, in a registry of its own (not the global default,
    so several plugins in one process, as in the tests, each expose only their own)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(
                f"{PREFIX}_{name}", doc, labels, registry=registry, buckets=LATENCY_BUCKETS
            )

        # From the log (every instance folds the whole log: each counts every instance's turns).
        self.turns = counter(
            "turns",
            "Turns ended in the log since this instance started: outcome completed, failed"
            " (reason: the error type) or rejected (reason: the window).",
            ("outcome", "reason", "purpose"),
        )
        self.tokens = counter(
            "tokens",
            "Tokens spent in the log since this instance started (kind: prompt or completion).",
            ("provider", "model", "kind"),
        )
        self.events_appended = counter(
            "events_appended",
            "Events appended to the log since this instance started, by event type.",
            ("type",),
        )
        # This instance's own.
        self.provider_calls = counter(
            "provider_calls",
            "HTTP calls to providers by this instance, retries included (status: the HTTP"
            " status, or unavailable, timeout, bad_response, stream_broken).",
            ("provider", "status"),
        )
        self.provider_retries = counter(
            "provider_retries",
            "Provider calls tried again after a failure, by the status that failed.",
            ("provider", "status"),
        )
        self.events_published = counter(
            "events_published",
            "Events this instance published on rosey.event.llm.* (type: the subject's last part).",
            ("type",),
        )
        self.turn_seconds = histogram(
            "turn_seconds",
            "Admitted turns from request to reply: total, provider (the calls), own (the rest).",
            ("part",),
        )
        self.first_chunk_seconds = histogram(
            "turn_first_chunk_seconds",
            "Streamed turns: from the request to the first piece passed on.",
        )
        self.append_seconds = histogram(
            "append_seconds", "Appends: from sending events until the views include them."
        )
        self.provider_seconds = histogram(
            "provider_seconds",
            "A turn's provider calls (fallbacks and retries included), by the provider that"
            " answered or failed last, and outcome ok or failed.",
            ("provider", "outcome"),
        )
        self.turn_total = self.turn_seconds.labels("total")
        self.turn_provider = self.turn_seconds.labels("provider")
        self.turn_own = self.turn_seconds.labels("own")
        # Gauges, set by `sample` when scraped.
        self.turns_in_flight = gauge("turns_in_flight", "Turns this instance is running now.")
        self.views_lag = gauge(
            "views_lag_events",
            "Log end minus the position this instance's fold has reached, per projection.",
            ("projection",),
        )
        self.views_lease = gauge(
            "views_lease_held", "1 while this instance holds the views lease (writes the views)."
        )
        self.publisher_lease = gauge(
            "publisher_lease_held",
            "1 while this instance holds the event publisher lease (publishes rosey.event.llm.*).",
        )
        self.heartbeat_age = gauge(
            "heartbeat_age_seconds", "Seconds since this instance's last stored heartbeat."
        )
        self.log_messages = gauge("log_messages", "Messages in the event log stream.")
        self.log_bytes = gauge("log_bytes", "Bytes of the event log stream.")

    def count_admission_conflicts(self, read: Callable[[], float]) -> None:
        """Expose the admission's own conflict count (kept by the service)."""
        self.registry.register(
            _SampledCounter(
                f"{PREFIX}_admission_conflicts",
                "Admissions that lost a race for a user's position in the log and were retried.",
                read,
            )
        )

    def sample(self, sample: Sample) -> None:
        """Set the gauges from what the plugin read at scrape time."""
        self.turns_in_flight.set(sample.turns_in_flight)
        for projection, position in sample.projection_positions.items():
            self.views_lag.labels(projection).set(max(0, sample.log_last_seq - position))
        self.views_lease.set(int(sample.views_lease_held))
        self.publisher_lease.set(int(sample.publisher_lease_held))
        if sample.heartbeat_age_seconds is not None:
            self.heartbeat_age.set(sample.heartbeat_age_seconds)
        self.log_messages.set(sample.log_messages)
        self.log_bytes.set(sample.log_bytes)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (CPU only: no I/O)."""
        return generate_latest(self.registry)
