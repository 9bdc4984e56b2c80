"""Benchmark of `llm-replay` on a synthetic log: rebuild, verify, audit --all, and the raw read.

Writes, once per size, a realistic event log into a nats-server data dir that
later runs reuse (`--data-dir`, default ~/.cache/llm-es/bench-replay): a chat
community of channels and users whose every event comes from the plugin's
own domain code (`decide_admission`, the memory deciders, the usage fold
they read), appended like the plugin appends (`Nats-Msg-Id`, pipelined
`publish_async`). Then, for each size, it measures in this order:

- `raw_ordered_read`: a bare nats-py ordered consumer counting the stream
  (nothing decoded): the limit the issue measures the rebuild against;
- `replay_read`: the replay tools' reader (`EventLog.read`, the pull loop of
  `replay.pull` on nats-py's public client), nothing decoded;
- `rebuild`, `verify`, `audit --all`: the `llm-replay` console script as an
  operator runs it, end to end (process start, connect, read, fold, write),
  with its peak RSS (`wait4`) and the nats-server's CPU during it.

Progress goes to stderr, one JSON object to stdout (see bench/README.md).

    /work/venv/bin/python bench/replay.py --events 100000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pathlib
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any, cast

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es import headers
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import (
    ContextReset,
    ContextSummarized,
    Event,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
)
from llm_es.domain.limits import TurnRequest, decide_admission, estimate_tokens
from llm_es.domain.memories import decide_forget, decide_recall, decide_remember
from llm_es.domain.views import MemoryView, UsageView, usage_key
from llm_es.embedded import EmbeddedNatsServer, find_nats_server_binary, server_version
from llm_es.store.codec import encode_event
from llm_es.store.log import STREAM_NAME, EventStore
from projections.memories import MemoriesProjection
from projections.usage import UsageProjection

GENERATOR_VERSION = 1
"""Bump when the synthetic history changes: cached logs of another version are rewritten."""
START = datetime(2024, 3, 1, tzinfo=UTC)
WORDS = [
    "moon",
    "weather",
    "python",
    "rust",
    "cats",
    "dogs",
    "music",
    "movie",
    "game",
    "coffee",
    "tea",
    "pizza",
    "travel",
    "train",
    "plane",
    "book",
    "code",
    "bug",
    "deploy",
    "server",
    "cloud",
    "rain",
    "snow",
    "summer",
    "winter",
    "garden",
    "chess",
    "football",
    "guitar",
    "piano",
    "history",
    "science",
    "math",
    "space",
    "star",
    "planet",
    "robot",
    "dinner",
    "lunch",
    "breakfast",
    "recipe",
    "bread",
    "cheese",
    "wine",
    "beer",
    "mountain",
    "river",
    "ocean",
]
PERSONAS = ("default", "concise", "technical", "creative")
PROVIDERS = (
    ("ollama", "llama3.2", None),
    ("openai", "gpt-4o-mini", 0.6e-6),
    ("openrouter", "anthropic/claude-3-sonnet", 15e-6),
)
MAX_TOKENS = 1024
PUBLISH_WINDOW = 4000
READ_TIMEOUT_SECONDS = 600.0
TARGET_REBUILD_PER_S = 60_000
TARGET_AUDIT_1M_SECONDS = 10.0
TARGET_PEAK_RSS_MB = 500
TARGET_SHARE_OF_RAW = 1 / 3
COMMANDS = [
    ("rebuild", ["rebuild", "--json"]),
    ("verify", ["verify", "--json"]),
    ("audit_all", ["audit", "--all", "--format", "json"]),
]
"""What each round runs, in this order."""


def progress(*parts: object) -> None:
    print("[bench/replay]", *parts, file=sys.stderr, flush=True)


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(load, 2) for load in os.getloadavg()]
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU a process has used, from /proc (None when unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the synthetic community


class SyntheticHistory:
    """A deterministic chat community driven through the plugin's real deciders.

    Users pick one of their home channels; activity is Zipf-like, so a few
    heavy users run into the rate and token limits (about 5% of turns are
    rejected) while most never do. Mix per action: 86% chat turns (1% of them
    bursts of 12 that trip the minute limit; 3% of admitted turns fail, 0.1%
    are left open by a "crash" and closed as abandoned at the next restart),
    2% service completions without a channel, 4% remember, 4% recall, 1.5%
    forget, 1.5% persona switches, 1% resets, and channel summaries with
    their own provider spend.
    """

    def __init__(self, *, seed: int, channels: int, users: int, mean_gap_seconds: float) -> None:
        self.rnd = random.Random(seed)
        # Their own source, so that the rest of a seed's history stays as it was when the
        # domain drew memory ids itself (cached logs stay valid).
        self.memory_ids = random.Random(f"memory ids {seed}")
        self.limits = RateLimitsConfig()
        self.mean_gap = mean_gap_seconds
        # Some names need encoding (spaces, dots, non-ASCII), as real ones do.
        self.channels = [f"chan-{i}" if i % 7 else f"#chan {i}.ü" for i in range(channels)]
        self.users = [f"user{i}" if i % 11 else f"User.{i} ö" for i in range(users)]
        self.cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) ** 0.75 for rank in range(users))
        )
        self.homes = {
            u: self.rnd.sample(self.channels, k=self.rnd.randint(1, 3)) for u in self.users
        }
        self.channel_provider = {c: self.rnd.choice(PROVIDERS) for c in self.channels}
        self.persona = dict.fromkeys(self.channels, "default")
        self.usage = UsageProjection(keep_requests=100)
        self.memories = MemoriesProjection()
        self.usage_views: dict[str, dict[str, Any]] = {}
        self.channel_memories: dict[str, dict[str, MemoryView]] = {c: {} for c in self.channels}
        self.now = START
        self.seq = 0
        self.open_turns: list[TurnAdmitted] = []
        self.actions = 0

    def events(self, total: int) -> Iterator[Event]:
        """Exactly `total` events, in log order."""
        produced = 0
        for _ in range(total * 4):
            for event in self._action():
                self._fold(event)
                yield event
                produced += 1
                if produced >= total:
                    return

    def _fold(self, event: Event) -> None:
        """Keep the views the deciders read (usage and memories), as the plugin does."""
        self.seq += 1
        for key in self.usage.keys_for(event):
            updated = self.usage.apply(key, self.usage_views.get(key), event, self.seq)
            assert updated is not None
            self.usage_views[key] = updated
        for key in self.memories.keys_for(event):
            memories = self.channel_memories[cast(str, event.channel_name)]
            memory_id = key.rpartition(".")[2]
            updated = self.memories.apply(key, cast(Any, memories.get(memory_id)), event, self.seq)
            if updated is None:
                memories.pop(memory_id, None)
            else:
                memories[memory_id] = cast(MemoryView, updated)

    def _words(self, low: int, high: int) -> str:
        return " ".join(self.rnd.choices(WORDS, k=self.rnd.randint(low, high)))

    def _action(self) -> list[Event]:
        rnd = self.rnd
        self.actions += 1
        self.now += timedelta(seconds=rnd.expovariate(1.0 / self.mean_gap))
        if self.actions % 20_000 == 0 and self.open_turns:
            return self._restart()
        user = rnd.choices(self.users, cum_weights=self.cum_weights)[0]
        channel = rnd.choice(self.homes[user])
        roll = rnd.random()
        if roll < 0.86:
            out: list[Event] = []
            for _ in range(12 if rnd.random() < 0.01 else 1):
                out += self._turn(channel, user)
                self.now += timedelta(seconds=rnd.uniform(0.5, 3))
            return out
        if roll < 0.88:
            return self._turn(None, user, purpose="complete")
        if roll < 0.92:
            return self._remember(channel, user)
        if roll < 0.96:
            return self._recall(channel, user)
        if roll < 0.975:
            return self._forget(channel, user)
        if roll < 0.99:
            persona = rnd.choice(PERSONAS)
            self.persona[channel] = persona
            return [PersonaSwitched(at=self.now, channel=channel, user=user, persona=persona)]
        if roll < 0.995:
            return [ContextReset(at=self.now, channel=channel, user=user)]
        return self._summary(channel)

    def _turn(self, channel: str | None, user: str, *, purpose: str = "chat") -> list[Event]:
        rnd = self.rnd
        provider, model, price = self.channel_provider[channel or self.channels[0]]
        message = self._words(3, 30)
        request = TurnRequest(
            turn_id=f"{rnd.getrandbits(128):032x}",
            channel=channel,
            user=user,
            source="command" if channel else "service",
            persona=self.persona[channel] if channel else "",
            provider=provider,
            model=model,
            message=message,
            purpose=purpose,
        )
        prompt_estimate = estimate_tokens(len(message) + 1200)
        decision = decide_admission(
            request,
            cast(UsageView | None, self.usage_views.get(usage_key(user))),
            self.limits,
            now=self.now,
            prompt_tokens_estimate=prompt_estimate,
            max_tokens=MAX_TOKENS,
        )
        if not isinstance(decision, TurnAdmitted):
            return [decision]
        roll = rnd.random()
        if roll < 0.001:
            self.open_turns.append(decision)
            return [decision]
        latency = rnd.uniform(150, 6000)
        done_at = self.now + timedelta(milliseconds=latency)
        if roll < 0.03:
            error_type = rnd.choice(("provider_error", "timeout", "unavailable"))
            return [
                decision,
                TurnFailed(
                    at=done_at,
                    turn_id=request.turn_id,
                    channel=channel,
                    user=user,
                    error_type=error_type,
                    error=f"{provider}: {error_type}",
                ),
            ]
        # Real prompts use less than the conservative estimate; answers stay under the cap.
        prompt_tokens = rnd.randint(prompt_estimate // 2, prompt_estimate)
        completion_tokens = rnd.randint(10, max(10, min(600, decision.max_tokens)))
        cost = None if price is None else round((prompt_tokens + completion_tokens) * price, 8)
        return [
            decision,
            TokensSpent(
                at=done_at,
                turn_id=request.turn_id,
                channel=channel,
                user=user,
                purpose=purpose,
                provider=provider,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                estimated=rnd.random() < 0.02,
                cost=cost,
            ),
            TurnCompleted(
                at=done_at,
                turn_id=request.turn_id,
                channel=channel,
                user=user,
                content=self._words(8, 80),
                provider=provider,
                model=model,
                latency_ms=round(latency, 3),
                finish_reason="stop" if rnd.random() < 0.97 else "length",
            ),
        ]

    def _summary(self, channel: str) -> list[Event]:
        provider, model, price = self.channel_provider[channel]
        prompt_tokens, completion_tokens = self.rnd.randint(300, 2000), self.rnd.randint(50, 200)
        return [
            TokensSpent(
                at=self.now,
                turn_id=f"{self.rnd.getrandbits(128):032x}",
                channel=channel,
                user=None,
                purpose="context_summary",
                provider=provider,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                estimated=False,
                cost=None
                if price is None
                else round((prompt_tokens + completion_tokens) * price, 8),
            ),
            ContextSummarized(
                at=self.now,
                channel=channel,
                summary=self._words(20, 60),
                through_seq=max(0, self.seq - self.rnd.randint(0, 50)),
                message_count=self.rnd.randint(4, 40),
            ),
        ]

    def _restart(self) -> list[Event]:
        """A crashed instance restarts: the turns it left open are closed as abandoned."""
        closing: list[Event] = [
            TurnFailed(
                at=self.now,
                turn_id=turn.turn_id,
                channel=turn.channel,
                user=turn.user,
                error_type="abandoned",
                error="turn was admitted but never ended (process stopped mid-turn)",
            )
            for turn in self.open_turns
        ]
        self.open_turns = []
        return closing

    def _remember(self, channel: str, user: str) -> list[Event]:
        return [
            decide_remember(
                channel=channel,
                user=user,
                content=self._words(4, 20),
                category=self.rnd.choice(("fact", "preference", "fact", "event")),
                importance=self.rnd.randint(1, 5),
                existing_ids=list(self.channel_memories[channel]),
                new_id=lambda: f"{self.memory_ids.getrandbits(32):08x}",
                now=self.now,
                # The synthetic log measures replay, not the caps of remember.
                max_length=sys.maxsize,
                max_memories=sys.maxsize,
            )
        ]

    def _recall(self, channel: str, user: str) -> list[Event]:
        _, event = decide_recall(
            channel=channel,
            user=user,
            query=self._words(1, 3),
            memories=list(self.channel_memories[channel].values()),
            limit=5,
            now=self.now,
        )
        return [event] if event is not None else []

    def _forget(self, channel: str, user: str) -> list[Event]:
        memories = self.channel_memories[channel]
        if memories and self.rnd.random() < 0.9:
            memory_id = self.rnd.choice(list(memories))
        else:
            memory_id = f"{self.rnd.getrandbits(32):08x}"
        event = decide_forget(
            channel=channel,
            user=user,
            memory_id=memory_id,
            exists=memory_id in memories,
            now=self.now,
        )
        return [event] if event is not None else []


# ------------------------------------------------------------------ the cached log


def manifest_for(args: argparse.Namespace, events: int) -> dict[str, Any]:
    return {
        "events": events,
        "seed": args.seed,
        "channels": args.channels,
        "users": args.users,
        "mean_gap_seconds": args.mean_gap,
        "generator": GENERATOR_VERSION,
    }


async def write_log(nc: NATS, args: argparse.Namespace, events: int) -> dict[str, Any]:
    """Generate the history and append it like the plugin does, pipelined."""
    js = nc.jetstream(timeout=30)
    store = EventStore(nc, js)
    await store.ensure_stream()
    history = SyntheticHistory(
        seed=args.seed, channels=args.channels, users=args.users, mean_gap_seconds=args.mean_gap
    )
    started = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []
    by_type: dict[str, int] = {}
    for count, event in enumerate(history.events(events), 1):
        by_type[event.TYPE] = by_type.get(event.TYPE, 0) + 1
        pending.append(
            await js.publish_async(
                store.subject_for(event),
                encode_event(event),
                headers={headers.MSG_ID: event.id},
            )
        )
        if len(pending) >= PUBLISH_WINDOW:
            await asyncio.gather(*pending)
            pending = []
        if count % 100_000 == 0:
            progress(f"  wrote {count:,} events ({time.perf_counter() - started:.0f}s)")
    await asyncio.gather(*pending)
    stored = (await js.stream_info(STREAM_NAME)).state.messages
    if stored != events:
        raise RuntimeError(f"wrote {events} events but the stream holds {stored}")
    return {
        "generate_seconds": round(time.perf_counter() - started, 1),
        "simulated_days": round((history.now - START).total_seconds() / 86400, 1),
        "events_by_type": dict(sorted(by_type.items())),
    }


async def ensure_log(
    args: argparse.Namespace, events: int
) -> tuple[EmbeddedNatsServer, dict[str, Any]]:
    """A nats-server on the size's data dir, with the log written (or reused)."""
    directory = args.data_dir / f"log-{events}"
    manifest_path = directory / "manifest.json"
    wanted = manifest_for(args, events)
    cached: dict[str, Any] = {}
    if manifest_path.exists() and not args.regenerate:
        cached = orjson.loads(manifest_path.read_bytes())
    reuse = {k: cached.get(k) for k in wanted} == wanted
    if not reuse and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    server = EmbeddedNatsServer(directory / "nats", port=0)
    await server.start()
    nc = await nats.connect(server.url)
    try:
        stored = 0
        with contextlib.suppress(Exception):
            stored = (await nc.jetstream().stream_info(STREAM_NAME)).state.messages
        if reuse and stored == events:
            progress(f"reusing the cached log of {events:,} events in {directory}")
            info = {**cached, "reused": True}
        else:
            if stored:
                await server.stop()
                shutil.rmtree(directory / "nats")
                server = EmbeddedNatsServer(directory / "nats", port=0)
                await server.start()
                await nc.close()
                nc = await nats.connect(server.url)
            progress(f"writing a log of {events:,} events into {directory} (once)")
            written = await write_log(nc, args, events)
            info = {**wanted, **written}
            manifest_path.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
            info = {**info, "reused": False}
        state = (await nc.jetstream().stream_info(STREAM_NAME)).state
        info["stream_bytes"] = state.bytes
    finally:
        await nc.close()
    return server, info


# ------------------------------------------------------------------ measurements


async def raw_ordered_read(url: str, expected: int) -> dict[str, Any]:
    """A bare nats-py ordered consumer counting the whole stream: the read limit."""
    nc = await nats.connect(url)
    got = 0
    done = asyncio.Event()

    async def count(msg: Msg) -> None:
        nonlocal got
        got += 1
        if got >= expected:
            done.set()

    started = time.perf_counter()
    cpu_started = time.process_time()
    sub = await nc.jetstream().subscribe(
        "llm.ev.>", stream=STREAM_NAME, ordered_consumer=True, cb=count, manual_ack=True
    )
    try:
        await asyncio.wait_for(done.wait(), READ_TIMEOUT_SECONDS)
    finally:
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
        await nc.close()
    return {
        "events": got,
        "seconds": round(elapsed, 2),
        "events_per_s": round(got / elapsed),
        "client_cpu_us_per_event": round((time.process_time() - cpu_started) / got * 1e6, 2),
    }


async def replay_read(url: str) -> dict[str, Any]:
    """The replay tools' reader over the whole stream, nothing decoded."""
    from replay.reading import EventLog, LogSelection

    nc = NATS()
    await nc.connect(url)
    got = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        async with contextlib.aclosing(EventLog(nc).read(LogSelection())) as batches:
            async for batch in batches:
                got += len(batch)
    finally:
        elapsed = time.perf_counter() - started
        await nc.close()
    return {
        "events": got,
        "seconds": round(elapsed, 2),
        "events_per_s": round(got / elapsed),
        "client_cpu_us_per_event": round((time.process_time() - cpu_started) / got * 1e6, 2),
    }


def replay_command() -> list[str]:
    beside = pathlib.Path(sys.executable).parent / "llm-replay"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("llm-replay")
    if found is None:
        raise SystemExit("llm-replay is not installed (pip install -e .)")
    return [found]


def run_tool(argv: list[str], server_pid: int | None) -> dict[str, Any]:
    """Run `llm-replay ARGV` to the end: wall time, exit code, the child's own peak RSS and
    CPU (`wait4`), its output, and the nats-server's CPU meanwhile."""
    server_cpu = cpu_seconds(server_pid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen([*replay_command(), *argv], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        # Reaped here, not by Popen: tell it, so it never waits for the pid again.
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    server_cpu_after = cpu_seconds(server_pid)
    result: dict[str, Any] = {
        "argv": argv,
        "exit_code": process.returncode,
        "seconds": round(elapsed, 2),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "stdout": stdout,
        "stderr": stderr[-2000:],
    }
    if server_cpu is not None and server_cpu_after is not None and elapsed > 0:
        result["server_cpu_cores"] = round((server_cpu_after - server_cpu) / elapsed, 2)
    return result


def tool(argv: list[str], server: EmbeddedNatsServer) -> dict[str, Any]:
    result = run_tool(["--nats-url", server.url, *argv], server.pid)
    if result["exit_code"] not in (0, 1):
        raise RuntimeError(f"llm-replay {' '.join(argv)} failed: {result['stderr']}")
    return result


async def measure_size(args: argparse.Namespace, events: int) -> dict[str, Any]:
    server, log = await ensure_log(args, events)
    try:
        figures: dict[str, Any] = {"log": log}
        progress(f"{events:,}: raw ordered-consumer read")
        figures["raw_ordered_read"] = await raw_ordered_read(server.url, events)
        progress(f"{events:,}: replay_read")
        figures["replay_read"] = await replay_read(server.url)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in COMMANDS}
        for round_number in range(args.repeat):
            for name, argv in COMMANDS:
                progress(f"{events:,}: {name} (round {round_number + 1}/{args.repeat})")
                runs[name].append(await asyncio.to_thread(tool, [*argv, "--no-progress"], server))
        for name, _ in COMMANDS:
            figures[name] = summarize_runs(
                runs[name], events, parse_report=not name.startswith("audit")
            )
        audit_report = orjson.loads(runs["audit_all"][-1]["stdout"])
        figures["audit_all"]["users"] = len(audit_report["rows"])
        figures["audit_all"]["totals"] = audit_report["totals"]
        figures["rebuild_share_of_raw_read"] = round(
            figures["rebuild"]["events_per_s"] / figures["raw_ordered_read"]["events_per_s"], 3
        )
        return figures
    finally:
        await server.stop()


def summarize_runs(
    runs: list[dict[str, Any]], events: int, *, parse_report: bool
) -> dict[str, Any]:
    """Median wall time over rounds; peak RSS is the largest seen."""
    seconds = statistics.median(r["seconds"] for r in runs)
    summary: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "server_cpu_cores": statistics.median(r.get("server_cpu_cores") or 0 for r in runs),
        "exit_codes": [r["exit_code"] for r in runs],
        "rounds_seconds": [r["seconds"] for r in runs],
    }
    if parse_report:
        report = orjson.loads(runs[-1]["stdout"])
        keep = (
            "seconds",
            "keys",
            "events",
            "skipped",
            "bucket",
            "ok",
            "differing",
            "compared",
            "pending",
        )
        summary["report"] = {k: report[k] for k in keep if k in report}
    return summary


def scaling(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How each command's time grows from the smallest to the largest log."""
    if len(sizes) < 2:
        return {}
    small, large = sorted(sizes, key=int)[0], sorted(sizes, key=int)[-1]
    factor = int(large) / int(small)
    out: dict[str, Any] = {"from": int(small), "to": int(large), "events_factor": factor}
    names = ("raw_ordered_read", "replay_read", *(n for n, _ in COMMANDS))
    for name in names:
        a, b = sizes[small][name], sizes[large][name]
        out[name] = {
            "seconds_factor": round(b["seconds"] / a["seconds"], 2),
            "events_per_s": [a["events_per_s"], b["events_per_s"]],
        }
        if "peak_rss_mb" in a:
            out[name]["peak_rss_mb"] = [a["peak_rss_mb"], b["peak_rss_mb"]]
    return out


def targets(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    largest = sizes[max(sizes, key=int)]
    rebuild_rate = largest["rebuild"]["events_per_s"]
    peak = max(
        figures[name]["peak_rss_mb"]
        for figures in sizes.values()
        for name in ("rebuild", "verify", "audit_all")
    )
    audit_1m = sizes.get("1000000", {}).get("audit_all", {}).get("seconds")
    return {
        "rebuild_ge_60k_events_per_s": {"value": rebuild_rate, "ok": rebuild_rate >= 60_000},
        "rebuild_ge_third_of_raw_read": {
            "value": largest["rebuild_share_of_raw_read"],
            "ok": largest["rebuild_share_of_raw_read"] >= TARGET_SHARE_OF_RAW,
        },
        "audit_1m_le_10s": {
            "value": audit_1m,
            "ok": None if audit_1m is None else audit_1m <= TARGET_AUDIT_1M_SECONDS,
        },
        "peak_rss_le_500mb": {"value": peak, "ok": peak <= TARGET_PEAK_RSS_MB},
        "verify_zero_drift": {
            "value": [f["verify"]["report"].get("differing") for f in sizes.values()],
            "ok": all(f["verify"]["report"].get("ok") for f in sizes.values()),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--events",
        default="100000,1000000",
        help="log sizes, comma-separated (default 100000,1000000)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
        / "llm-es"
        / "bench-replay",
        help="where the generated logs are kept and reused",
    )
    parser.add_argument("--regenerate", action="store_true", help="write the logs again")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--channels", type=int, default=500)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--mean-gap", type=float, default=9.0, help="seconds between actions")
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds per command")
    parser.add_argument("--json-only", action="store_true", help="compact JSON, no progress")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.events.split(",") if s.strip()]
    load_start = load_average()
    results: dict[str, dict[str, Any]] = {}
    for events in sizes:
        results[str(events)] = await measure_size(args, events)
    binary = find_nats_server_binary()
    return {
        "env": {
            "python": platform.python_version(),
            "nats_py": metadata.version("nats-py"),
            "nats_server": await server_version(binary),
            "cpu_count": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "bench_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        },
        "params": {
            "events": sizes,
            "seed": args.seed,
            "channels": args.channels,
            "users": args.users,
            "mean_gap_seconds": args.mean_gap,
            "repeat": args.repeat,
            "data_dir": str(args.data_dir),
        },
        "sizes": results,
        "scaling": scaling(results),
        "targets": targets(results),
    }


def main() -> int:
    # This script is itself called replay.py: keep its directory off the import path, so
    # `import replay` finds the package, not this file.
    here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != here]
    args = parse_args()
    if args.json_only:
        global progress

        def progress(*parts: object) -> None:
            del parts

    report = asyncio.run(run(args))
    option = 0 if args.json_only else orjson.OPT_INDENT_2
    print(orjson.dumps(report, option=option).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
