"""A bounded soak of mixed traffic at a fixed rate: throughput, latency, errors, memory.

Starts a nats-server (JetStream, temp dir), the zero-delay fake Ollama
(`bench/fake_ollama.py`) and `llm-es serve` with the default rate limits, then
sends operations at `--rate` per second for `--seconds` (5 minutes by default)
across `--channels` channels and `--users` users:

    chat 55%, service chat (rosey.llm.chat) 10%, remember 8%, recall 8%,
    forget 4%, persona switch 5%, usage 5%, and 5% from one flooding user
    (whose requests pass the per-minute limit: rate-limit rejections)

Each operation is sent when its time comes (open loop); at most `--max-in-flight`
wait at once, and the ones that would pass it are counted as `not_sent`, so a
slow plugin shows as backlog rather than as a slower sender. The plugin's
resident memory is sampled every 10 s. At the end `llm-replay verify` compares
the views with a fresh fold of the log. Progress goes to stderr, one JSON
object to stdout.

    /work/venv/bin/python bench/soak.py                      # 5 minutes at 40 ops/s
    /work/venv/bin/python bench/soak.py --seconds 60 --rate 80
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import pathlib
import platform
import random
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import nats
import nats.errors
import orjson
import turns
from nats.aio.client import Client as NATS
from turns import Child, cpu_seconds, llm_es_command, load_average, percentile

from llm_es.embedded import EmbeddedNatsServer, server_version

MIX = (
    ("chat", 55),
    ("service_chat", 10),
    ("remember", 8),
    ("recall", 8),
    ("forget", 4),
    ("persona", 5),
    ("usage", 5),
    ("flood", 5),
)
"""Operation kinds and their weights (percent)."""
PERSONAS = ("default", "concise", "technical", "creative")
OP_TIMEOUT_SECONDS = 30.0
RSS_SAMPLE_SECONDS = 10.0
VERIFY_TIMEOUT_SECONDS = 300.0
KNOWN_MEMORIES_PER_CHANNEL = 50
"""Memory ids a channel keeps for later `forget`s (the oldest are dropped)."""


def rss_mb(pid: int | None) -> float | None:
    """Resident set size of a process from /proc (None where /proc is missing)."""
    if pid is None:
        return None
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class Traffic:
    """Builds and sends one operation; records its latency or its error."""

    def __init__(self, nc: NATS, args: argparse.Namespace, seed: int) -> None:
        self._nc = nc
        self._args = args
        self._random = random.Random(seed)
        self._kinds = [kind for kind, _ in MIX]
        self._weights = [weight for _, weight in MIX]
        self._memories: dict[str, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=KNOWN_MEMORIES_PER_CHANNEL)
        )
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.timeouts: collections.Counter[str] = collections.Counter()

    def next_operation(self) -> tuple[str, str, bytes]:
        """Kind, subject and payload of the next operation."""
        kind = self._random.choices(self._kinds, self._weights)[0]
        channel = f"soak-{self._random.randrange(self._args.channels)}"
        user = f"user-{self._random.randrange(self._args.users)}"
        command = "rosey.command.chat"
        if kind == "chat":
            args = f"tell me something about the number {self._random.randrange(1000)}"
        elif kind == "flood":
            user, args = "flooder", "hello again"
        elif kind == "service_chat":
            body = {"channel": channel, "user": user, "message": "what is new?", "persona": None}
            return kind, "rosey.llm.chat", orjson.dumps(body)
        elif kind == "usage":
            return kind, "rosey.llm.usage", orjson.dumps({"user": user})
        elif kind == "remember":
            command += ".remember"
            args = f"{user} likes the colour {self._random.randrange(100)}"
        elif kind == "recall":
            command += ".recall"
            args = "colour"
        elif kind == "forget":
            # A channel with remembered facts, where there is one: forgets that find.
            channel = next((c for c, ids in self._memories.items() if ids), channel)
            known = self._memories[channel]
            command += ".forget"
            args = known.popleft() if known else "deadbeef"
        else:
            args = f"persona {self._random.choice(PERSONAS)}"
        body = {"channel": channel, "user": user, "args": args}
        return kind, command, orjson.dumps(body)

    async def send(self, kind: str, subject: str, payload: bytes) -> None:
        started = time.perf_counter()
        try:
            reply = await self._nc.request(subject, payload, timeout=OP_TIMEOUT_SECONDS)
        except nats.errors.TimeoutError:
            self.timeouts[kind] += 1
            return
        except nats.errors.Error as exc:
            self.errors[kind][type(exc).__name__] += 1
            return
        elapsed = time.perf_counter() - started
        answer = orjson.loads(reply.data)
        if not isinstance(answer, dict):
            self.errors[kind]["answer is not an object"] += 1
            return
        error = answer.get("error")
        if answer.get("success") is False or error:
            # Memory ids and numbers vary; the error's kind is its first words.
            self.errors[kind][" ".join(str(error).split()[:3])] += 1
            return
        self.latencies[kind].append(elapsed)
        if kind == "remember":
            memory_id = answer["result"].get("memory_id")
            if isinstance(memory_id, str):
                body = orjson.loads(payload)
                self._memories[body["channel"]].append(memory_id)

    def report(self, seconds: float) -> dict[str, Any]:
        per_kind: dict[str, Any] = {}
        for kind, _ in MIX:
            values = sorted(self.latencies.get(kind, []))
            per_kind[kind] = {
                "ok": len(values),
                "errors": dict(self.errors.get(kind, {})),
                "timeouts": self.timeouts.get(kind, 0),
                "p50_ms": round(percentile(values, 50) * 1000, 2) if values else None,
                "p99_ms": round(percentile(values, 99) * 1000, 2) if values else None,
            }
        answered = sum(len(v) for v in self.latencies.values()) + sum(
            sum(c.values()) for c in self.errors.values()
        )
        return {"answered_per_s": round(answered / seconds, 1), "operations": per_kind}


async def send_at_rate(traffic: Traffic, args: argparse.Namespace) -> dict[str, Any]:
    """Send `rate` operations a second for `seconds`; at most `max_in_flight` at once."""
    interval = 1.0 / args.rate
    total = int(args.seconds * args.rate)
    in_flight: set[asyncio.Task[None]] = set()
    not_sent = 0
    started = time.perf_counter()
    for index in range(total):
        delay = started + index * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= args.max_in_flight:
            not_sent += 1
            continue
        task = asyncio.create_task(traffic.send(*traffic.next_operation()))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if index % max(1, int(args.rate * 30)) == 0:
            turns.progress(f"{index}/{total} sent, {len(in_flight)} in flight")
    sending = time.perf_counter() - started
    if in_flight:
        await asyncio.wait(in_flight, timeout=OP_TIMEOUT_SECONDS + 5)
    return {"sent": total - not_sent, "not_sent": not_sent, "send_seconds": round(sending, 1)}


async def sample_rss(pid: int | None, samples: list[tuple[float, float | None]]) -> None:
    started = time.perf_counter()
    while True:
        samples.append((round(time.perf_counter() - started), rss_mb(pid)))
        await asyncio.sleep(RSS_SAMPLE_SECONDS)


def verify(url: str) -> dict[str, Any]:
    """`llm-replay verify` against the soaked log (run in a thread: it blocks)."""
    replay = pathlib.Path(sys.executable).parent / "llm-replay"
    done = subprocess.run(
        [str(replay), "--nats-url", url, "verify"],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_SECONDS,
        check=False,
    )
    return {"exit_code": done.returncode, "output": (done.stdout + done.stderr)[-1500:]}


def plugin_config(llm_url: str) -> dict[str, Any]:
    """The fake LLM as Ollama; default rate limits (the flooding user meets them)."""
    config = turns.plugin_config(llm_url)
    del config["rate_limits"]
    return config


async def run(args: argparse.Namespace, workdir: pathlib.Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "tool": "llm-es bench/soak.py",
        "env": {
            "python": platform.python_version(),
            "llm_es": metadata.version("llm-es"),
            "cpus": os.cpu_count(),
            "load_average_at_start": load_average(),
        },
        "params": {k: v for k, v in vars(args).items() if k not in {"keep_dir", "json_only"}},
    }
    server = EmbeddedNatsServer(workdir / "nats", port=0)
    async with contextlib.AsyncExitStack() as stack:
        url = await server.start()
        stack.push_async_callback(server.stop)
        result["env"]["nats_server"] = await server_version(server.binary)
        fake = [sys.executable, str(turns.BENCH_DIR / "fake_ollama.py"), "--port", "0"]
        llm = Child("fake-llm", fake, workdir / "fake_ollama.log")
        stack.push_async_callback(llm.stop)
        line = await llm.start(ready_prefix="LISTENING")
        config_path = workdir / "config.json"
        config_path.write_bytes(orjson.dumps(plugin_config(f"http://127.0.0.1:{line.split()[1]}")))
        argv = [*llm_es_command(), "serve", "--nats-url", url, "--config", str(config_path)]
        plugin = Child("plugin", argv, workdir / "plugin.log")
        stack.push_async_callback(plugin.stop)
        await plugin.start(cwd=workdir)
        nc = await nats.connect(url, name="soak-client")
        stack.push_async_callback(nc.close)
        await turns.wait_until_plugin_answers(nc, plugin)

        samples: list[tuple[float, float | None]] = []
        sampler = asyncio.create_task(sample_rss(plugin.pid, samples))
        cpu_before = cpu_seconds(plugin.pid)
        traffic = Traffic(nc, args, seed=args.seed)
        started = time.perf_counter()
        try:
            result["sending"] = await send_at_rate(traffic, args)
        finally:
            sampler.cancel()
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(plugin.pid)
        result.update(traffic.report(elapsed))
        result["plugin"] = {
            "rss_mb_start": samples[0][1] if samples else None,
            "rss_mb_end": rss_mb(plugin.pid),
            "rss_mb_max": max((mb for _, mb in samples if mb is not None), default=None),
            # (seconds since the start, MB) every RSS_SAMPLE_SECONDS: flat means no leak.
            "rss_samples": samples,
            "cpu_cores": None
            if cpu_before is None or cpu_after is None
            else round((cpu_after - cpu_before) / elapsed, 2),
        }
        info = await nc.jetstream().stream_info("LLM_EVENTS")
        result["log"] = {"events": info.state.messages, "bytes": info.state.bytes}
        turns.progress("llm-replay verify")
        result["verify"] = await asyncio.to_thread(verify, url)
        result["env"]["load_average_at_end"] = load_average()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="soak length (300)")
    parser.add_argument("--rate", type=float, default=40.0, help="operations per second (40)")
    parser.add_argument("--channels", type=int, default=100, help="channels (100)")
    parser.add_argument("--users", type=int, default=1000, help="users (1000)")
    parser.add_argument("--max-in-flight", type=int, default=200, help="backlog bound (200)")
    parser.add_argument("--seed", type=int, default=7, help="traffic's random seed (7)")
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="hard bound on the whole run (3600)"
    )
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--json-only", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    turns.QUIET = args.json_only
    return turns.run_in_workdir(run, args, "llm-es-soak-")


if __name__ == "__main__":
    sys.exit(main())
