"""Benchmark of the `rosey.llm.*` service with one and two instances, and of admission alone.

Starts, each in its own process: a nats-server (JetStream, file storage, temp
dir), the zero-delay fake Ollama (`bench/fake_ollama.py`) and one or two
`llm-es serve` on that server with the same config (rate limits off). Then:

1. Admission in isolation, on a fresh stream of its own (`BENCH_ADMIT`, same
   server, same stream settings as `LLM_EVENTS`): (a) uncontended, one writer,
   one request at a time: `decide_admission` + the conditional append of its
   `TurnAdmitted` on the user's boundary; (b) bursts of 32 concurrent
   admissions for ONE user through 1, 2 or 3 simulated instances. A simulated
   instance runs the plugin's own code: `llm_es.service.admission.Admission`
   (decide, conditional append, on conflict catch up and decide again,
   jittered; a per-user lock) over `projections.runner.ViewRunner` folding the
   usage view, with and without the per-user lock shared between requests:
   conflict retries per admitted turn, latencies, livelock.
2. `rosey.llm.chat` through NATS, closed loop, distinct users, at each
   concurrency, with one instance and with two (the second started and
   stopped every round, the order alternating), plus bursts of 32 concurrent
   chats for one user; then every successful turn is checked in the log.
3. Admission in isolation again, now on `LLM_EVENTS` as phase 2 left it (the
   plugins stopped), to see whether a populated log slows the conditional
   append on a wildcard boundary.

Progress goes to stderr, one JSON object to stdout; see bench/README.md.

    /work/venv/bin/python bench/service.py --repeat 3 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import pathlib
import platform
import statistics
import sys
import time
import uuid
from datetime import datetime
from importlib import metadata
from typing import Any

import nats
import nats.errors
import orjson
import turns
from nats.aio.client import Client as NATS
from turns import CellSpec, Child, Op, llm_es_command, percentile, run_cell, summarize

from llm_es.config import RateLimitsConfig, ServiceConfig
from llm_es.domain.events import Event, TurnAdmitted, utc_now
from llm_es.domain.limits import TurnRequest, decide_admission, estimate_tokens
from llm_es.embedded import EmbeddedNatsServer, server_version
from llm_es.errors import IntegrityError, OperationalError
from llm_es.headers import LLM_TURN_ID
from llm_es.service.admission import Admission
from llm_es.service.recording import Recorder
from llm_es.status import gather_replies, instances_status
from llm_es.store.log import STREAM_NAME, SUBJECT_PREFIX, EventStore
from projections.runner import ViewRunner
from projections.usage import UsageProjection

SERVICE_CHAT_SUBJECT = "rosey.llm.chat"
SERVICE_PING_SUBJECT = "$SRV.PING.rosey-llm"
ADMISSION_COUNTERS = ("admitted", "rejected", "admission_conflicts")
ADMIT_STREAM = "BENCH_ADMIT"
ADMIT_PREFIX = "bench.admit"
BURST_SIZE = 32
ANSWER_WITHIN_SECONDS = 1.0
ADMIT_RETRIES = ServiceConfig().admit_retries
MAX_TOKENS = ServiceConfig().max_tokens
ADMIT_WAIT_SECONDS = 10.0
PING_COLLECT_SECONDS = 0.3
TARGET_ADMISSION_P50_US = 500.0
TARGET_CONCURRENCY = 32
# Limits of the one-user bursts: everything admitted, the minute window still checked.
BURST_LIMITS = RateLimitsConfig(
    requests_per_minute=100_000, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)

QUIET = False


def progress(*parts: object) -> None:
    if not QUIET:
        print("[service]", *parts, file=sys.stderr, flush=True)


def stats_us(values: list[float]) -> dict[str, float | None]:
    """p50/p99/mean/max of durations in seconds, as microseconds."""
    if not values:
        return {"p50_us": None, "p99_us": None, "mean_us": None, "max_us": None}
    ordered = sorted(values)
    return {
        "p50_us": round(percentile(ordered, 50) * 1e6, 1),
        "p99_us": round(percentile(ordered, 99) * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
        "max_us": round(ordered[-1] * 1e6, 1),
    }


def stats_ms(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max of durations in seconds, as milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


# ---------------------------------------------------------------- admission in isolation


@dataclasses.dataclass
class AdmitResult:
    """One admission: how it ended and what it took."""

    admitted: bool
    attempts: int
    conflicts: int
    decide_s: float = 0.0
    """decide_admission of the attempt that succeeded (one admission at a time only)."""
    append_s: float = 0.0
    """The conditional append of the attempt that succeeded."""
    visible_s: float = 0.0
    """From the successful append's ack until this instance's view includes it."""


class TimedStore(EventStore):
    """The plugin's event store, timing and counting each turn's conditional appends.

    The admission runs unchanged; only the store it is handed watches it work.
    """

    def __init__(self, nc: NATS, js: Any, *, stream: str, prefix: str) -> None:
        super().__init__(nc, js, stream=stream, prefix=prefix)
        self.attempts: collections.Counter[str] = collections.Counter()
        self.conflicts: collections.Counter[str] = collections.Counter()
        self.appended: dict[str, tuple[float, float]] = {}
        """Turn id -> (start, ack) of its successful conditional append."""

    async def append(
        self, event: Event, *, expected_last_seq: int | None = None, boundary: str | None = None
    ) -> int:
        if expected_last_seq is None or not isinstance(event, TurnAdmitted):
            return await super().append(
                event, expected_last_seq=expected_last_seq, boundary=boundary
            )
        turn = event.turn_id
        self.attempts[turn] += 1
        started = time.perf_counter()
        try:
            seq = await super().append(
                event, expected_last_seq=expected_last_seq, boundary=boundary
            )
        except IntegrityError:
            self.conflicts[turn] += 1
            raise
        self.appended[turn] = (started, time.perf_counter())
        return seq


class DecideClock:
    """The admission's clock, noting when it was last read: right before decide_admission."""

    def __init__(self) -> None:
        self.last_read = 0.0

    def __call__(self) -> datetime:
        self.last_read = time.perf_counter()
        return utc_now()


class AdmissionInstance:
    """One simulated plugin instance: its own connection, the plugin's read side and the
    plugin's admission (`llm_es.service.admission.Admission`), run as the plugin runs it.

    The read side is `projections.runner.ViewRunner` with the usage projection only,
    folding the log into a KV bucket of its own (writes off the request path, as in
    the plugin). Without the per-user lock, each request gets an `Admission` of its
    own, so no lock is shared and every request races (the worst case).
    """

    def __init__(
        self,
        nc: NATS,
        store: TimedStore,
        views: ViewRunner,
        limits: RateLimitsConfig,
        *,
        per_user_lock: bool,
    ) -> None:
        self.nc = nc
        self.store = store
        self.views = views
        self.limits = limits
        self.per_user_lock = per_user_lock
        self.recorder = Recorder(store, views)
        self.clock = DecideClock()
        self.admission = self.new_admission()
        self.prompt_estimate = estimate_tokens(len(turns.SYSTEM_PROMPT) + len(turns.MESSAGE))

    @classmethod
    async def connect(
        cls,
        url: str,
        stream: str,
        prefix: str,
        limits: RateLimitsConfig,
        *,
        per_user_lock: bool,
        bucket: str,
    ) -> AdmissionInstance:
        nc = await nats.connect(url, name="bench-admission")
        js = nc.jetstream()
        store = TimedStore(nc, js, stream=stream, prefix=prefix)
        # Recent requests kept as the plugin sizes them: its largest request window.
        usage = UsageProjection(keep_requests=limits.requests_per_minute or 0)
        views = ViewRunner(js, store, [usage], bucket=bucket)
        await views.start()
        async with asyncio.timeout(ADMIT_WAIT_SECONDS * 6):
            await views.catch_up()
        return cls(nc, store, views, limits, per_user_lock=per_user_lock)

    def new_admission(self) -> Admission:
        return Admission(self.recorder, self.limits, retries=ADMIT_RETRIES, clock=self.clock)

    async def close(self) -> None:
        await self.views.stop()
        await self.nc.close()

    def request(self, user: str) -> TurnRequest:
        return TurnRequest(
            turn_id=uuid.uuid4().hex,
            channel="bench-admit",
            user=user,
            source="service",
            persona="default",
            provider="ollama",
            model="fake",
            message=turns.MESSAGE,
            instance="bench-admission",
        )

    async def admit(self, user: str) -> AdmitResult:
        """The plugin's `Admission.admit_turn`, with what the store and clock saw of it."""
        admission = self.admission if self.per_user_lock else self.new_admission()
        request = self.request(user)
        turn = request.turn_id
        try:
            decision = await admission.admit_turn(request, self.prompt_estimate, MAX_TOKENS)
            finished = time.perf_counter()
        finally:
            attempts = self.store.attempts.pop(turn, 0)
            conflicts = self.store.conflicts.pop(turn, 0)
            appended = self.store.appended.pop(turn, None)
        if not isinstance(decision, TurnAdmitted) or appended is None:
            return AdmitResult(False, attempts, conflicts)
        append_started, acked = appended
        return AdmitResult(
            True,
            attempts,
            conflicts,
            decide_s=append_started - self.clock.last_read,
            append_s=acked - append_started,
            visible_s=finished - acked,
        )


def views_bucket(tag: str, index: int) -> str:
    """A KV bucket of its own for each simulated instance's views."""
    return f"bench_views_{tag}_{index}".replace(".", "_")


async def uncontended_admissions(
    url: str, stream: str, prefix: str, count: int, tag: str
) -> dict[str, Any]:
    """(a) one writer, one admission at a time; users rotate every 100 (like turns.py).

    Interleaved with each admission, the same kind of event is appended without a
    condition (to other users), so the cost of the condition itself shows.
    """
    instance = await AdmissionInstance.connect(
        url, stream, prefix, BURST_LIMITS, per_user_lock=True, bucket=views_bucket(tag, 0)
    )
    try:
        warm = max(10, count // 10)
        results: list[AdmitResult] = []
        plain: list[float] = []
        for i in range(warm + count):
            rotation = i // turns.USER_ROTATION_TURNS
            result = await instance.admit(f"bench-admit-{tag}-{rotation}")
            event = instance.request(f"bench-admit-{tag}-plain-{rotation}")
            decision = decide_admission(
                event,
                None,
                instance.limits,
                now=utc_now(),
                prompt_tokens_estimate=instance.prompt_estimate,
                max_tokens=MAX_TOKENS,
            )
            started = time.perf_counter()
            await instance.store.append(decision)
            if i >= warm:
                plain.append(time.perf_counter() - started)
                results.append(result)
    finally:
        await instance.close()
    decide = [r.decide_s for r in results]
    append = [r.append_s for r in results]
    return {
        "admissions": len(results),
        "conflicts": sum(r.conflicts for r in results),
        "decide_and_append": stats_us([r.decide_s + r.append_s for r in results]),
        "decide": stats_us(decide),
        "conditional_append": stats_us(append),
        "unconditional_append": stats_us(plain),
        "until_own_view_includes_it": stats_us(
            [r.decide_s + r.append_s + r.visible_s for r in results]
        ),
    }


async def one_user_bursts(
    url: str,
    stream: str,
    prefix: str,
    *,
    instances: int,
    per_user_lock: bool,
    bursts: int,
    tag: str,
) -> dict[str, Any]:
    """(b) bursts of BURST_SIZE concurrent admissions for one (fresh) user, spread
    round-robin over `instances` simulated instances."""
    writers = [
        await AdmissionInstance.connect(
            url,
            stream,
            prefix,
            BURST_LIMITS,
            per_user_lock=per_user_lock,
            bucket=views_bucket(tag, index),
        )
        for index in range(instances)
    ]
    latencies: list[float] = []
    results: list[AdmitResult] = []
    failures: collections.Counter[str] = collections.Counter()
    burst_seconds: list[float] = []
    try:
        for burst in range(bursts):
            user = f"bench-admit-{tag}-burst{burst}"

            async def one(index: int, started: float, user: str = user) -> None:
                try:
                    result = await writers[index % instances].admit(user)
                except (OperationalError, TimeoutError) as exc:
                    failures[type(exc).__name__] += 1
                    return
                latencies.append(time.perf_counter() - started)
                results.append(result)

            started = time.perf_counter()
            await asyncio.gather(*(one(i, started) for i in range(BURST_SIZE)))
            burst_seconds.append(time.perf_counter() - started)
    finally:
        for writer in writers:
            await writer.close()
    admitted = sum(r.admitted for r in results)
    conflicts = sum(r.conflicts for r in results)
    answered_in_time = sum(latency <= ANSWER_WITHIN_SECONDS for latency in latencies)
    return {
        "instances": instances,
        "per_user_lock": per_user_lock,
        "bursts": bursts,
        "requests": bursts * BURST_SIZE,
        "admitted": admitted,
        "failed": dict(failures),
        "conflicts": conflicts,
        "conflicts_per_admitted": round(conflicts / admitted, 3) if admitted else None,
        "max_attempts": max((r.attempts for r in results), default=None),
        "latency_from_burst_start": stats_ms(latencies),
        "burst_duration": stats_ms(burst_seconds),
        "admissions_per_s": round(admitted / sum(burst_seconds), 1) if burst_seconds else None,
        "answered_within_1s": answered_in_time,
        "all_answered_within_1s": answered_in_time == bursts * BURST_SIZE,
    }


BURST_VARIANTS = (
    # (instances, per-user lock): the plugin holds the lock; without it every request races.
    (1, True),
    (2, True),
    (3, True),
    (2, False),
)


async def admission_report(
    url: str, stream: str, prefix: str, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        # nats-py's StreamState has no num_subjects: ask the API directly.
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5.0)
        state = orjson.loads(reply.data)["state"]
        before = {"messages": state["messages"], "subjects": state.get("num_subjects")}
    finally:
        await nc.close()
    progress(f"admission on {stream} ({before['messages']} events, {before['subjects']} subjects)")
    report: dict[str, Any] = {"stream": stream, "stream_before": before}
    report["uncontended"] = await uncontended_admissions(
        url, stream, prefix, args.admissions, f"{tag}-solo"
    )
    solo = report["uncontended"]["decide_and_append"]
    progress(f"  uncontended: decide+append p50 {solo['p50_us']} us p99 {solo['p99_us']} us")
    bursts: dict[str, Any] = {}
    for instances, lock in BURST_VARIANTS:
        name = f"instances{instances}_{'locked' if lock else 'unlocked'}"
        bursts[name] = await one_user_bursts(
            url,
            stream,
            prefix,
            instances=instances,
            per_user_lock=lock,
            bursts=args.bursts,
            tag=f"{tag}-{name}",
        )
        cell = bursts[name]
        progress(
            f"  one user x{BURST_SIZE} {name}: {cell['conflicts_per_admitted']} conflicts/turn, "
            f"max {cell['latency_from_burst_start']['max_ms']} ms, "
            f"all within 1 s: {cell['all_answered_within_1s']}"
        )
    report["one_user_bursts"] = bursts
    return report


# ---------------------------------------------------------------- the service through NATS


class ServiceOps:
    """`rosey.llm.chat` requests; every success's turn id must be new (answered once)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.turn_ids: set[str] = set()
        self.duplicates = 0
        self.turns_by_identity: collections.Counter[str] = collections.Counter()

    def user_for(self, identity: str) -> str:
        done = self.turns_by_identity[identity]
        self.turns_by_identity[identity] += 1
        return f"{identity}-{done // turns.USER_ROTATION_TURNS}"

    async def request(self, channel: str, user: str, message: str) -> str | None:
        payload = orjson.dumps({"channel": channel, "user": user, "message": message})
        try:
            reply = await self.nc.request(
                SERVICE_CHAT_SUBJECT, payload, timeout=turns.TURN_TIMEOUT_SECONDS
            )
        except nats.errors.TimeoutError:
            return "timeout"
        except nats.errors.NoRespondersError:
            return "no responders"
        answer = orjson.loads(reply.data)
        if not answer.get("success"):
            return str(answer.get("error"))[:100]
        turn_id = (reply.headers or {})[LLM_TURN_ID]
        if turn_id in self.turn_ids:
            self.duplicates += 1
        self.turn_ids.add(turn_id)
        return None

    def chat(self, spec: CellSpec) -> Op:
        async def turn(worker: int, i: int) -> str | None:
            user = self.user_for(f"bench-svc-c{spec.concurrency}-u{worker}")
            return await self.request(
                f"bench-svc-c{spec.concurrency}-ch{worker}", user, f"{turns.MESSAGE} #{i}"
            )

        return turn

    async def one_user_burst(self, tag: str) -> tuple[list[float], list[str]]:
        """BURST_SIZE concurrent chats for one new user (own channels): latencies, errors."""
        user = f"bench-svc-burst-{tag}"
        latencies: list[float] = []
        errors: list[str] = []

        async def one(index: int, started: float) -> None:
            error = await self.request(f"bench-svc-burst-ch{index}", user, turns.MESSAGE)
            if error is None:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(error)

        started = time.perf_counter()
        await asyncio.gather(*(one(i, started) for i in range(BURST_SIZE)))
        return latencies, errors


async def service_instances(nc: NATS) -> int:
    """How many `rosey-llm` instances answer `$SRV.PING`."""
    replies = await gather_replies(nc, SERVICE_PING_SUBJECT, seconds=PING_COLLECT_SECONDS)
    return len({str(orjson.loads(data).get("id")) for data in replies})


async def admission_counters(nc: NATS) -> dict[str, dict[str, int]]:
    """Each instance's admission counters (`$SRV.STATS`, as `llm-es status` reads them)."""
    return {
        str(running["instance"]): {name: int(running[name] or 0) for name in ADMISSION_COUNTERS}
        for running in await instances_status(nc)
    }


async def wait_for_instances(nc: NATS, wanted: int, plugins: list[Child]) -> float:
    started = time.perf_counter()
    async with asyncio.timeout(turns.READY_TIMEOUT_SECONDS):
        while True:
            for plugin in plugins:
                if plugin.pid is None:
                    raise RuntimeError(f"{plugin.name} exited; log:\n{plugin.tail()}")
            if await service_instances(nc) == wanted:
                return time.perf_counter() - started
            await asyncio.sleep(0.1)


def plugin_config(llm_url: str) -> dict[str, Any]:
    """turns.py's config (fake LLM, limits off), without background summaries, whose
    provider calls would land on whichever instance happens to serve a channel."""
    config = turns.plugin_config(llm_url)
    config.setdefault("service", {})["summarize_after_messages"] = None
    return config


async def run_service(
    args: argparse.Namespace, url: str, workdir: pathlib.Path, server_pid: int | None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in turns.SCRUBBED_ENV}
    async with contextlib.AsyncExitStack() as stack:
        fake = [sys.executable, str(turns.BENCH_DIR / "fake_ollama.py"), "--port", "0"]
        llm = Child("fake-llm", fake, workdir / "fake_ollama.log")
        stack.push_async_callback(llm.stop)
        line = await llm.start(ready_prefix="LISTENING", env=env)
        llm_url = f"http://127.0.0.1:{line.split()[1]}"
        config_path = workdir / "config.json"
        config_path.write_bytes(orjson.dumps(plugin_config(llm_url)))
        argv = [*llm_es_command(), "serve", "--nats-url", url, "--config", str(config_path)]
        argv += ["--log-level", args.plugin_log_level]

        def new_plugin(number: int, start: int) -> Child:
            return Child(f"plugin{number}", argv, workdir / f"plugin{number}-{start}.log")

        first = new_plugin(1, 0)
        stack.push_async_callback(first.stop)
        await first.start(env=env, cwd=workdir)
        nc = await nats.connect(url, name="bench-service-client")
        stack.push_async_callback(nc.close)
        waited = await wait_for_instances(nc, 1, [first])
        progress(f"plugin1 ready after {waited:.1f}s (pid {first.pid})")
        ops = ServiceOps(nc)
        specs = [CellSpec(f"chat_c{c}", "chat", c) for c in args.concurrency]
        for spec in specs:
            await run_cell(
                ops.chat(spec),
                spec.concurrency,
                seconds=60.0,
                total_ops=args.warm * spec.concurrency,
                pids={},
            )
        progress(f"warmed up: {args.warm} ops per worker per cell")

        rounds: list[dict[str, dict[str, Any]]] = []
        burst_latencies: dict[str, list[float]] = {
            "i1": [],
            "i2": [],
            "i1_bursts": [],
            "i2_bursts": [],
        }
        burst_errors: dict[str, collections.Counter[str]] = {
            "i1": collections.Counter(),
            "i2": collections.Counter(),
        }

        admissions = {label: dict.fromkeys(ADMISSION_COUNTERS, 0) for label in ("i1", "i2")}

        async def measure(
            label: str, pids: dict[str, int | None], round_index: int
        ) -> dict[str, dict[str, Any]]:
            measured: dict[str, dict[str, Any]] = {}
            before = await admission_counters(nc)
            for spec in specs:
                cell = await run_cell(
                    ops.chat(spec),
                    spec.concurrency,
                    seconds=args.seconds,
                    total_ops=args.turns,
                    pids=pids,
                )
                measured[f"{label}_{spec.name}"] = cell
                progress(
                    f"round {round_index + 1}/{args.repeat} {label}_{spec.name}: "
                    f"{cell['per_s']}/s p50 {cell['p50_ms']} ms p99 {cell['p99_ms']} ms "
                    f"errors {cell['errors']}"
                )
            for burst in range(args.plugin_bursts):
                started = time.perf_counter()
                latencies, errors = await ops.one_user_burst(f"{label}-r{round_index}-b{burst}")
                burst_latencies[f"{label}_bursts"].append(time.perf_counter() - started)
                burst_latencies[label].extend(latencies)
                burst_errors[label].update(errors)
            after = await admission_counters(nc)
            for instance, counts in after.items():
                earlier = before.get(instance, {})
                for name in ADMISSION_COUNTERS:
                    admissions[label][name] += counts[name] - earlier.get(name, 0)
            return measured

        for round_index in range(args.repeat):
            measured: dict[str, dict[str, Any]] = {}
            base_pids = {"plugin1": first.pid, "nats_server": server_pid, "llm": llm.pid}
            # ABBA: drift on the machine hits one and two instances alike.
            one_first = round_index % 2 == 0
            if one_first:
                measured |= await measure("i1", {**base_pids, "plugin2": None}, round_index)
            second = new_plugin(2, round_index)
            try:
                await second.start(env=env, cwd=workdir)
                waited = await wait_for_instances(nc, 2, [first, second])
                progress(f"plugin2 ready after {waited:.1f}s (pid {second.pid})")
                measured |= await measure("i2", {**base_pids, "plugin2": second.pid}, round_index)
            finally:
                await second.stop()
            await wait_for_instances(nc, 1, [first])
            if not one_first:
                measured |= await measure("i1", {**base_pids, "plugin2": None}, round_index)
            if first.pid is None:
                raise RuntimeError(f"plugin1 exited mid-run; log:\n{first.tail()}")
            rounds.append(measured)

        exit_code = await first.stop()
        progress(f"plugins stopped (plugin1 exit {exit_code})")
        await nc.close()
        durability = turns.durability_report(ops.turn_ids, await turns.read_stream(url))
        durability["successful_turns"] = len(ops.turn_ids)
        durability["duplicate_turn_ids"] = ops.duplicates
        progress(
            f"durability: {len(ops.turn_ids)} successful turns, "
            f"{durability['turn_completed_events']} TurnCompleted, ok {durability['ok']}"
        )

    summary = summarize(rounds)
    bursts: dict[str, Any] = {}
    for label in ("i1", "i2"):
        latencies = burst_latencies[label]
        requests = args.repeat * args.plugin_bursts * BURST_SIZE
        in_time = sum(latency <= ANSWER_WITHIN_SECONDS for latency in latencies)
        bursts[label] = {
            "requests": requests,
            "answered_ok": len(latencies),
            "errors": dict(burst_errors[label].most_common(5)),
            "latency_from_burst_start": stats_ms(latencies),
            "burst_duration": stats_ms(burst_latencies[f"{label}_bursts"]),
            "answered_within_1s": in_time,
            "all_answered_within_1s": in_time == requests,
        }
    top = TARGET_CONCURRENCY if TARGET_CONCURRENCY in args.concurrency else max(args.concurrency)
    one = summary.get(f"i1_chat_c{top}", {}).get("per_s")
    two = summary.get(f"i2_chat_c{top}", {}).get("per_s")
    ratios = []
    for r in rounds:
        a, b = r.get(f"i1_chat_c{top}"), r.get(f"i2_chat_c{top}")
        if a and b and a["per_s"]:
            ratios.append(b["per_s"] / a["per_s"])
    plugin_admissions = {
        label: {
            **counts,
            "conflict_retries_per_admitted": round(
                counts["admission_conflicts"] / counts["admitted"], 3
            )
            if counts["admitted"]
            else None,
        }
        for label, counts in admissions.items()
    }
    return {
        "cells": summary,
        "one_user_bursts": bursts,
        "plugin_admissions": plugin_admissions,
        "durability": durability,
        "scaling": {
            "concurrency": top,
            "one_instance_per_s": one,
            "two_instances_per_s": two,
            "two_over_one": round(two / one, 3) if one and two else None,
            "two_over_one_per_round": [round(x, 3) for x in ratios],
        },
        "rounds": rounds if args.repeat > 1 else None,
    }


# ---------------------------------------------------------------- the run


async def run(args: argparse.Namespace, workdir: pathlib.Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "tool": "llm-es bench/service.py",
        "env": {
            "python": platform.python_version(),
            "nats_py": metadata.version("nats-py"),
            "httpx": metadata.version("httpx"),
            "llm_es": metadata.version("llm-es"),
            "cpus": os.cpu_count(),
            "load_average_at_start": turns.load_average(),
        },
        "params": {
            "repeat": args.repeat,
            "seconds_per_cell": None if args.turns else args.seconds,
            "turns_per_cell": args.turns,
            "concurrency": args.concurrency,
            "warm_ops_per_worker": args.warm,
            "plugin_bursts_per_round": args.plugin_bursts,
            "admissions": args.admissions,
            "admission_bursts": args.bursts,
            "burst_size": BURST_SIZE,
            "plugin_log_level": args.plugin_log_level,
            "plugin_config": "rate limits off, summarize_after_messages null, defaults otherwise",
        },
    }
    server = EmbeddedNatsServer(workdir / "nats", port=0)
    async with contextlib.AsyncExitStack() as stack:
        url = await server.start()
        stack.push_async_callback(server.stop)
        result["env"]["nats_server"] = await server_version(server.binary)
        progress(f"nats-server {result['env']['nats_server']} at {url}")

        nc = await nats.connect(url)
        admit_store = EventStore(nc, nc.jetstream(), stream=ADMIT_STREAM, prefix=ADMIT_PREFIX)
        await admit_store.ensure_stream()
        await nc.close()
        admission: dict[str, Any] = {
            "fresh_stream": await admission_report(url, ADMIT_STREAM, ADMIT_PREFIX, args, "fresh")
        }
        if not args.skip_service:
            result["service"] = await run_service(args, url, workdir, server.pid)
            admission["llm_events_after_service"] = await admission_report(
                url, STREAM_NAME, SUBJECT_PREFIX, args, "populated"
            )
        result["admission"] = admission

    result["env"]["load_average_at_end"] = turns.load_average()
    solo = admission["fresh_stream"]["uncontended"]["decide_and_append"]["p50_us"]
    locked2 = admission["fresh_stream"]["one_user_bursts"]["instances2_locked"]
    scaling = result.get("service", {}).get("scaling", {})
    plugin_bursts = result.get("service", {}).get("one_user_bursts", {})
    result["formula"] = {
        "decide_and_append": (
            "decide_admission on the user's usage view + the conditional append of its "
            "TurnAdmitted (Nats-Expected-Last-Subject-Sequence on llm.ev.*.<user>.>), until "
            "the ack; one writer, one at a time"
        ),
        "until_own_view_includes_it": "the same + waiting until the writer's view folded it",
        "conflicts_per_admitted": "IntegrityError retries / admitted turns over all bursts",
        "latency_from_burst_start": "all BURST_SIZE requests start together; time to each answer",
        "per_s": "successful rosey.llm.chat / wall seconds of the cell (closed loop)",
        "cells": "i1_*: one instance; i2_*: two; median over rounds (ok/errors summed)",
    }
    result["targets"] = {
        "admission_p50_uncontended_us": solo,
        "admission_p50_uncontended_le_500us": None
        if solo is None
        else solo <= TARGET_ADMISSION_P50_US,
        "one_user_conflicts_per_admitted_2_instances": locked2["conflicts_per_admitted"],
        "one_user_all_answered_within_1s_admission": all(
            cell["all_answered_within_1s"]
            for report in admission.values()
            for cell in report["one_user_bursts"].values()
        ),
        "one_user_all_answered_within_1s_plugin": (
            all(b["all_answered_within_1s"] for b in plugin_bursts.values())
            if plugin_bursts
            else None
        ),
        f"two_instances_ge_one_at_c{scaling.get('concurrency')}": (
            None if scaling.get("two_over_one") is None else scaling["two_over_one"] >= 1.0
        ),
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument("--turns", type=int, help="requests per cell instead of --seconds")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 8, 32],
        help="comma-separated worker counts (1,8,32)",
    )
    parser.add_argument("--warm", type=int, default=3, help="untimed requests per worker (3)")
    parser.add_argument(
        "--plugin-bursts", type=int, default=3, help="one-user bursts per round and setup (3)"
    )
    parser.add_argument(
        "--admissions", type=int, default=2000, help="uncontended admissions timed (2000)"
    )
    parser.add_argument(
        "--bursts", type=int, default=20, help="one-user admission bursts per variant (20)"
    )
    parser.add_argument("--skip-service", action="store_true", help="admission figures only")
    parser.add_argument("--plugin-log-level", default="INFO", help="the plugins' --log-level")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="hard limit for the whole run (1800)"
    )
    parser.add_argument("--json-only", action="store_true", help="no progress; compact JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seconds <= 0 or (args.turns is not None and args.turns < 1):
        parser.error("--repeat, --seconds and --turns must be positive")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("concurrency values must be positive")
    if min(args.admissions, args.bursts) < 1 or args.plugin_bursts < 0 or args.warm < 0:
        parser.error(
            "--admissions and --bursts must be positive, --plugin-bursts and --warm not negative"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    global QUIET
    args = parse_args(argv)
    QUIET = turns.QUIET = args.json_only
    return turns.run_in_workdir(run, args, "llm-es-bench-service-")


if __name__ == "__main__":
    sys.exit(main())
