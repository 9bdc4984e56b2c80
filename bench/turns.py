"""Benchmark of the `!chat` turn path through NATS, side by side with the raw limits.

Starts, each in its own process: a nats-server (JetStream, file storage, temp
dir), a zero-delay fake Ollama (`bench/fake_ollama.py`, or `--llm-url`), a
trivial NATS echo responder, a stateless pass-through plugin (NATS in, one
provider call, NATS out: the baseline), and the plugin (`llm-es serve`, rate
limits off). Then, interleaved over `--repeat` rounds, it measures bare NATS
request/reply, bare HTTP POST /api/chat, pass-through turns and `!chat <message>`
turns at each concurrency,
plus one cell with every worker on one user. With `--stream` it measures
instead the time to the first chunk of a streamed `rosey.llm.chat` through
NATS against the time to the first NDJSON line of the bare provider stream.
At the end it checks that every successful turn is durably in the LLM_EVENTS
stream, also after restarting nats-server. Progress goes to stderr, one JSON
object to stdout; see bench/README.md for what each figure means.

    /work/venv/bin/python bench/turns.py --repeat 3 --seconds 3
    /work/venv/bin/python bench/turns.py --stream --concurrency 1,8
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
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import IO, Any

import httpx
import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es.embedded import EmbeddedNatsServer, pick_free_port, server_version
from llm_es.headers import LLM_TURN_ID
from llm_es.providers.pool import ShardedClient
from llm_es.store.log import STREAM_NAME

SCRIPT = pathlib.Path(__file__).resolve()
BENCH_DIR = SCRIPT.parent
CHAT_SUBJECT = "rosey.command.chat"
SERVICE_CHAT_SUBJECT = "rosey.llm.chat"
SERVICE_STATUS_SUBJECT = "rosey.llm.status"
ECHO_SUBJECT = "bench.echo"
PASSTHROUGH_SUBJECT = "bench.passthrough"
MESSAGE = "what is the weather like on the moon today"
SYSTEM_PROMPT = "You are a helpful assistant in a chat room. Answer briefly."
# A user's usage view keeps every admission of the last hour; with the limits off it would
# grow all run long. Default limits cap a real user at 100 turns/hour, so users rotate
# after 100 turns to keep views the size they have in a deployment.
USER_ROTATION_TURNS = 100
TURN_TIMEOUT_SECONDS = 30.0
BARE_TIMEOUT_SECONDS = 10.0
CONNECTION_NAMES = {"plugin": "llm-es", "passthrough": "bench-passthrough", "echo": "bench-echo"}
"""The NATS connection name of each process whose messages a cell counts (`ServerCounts`)."""
READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
MAX_OPS_PER_CELL = 1_000_000
MAX_CELL_SECONDS_WITH_TURNS = 120.0
STREAM_READ_TIMEOUT_SECONDS = 5.0
TARGET_OVERHEAD_P50_MS = 1.5
TARGET_TURNS_PER_S = 300.0
TARGET_PASSTHROUGH_RATIO = 0.7
"""llm-es turns/s at TARGET_CONCURRENCY over the stateless pass-through's (issue 13)."""
TARGET_CONCURRENCY = 32
TARGET_STREAM_OVERHEAD_P50_MS = 2.0
MAX_STREAM_MESSAGES = 100_000
# Environment variables that would point the plugin elsewhere than the bench's servers.
SCRUBBED_ENV = (
    "OLLAMA_HOST",
    "LLM_ES_NATS_URL",
    "LLM_ES_NATS_USER",
    "LLM_ES_NATS_PASSWORD",
    "LLM_ES_NATS_TOKEN",
    "LLM_ES_NATS_CREDS",
)
# Runs `llm-es` under cProfile and dumps the stats when serve returns (it does on SIGTERM).
PROFILED_PLUGIN = """\
import cProfile, sys
from llm_es.cli import main
profile = cProfile.Profile()
code = profile.runcall(main, sys.argv[2:])
profile.dump_stats(sys.argv[1])
sys.exit(code)
"""

QUIET = False


def progress(*parts: object) -> None:
    if not QUIET:
        print("[turns]", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process from /proc (None where /proc is missing)."""
    if pid is None:
        return None
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; the fields after its ')' are fixed.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat; None where it is missing).

    Steal time counts as busy: the host gave that time to someone else.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(f) for f in fields[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except OSError:
        return None


class Child:
    """A helper process: started with its output in a log file, stopped SIGTERM-then-kill."""

    def __init__(self, name: str, argv: list[str], log_path: pathlib.Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    async def start(
        self,
        *,
        ready_prefix: str | None = None,
        env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> str:
        """Start; with ready_prefix, wait (bounded) for a stdout line starting with it."""
        log: IO[bytes] = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if ready_prefix else log,
                stderr=log,
                env=env,
                cwd=cwd,
                # Ctrl-C reaches only the bench, which then stops children in order.
                start_new_session=True,
            )
        finally:
            log.close()
        if ready_prefix is None:
            return ""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                line = (await self.process.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line.startswith(ready_prefix):
            raise RuntimeError(
                f"{self.name} did not start (got {line!r}); log {self.log_path}:\n{self.tail()}"
            )
        return line

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> int | None:
        """SIGTERM, wait up to STOP_GRACE_SECONDS, then SIGKILL; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await process.wait()
            except TimeoutError:
                progress(f"{self.name} ignored SIGTERM for {STOP_GRACE_SECONDS}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        return process.returncode


def llm_es_command() -> list[str]:
    """The `llm-es` console script of this interpreter's environment."""
    beside = pathlib.Path(sys.executable).parent / "llm-es"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("llm-es")
    if found is None:
        raise RuntimeError("no llm-es script next to this python or on PATH: pip install -e .")
    return [found]


SCRAPE_SECONDS = 1.0
"""Between two scrapes of /metrics with --http (Prometheus' default is 15 s: this is harsher)."""
PAGE_REFRESH_SECONDS = 10.0
"""Between two reads of the dashboard's JSON with --watch-dashboard (its page's pace)."""
DASHBOARD_PATHS = ("/api/usage", "/api/users", "/api/errors", "/api/latency", "/api/lag")


async def http_reader(listen: str, watch_dashboard: bool, max_seconds: float) -> None:
    """The listener's reader, in its own process: GET /metrics every SCRAPE_SECONDS; with
    `watch_dashboard`, also what an open dashboard page does (its JSON every
    PAGE_REFRESH_SECONDS, one live tail open all along, every line read)."""
    async with httpx.AsyncClient(base_url=f"http://{listen}", timeout=5.0) as client:

        async def tail() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async with client.stream("GET", "/api/tail", timeout=None) as stream:
                    async for _ in stream.aiter_lines():
                        pass

        async def page() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    for path in DASHBOARD_PATHS:
                        (await client.get(path)).raise_for_status()
                await asyncio.sleep(PAGE_REFRESH_SECONDS)

        async def scrape() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    (await client.get("/metrics")).raise_for_status()
                await asyncio.sleep(SCRAPE_SECONDS)

        jobs = [scrape(), *((tail(), page()) if watch_dashboard else ())]
        print("READY", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                await asyncio.gather(*jobs)


def plugin_config(llm_url: str) -> dict[str, Any]:
    """The plugin's config.json: the fake LLM as Ollama and no rate limits."""
    return {
        "providers": {
            "ollama": {
                "base_url": llm_url,
                "timeout": TURN_TIMEOUT_SECONDS,
                "default_model": "fake",
            }
        },
        "rate_limits": {
            "requests_per_minute": None,
            "requests_per_hour": None,
            "requests_per_day": None,
            "tokens_per_day": None,
        },
        "http": {"listen": None},  # --http turns the /metrics listener on
    }


async def wait_until_plugin_answers(nc: NATS, plugin: Child) -> float:
    """Poll `!chat help` until the plugin answers; returns seconds waited."""
    payload = orjson.dumps({"channel": "bench-ready", "user": "bench", "args": "help"})
    started = time.perf_counter()
    async with asyncio.timeout(READY_TIMEOUT_SECONDS):
        while True:
            if plugin.pid is None:
                raise RuntimeError(f"plugin exited during start; log:\n{plugin.tail()}")
            try:
                reply = await nc.request(CHAT_SUBJECT, payload, timeout=1.0)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
                continue
            if orjson.loads(reply.data).get("success"):
                return time.perf_counter() - started
            raise RuntimeError(f"plugin answered help with an error: {reply.data!r}")


async def wait_until_service_answers(nc: NATS, plugin: Child) -> float:
    """Poll `rosey.llm.status` until the plugin's service answers; returns seconds waited."""
    started = time.perf_counter()
    async with asyncio.timeout(READY_TIMEOUT_SECONDS):
        while True:
            if plugin.pid is None:
                raise RuntimeError(f"plugin exited during start; log:\n{plugin.tail()}")
            try:
                await nc.request(SERVICE_STATUS_SUBJECT, b"{}", timeout=1.0)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
                continue
            return time.perf_counter() - started


# ---------------------------------------------------------------- echo responder mode


async def serve_until_stopped(nc: NATS, max_seconds: float) -> None:
    """Say READY once the subscriptions are live, serve until SIGINT/SIGTERM (bounded)."""
    await nc.flush()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max_seconds):
            await stop.wait()
    await nc.drain()


async def echo_responder(url: str, max_seconds: float) -> None:
    """The bare-NATS peer: replies with the request's bytes, inline in the callback."""
    nc = await nats.connect(url, name=CONNECTION_NAMES["echo"])

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=echo)
    await serve_until_stopped(nc, max_seconds)


# ---------------------------------------------------------------- pass-through mode


async def passthrough_responder(url: str, llm_url: str, max_seconds: float) -> None:
    """The baseline plugin: the same shape as a turn with no state at all.

    NATS in (a `!chat` payload), one provider call (POST /api/chat with the
    body a first turn sends, decoded), NATS out (the command reply shape), each
    request in its own task as the plugin does it. What llm-es adds beyond this
    is the price of the log, the views and the limits.
    """
    nc = await nats.connect(url, name=CONNECTION_NAMES["passthrough"])
    # The plugin's own HTTP layer (sharded pools): one httpx pool of 64 connections
    # costs more CPU than the calls at concurrency 32, and the baseline should pay
    # for the calls, not for a pool the plugin does not use.
    http = ShardedClient(base_url=llm_url, timeout=httpx.Timeout(TURN_TIMEOUT_SECONDS))
    body = provider_body(stream=False)
    tasks: set[asyncio.Task[None]] = set()

    async def turn(msg: Msg) -> None:
        request = orjson.loads(msg.data)
        with http.lease() as client:
            response = await client.post(
                "/api/chat", content=body, headers={"Content-Type": "application/json"}
            )
        answer = orjson.loads(response.content)
        content = answer["message"]["content"]
        reply = {"success": True, "result": {"message": content, "user": request.get("user")}}
        await msg.respond(orjson.dumps(reply))

    async def dispatch(msg: Msg) -> None:
        task = asyncio.create_task(turn(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(PASSTHROUGH_SUBJECT, queue="passthrough", cb=dispatch)
    await serve_until_stopped(nc, max_seconds)
    await http.aclose()


# ---------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True, slots=True)
class Timed:
    """A successful operation that took its own figures, in seconds.

    `latency` replaces the send-to-answer time as the cell's figure (e.g. the
    time to the first chunk); `extra` holds more, reported as `<name>_p50_ms`...
    """

    latency: float
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


Op = Callable[[int, int], Awaitable[str | Timed | None]]
"""One operation of worker w, iteration i: None or Timed on success, else an error label."""


@dataclasses.dataclass(frozen=True)
class CellSpec:
    name: str
    kind: str  # "nats", "http", "chat", "http_stream" or "chat_stream"
    concurrency: int
    one_user: bool = False


class ServerCounts:
    """Messages and bytes each process's NATS connections sent and received, as nats-server
    counts them (its monitoring endpoint `/connz`), summed by connection name: how many
    messages a turn costs, beside the CPU it costs."""

    def __init__(self, monitor_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=monitor_url, timeout=BARE_TIMEOUT_SECONDS)

    async def read(self) -> dict[str, list[int]]:
        """Process -> [messages sent, received, bytes sent, received] by its connections."""
        connz = (await self._http.get("/connz", params={"limit": 4096})).json()
        by_name = {name: process for process, name in CONNECTION_NAMES.items()}
        totals: dict[str, list[int]] = {process: [0, 0, 0, 0] for process in CONNECTION_NAMES}
        for connection in connz.get("connections", []):
            process = by_name.get(connection.get("name", ""))
            if process is not None:
                # The server's "in" is what the client sent.
                counted = ("in_msgs", "out_msgs", "in_bytes", "out_bytes")
                for index, field in enumerate(counted):
                    totals[process][index] += connection.get(field, 0)
        return totals

    async def aclose(self) -> None:
        await self._http.aclose()


def nats_per_op(
    before: dict[str, list[int]], after: dict[str, list[int]], ok: int
) -> dict[str, dict[str, float]]:
    """Per successful operation, what each process with traffic in the cell sent and received."""
    fields = ("msgs_sent", "msgs_received", "bytes_sent", "bytes_received")
    per_op: dict[str, dict[str, float]] = {}
    for process, counts in after.items():
        used = [a - b for a, b in zip(counts, before.get(process, [0, 0, 0, 0]), strict=True)]
        if any(used):
            per_op[process] = {
                f: round(u / max(ok, 1), 2) for f, u in zip(fields, used, strict=True)
            }
    return per_op


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def provider_body(*, stream: bool) -> bytes:
    """An Ollama /api/chat body like the plugin's for a first turn in a channel."""
    return orjson.dumps(
        {
            "model": "fake",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"bench-c1-u0: {MESSAGE} #1"},
            ],
            "stream": stream,
            "options": {"temperature": 0.7, "num_predict": 1024},
        }
    )


class StreamInbox:
    """One wildcard inbox subscription for every streamed request, routed by its token.

    Each message is stamped when the client library hands it over, so a
    worker's wake-up delay is not counted (the bare HTTP figure has none either).
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.queues: dict[str, asyncio.Queue[tuple[float, Msg]]] = {}
        self.sub: Any = None
        self.next_token = 0

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(f"{self.prefix}.*", cb=self._route)
        await self.nc.flush()

    async def _route(self, msg: Any) -> None:
        queue = self.queues.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait((time.perf_counter(), msg))

    def open(self) -> tuple[str, asyncio.Queue[tuple[float, Msg]]]:
        self.next_token += 1
        token = str(self.next_token)
        queue: asyncio.Queue[tuple[float, Msg]] = asyncio.Queue()
        self.queues[token] = queue
        return f"{self.prefix}.{token}", queue

    def close(self, reply: str) -> None:
        self.queues.pop(reply.rpartition(".")[2], None)


class Operations:
    """The kinds of operation, sharing one NATS client and one HTTP client."""

    def __init__(self, nc: NATS, http: httpx.AsyncClient) -> None:
        self.nc = nc
        self.http = http
        self.inbox = StreamInbox(nc)
        self.turn_ids: set[str] = set()
        self.turns_by_identity: collections.Counter[str] = collections.Counter()
        sample = {"channel": "bench-c1-ch0", "user": "bench-c1-u0", "args": f"{MESSAGE} #1"}
        self.echo_payload = orjson.dumps(sample)
        self.http_body = provider_body(stream=False)
        self.http_stream_body = provider_body(stream=True)

    def user_for(self, identity: str) -> str:
        """The user name of an identity's next turn, rotating after USER_ROTATION_TURNS.

        Turns are counted per identity across rounds, so users rotate like capped ones.
        """
        done = self.turns_by_identity[identity]
        self.turns_by_identity[identity] += 1
        return f"{identity}-{done // USER_ROTATION_TURNS}"

    async def bare_nats(self, worker: int, i: int) -> str | None:
        try:
            await self.nc.request(ECHO_SUBJECT, self.echo_payload, timeout=BARE_TIMEOUT_SECONDS)
        except nats.errors.TimeoutError:
            return "timeout"
        except nats.errors.NoRespondersError:
            return "no responders"
        return None

    async def bare_http(self, worker: int, i: int) -> str | None:
        try:
            response = await self.http.post(
                "/api/chat", content=self.http_body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code != 200:
            return f"http {response.status_code}"
        # The plugin decodes the answer too; so does the bare figure.
        orjson.loads(response.content)
        return None

    async def bare_http_stream(self, worker: int, i: int) -> str | Timed | None:
        """POST /api/chat with stream true: time to the first NDJSON line, and to the last."""
        started = time.perf_counter()
        first: float | None = None
        try:
            async with self.http.stream(
                "POST",
                "/api/chat",
                content=self.http_stream_body,
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    return f"http {response.status_code}"
                # Decoded line by line, as the plugin's provider does.
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    if first is None:
                        first = time.perf_counter() - started
                    if orjson.loads(line).get("done"):
                        break
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if first is None:
            return "empty stream"
        return Timed(first, {"total": time.perf_counter() - started})

    def chat_stream(self, spec: CellSpec) -> Op:
        """`rosey.llm.chat` with stream true: time to the first chunk, and to the final answer."""
        tag = f"s{spec.concurrency}"

        async def turn(worker: int, i: int) -> str | Timed | None:
            user = self.user_for(f"bench-{tag}-u{worker}")
            payload = orjson.dumps(
                {
                    "channel": f"bench-{tag}-ch{worker}",
                    "user": user,
                    "message": f"{MESSAGE} #{i}",
                    "stream": True,
                }
            )
            reply, queue = self.inbox.open()
            try:
                started = time.perf_counter()
                await self.nc.publish(SERVICE_CHAT_SUBJECT, payload, reply=reply)
                first: float | None = None
                async with asyncio.timeout(TURN_TIMEOUT_SECONDS):
                    for _ in range(MAX_STREAM_MESSAGES):
                        arrived, received = await queue.get()
                        message = orjson.loads(received.data)
                        if "success" not in message:
                            if first is None:
                                first = arrived - started
                            continue
                        if not message["success"]:
                            return str(message.get("error"))[:100]
                        if first is None:
                            return "final answer before any chunk"
                        self.turn_ids.add((received.headers or {})[LLM_TURN_ID])
                        return Timed(first, {"total": arrived - started})
                return "too many stream messages"
            except TimeoutError:
                return "timeout"
            finally:
                self.inbox.close(reply)

        return turn

    def chat(self, spec: CellSpec) -> Op:
        tag = f"{'one' if spec.one_user else 'c'}{spec.concurrency}"

        async def turn(worker: int, i: int) -> str | None:
            identity = f"bench-{tag}-single" if spec.one_user else f"bench-{tag}-u{worker}"
            user = self.user_for(identity)
            payload = orjson.dumps(
                {"channel": f"bench-{tag}-ch{worker}", "user": user, "args": f"{MESSAGE} #{i}"}
            )
            try:
                reply = await self.nc.request(CHAT_SUBJECT, payload, timeout=TURN_TIMEOUT_SECONDS)
            except nats.errors.TimeoutError:
                return "timeout"
            except nats.errors.NoRespondersError:
                return "no responders"
            answer = orjson.loads(reply.data)
            if answer.get("success"):
                self.turn_ids.add(answer["result"]["turn_id"])
                return None
            return str(answer.get("error"))[:100]

        return turn

    def passthrough(self, spec: CellSpec) -> Op:
        """A `!chat` turn through the stateless pass-through plugin (the baseline)."""
        tag = f"p{spec.concurrency}"

        async def turn(worker: int, i: int) -> str | None:
            payload = orjson.dumps(
                {
                    "channel": f"bench-{tag}-ch{worker}",
                    "user": f"bench-{tag}-u{worker}",
                    "args": f"{MESSAGE} #{i}",
                }
            )
            try:
                reply = await self.nc.request(
                    PASSTHROUGH_SUBJECT, payload, timeout=TURN_TIMEOUT_SECONDS
                )
            except nats.errors.TimeoutError:
                return "timeout"
            except nats.errors.NoRespondersError:
                return "no responders"
            answer = orjson.loads(reply.data)
            return None if answer.get("success") else str(answer.get("error"))[:100]

        return turn

    def op_for(self, spec: CellSpec) -> Op:
        if spec.kind == "nats":
            return self.bare_nats
        if spec.kind == "passthrough":
            return self.passthrough(spec)
        if spec.kind == "http":
            return self.bare_http
        if spec.kind == "http_stream":
            return self.bare_http_stream
        if spec.kind == "chat_stream":
            return self.chat_stream(spec)
        return self.chat(spec)


async def run_cell(
    op: Op,
    concurrency: int,
    *,
    seconds: float,
    total_ops: int | None,
    pids: dict[str, int | None],
    think: float = 0.0,
    counts: ServerCounts | None = None,
) -> dict[str, Any]:
    """Closed loop: `concurrency` workers each run op back to back (or `think` seconds
    apart, untimed) until time or ops run out."""
    latencies: list[float] = []
    extras: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter[str] = collections.Counter()
    remaining = [total_ops if total_ops is not None else MAX_OPS_PER_CELL]
    limit = seconds if total_ops is None else MAX_CELL_SECONDS_WITH_TURNS
    deadline = time.perf_counter() + limit

    async def worker(w: int) -> None:
        for i in range(MAX_OPS_PER_CELL):
            if remaining[0] <= 0 or time.perf_counter() >= deadline:
                return
            remaining[0] -= 1
            if think > 0 and i > 0:
                await asyncio.sleep(think)
            started = time.perf_counter()
            outcome = await op(w, i)
            if outcome is None:
                latencies.append(time.perf_counter() - started)
            elif isinstance(outcome, Timed):
                latencies.append(outcome.latency)
                for name, value in outcome.extra.items():
                    extras[name].append(value)
            else:
                errors[outcome] += 1

    nats_before = await counts.read() if counts is not None else None
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_before = machine_busy_seconds()
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    machine_after = machine_busy_seconds()
    nats_after = await counts.read() if counts is not None else None
    ok = len(latencies)
    latencies.sort()
    cell: dict[str, Any] = {
        "ok": ok,
        "errors": sum(errors.values()),
        "seconds": round(wall, 3),
        "per_s": round(ok / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3) if ok else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 3) if ok else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if ok else None,
    }
    for name, values in extras.items():
        values.sort()
        cell[f"{name}_p50_ms"] = round(percentile(values, 50) * 1000, 3)
        cell[f"{name}_p99_ms"] = round(percentile(values, 99) * 1000, 3)
    cpu_ms: dict[str, float | None] = {"client": round(client_cpu * 1000 / max(ok, 1), 3)}
    cpu_cores: dict[str, float | None] = {"client": round(client_cpu / wall, 2)}
    for name, before in cpu_before.items():
        after = cpu_seconds(pids[name])
        used = None if before is None or after is None else after - before
        cpu_ms[name] = None if used is None else round(used * 1000 / max(ok, 1), 3)
        cpu_cores[name] = None if used is None else round(used / wall, 2)
    if pids and machine_before is not None and machine_after is not None:
        # Everything running on the machine, the bench's processes and anyone else's.
        cpu_cores["machine"] = round((machine_after - machine_before) / wall, 2)
    cell["cpu_ms_per_op"] = cpu_ms
    cell["cpu_cores"] = cpu_cores
    if nats_before is not None and nats_after is not None:
        cell["nats_per_op"] = nats_per_op(nats_before, nats_after, ok)
    if errors:
        cell["error_kinds"] = dict(errors.most_common(5))
    return cell


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per cell, the median over rounds of every number (nested dicts too); errors summed."""

    def median_of(values: list[Any]) -> Any:
        if all(isinstance(v, dict) for v in values):
            keys = dict.fromkeys(k for v in values for k in v)
            return {k: median_of([v.get(k) for v in values]) for k in keys}
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            return None
        return round(statistics.median(numbers), 3)

    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for r in rounds for name in r):
        cells = [r[name] for r in rounds if name in r]
        merged: dict[str, Any] = {}
        for key in dict.fromkeys(k for c in cells for k in c):
            values = [c.get(key) for c in cells]
            if key in ("ok", "errors"):
                merged[key] = sum(v or 0 for v in values)
            elif key == "error_kinds":
                total: collections.Counter[str] = collections.Counter()
                for v in values:
                    total.update(v or {})
                merged[key] = dict(total.most_common(5))
            else:
                merged[key] = median_of(values)
        summary[name] = merged
    return summary


def overheads(
    rounds: list[dict[str, dict[str, Any]]], concurrency: list[int], turn: str = "chat"
) -> dict[str, dict[str, float | None]]:
    """Own overhead per concurrency of `turn` cells (`chat`: llm-es, `passthrough`: the
    stateless baseline), computed per round and then the median over rounds."""
    result: dict[str, dict[str, float | None]] = {}
    for c in concurrency:
        figures: dict[str, list[float]] = {"p50_ms": [], "p99_ms": []}
        for r in rounds:
            chat, http, bare = r.get(f"{turn}_c{c}"), r.get(f"http_c{c}"), r.get(f"nats_c{c}")
            if not (chat and http and bare):
                continue
            for key, values in figures.items():
                if None not in (chat[key], http[key], bare[key]):
                    values.append(chat[key] - http[key] - bare[key])
        result[f"c{c}"] = {
            key: round(statistics.median(values), 3) if values else None
            for key, values in figures.items()
        }
    return result


def stream_overheads(
    rounds: list[dict[str, dict[str, Any]]], concurrency: list[int]
) -> dict[str, dict[str, float | None]]:
    """Time to first chunk through NATS minus the bare provider's, per round, then the median.

    `p50_beyond_nats_ms` also takes off the bare NATS round trip, as the
    non-streamed `own_overhead` does: what is left is the plugin's own part.
    """
    result: dict[str, dict[str, float | None]] = {}
    for c in concurrency:
        figures: dict[str, list[float]] = {"p50_ms": [], "p99_ms": [], "p50_beyond_nats_ms": []}
        for r in rounds:
            chat, bare = r.get(f"chat_stream_c{c}"), r.get(f"http_stream_c{c}")
            if not (chat and bare):
                continue
            for key in ("p50_ms", "p99_ms"):
                if None not in (chat[key], bare[key]):
                    figures[key].append(chat[key] - bare[key])
            nats = r.get(f"nats_c{c}")
            if nats and None not in (chat["p50_ms"], bare["p50_ms"], nats["p50_ms"]):
                figures["p50_beyond_nats_ms"].append(
                    chat["p50_ms"] - bare["p50_ms"] - nats["p50_ms"]
                )
        result[f"c{c}"] = {
            key: round(statistics.median(values), 3) if values else None
            for key, values in figures.items()
        }
    return result


# ---------------------------------------------------------------- durability


TURN_EVENT_TYPES = ("TurnAdmitted", "TokensSpent", "TurnCompleted")


@dataclasses.dataclass
class StreamContents:
    """What the log holds: events per type and the turn ids of each turn event type."""

    total: int = 0
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    turn_ids: dict[str, set[str]] = dataclasses.field(
        default_factory=lambda: {name: set() for name in TURN_EVENT_TYPES}
    )
    failed_turn_ids: set[str] = dataclasses.field(default_factory=set)


async def read_stream(url: str) -> StreamContents:
    """Read the whole LLM_EVENTS stream with an ordered consumer (bounded by its size)."""
    contents = StreamContents()
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM_NAME)
        contents.total = info.state.messages
        if contents.total == 0:
            return contents
        sub = await js.subscribe("llm.ev.>", stream=STREAM_NAME, ordered_consumer=True)
        try:
            for _ in range(contents.total):
                msg = await sub.next_msg(timeout=STREAM_READ_TIMEOUT_SECONDS)
                event_type = msg.subject.rpartition(".")[2]
                contents.counts[event_type] += 1
                if event_type in contents.turn_ids:
                    contents.turn_ids[event_type].add(orjson.loads(msg.data)["turn_id"])
                elif event_type == "TurnFailed":
                    contents.failed_turn_ids.add(orjson.loads(msg.data)["turn_id"])
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return contents


def durability_report(successful: set[str], contents: StreamContents) -> dict[str, Any]:
    """Every successful turn must have its admission, its spend and its completion in the
    log, and no turn may both complete and fail."""
    missing = {name: len(successful - ids) for name, ids in contents.turn_ids.items()}
    completed = contents.counts["TurnCompleted"]
    # A turn ends exactly once: a TurnFailed for a turn that completed is a double ending.
    ended_twice = len(contents.turn_ids["TurnCompleted"] & contents.failed_turn_ids)
    return {
        "events_in_stream": contents.total,
        "events_by_type": dict(sorted(contents.counts.items())),
        "turn_completed_events": completed,
        "successful_turns_missing": missing,
        "completed_and_failed_turns": ended_twice,
        "ok": not any(missing.values()) and completed == len(successful) and not ended_twice,
    }


# ---------------------------------------------------------------- the run


def cells_for(
    concurrency: list[int], one_user_concurrency: int, *, stream: bool = False
) -> list[CellSpec]:
    if stream:
        # The bare NATS round trip is there to read the difference against.
        return [
            spec
            for c in concurrency
            for spec in (
                CellSpec(f"nats_c{c}", "nats", c),
                CellSpec(f"http_stream_c{c}", "http_stream", c),
                CellSpec(f"chat_stream_c{c}", "chat_stream", c),
            )
        ]
    cells: list[CellSpec] = []
    for c in concurrency:
        cells += [CellSpec(f"nats_c{c}", "nats", c), CellSpec(f"http_c{c}", "http", c)]
        cells.append(CellSpec(f"passthrough_c{c}", "passthrough", c))
        cells.append(CellSpec(f"chat_c{c}", "chat", c))
    if one_user_concurrency > 0:
        cells.append(
            CellSpec(f"chat_one_user_c{one_user_concurrency}", "chat", one_user_concurrency, True)
        )
    return cells


async def run(args: argparse.Namespace, workdir: pathlib.Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    result: dict[str, Any] = {
        "tool": "llm-es bench/turns.py",
        "env": {
            "python": platform.python_version(),
            "nats_py": metadata.version("nats-py"),
            "httpx": metadata.version("httpx"),
            "llm_es": metadata.version("llm-es"),
            "cpus": os.cpu_count(),
            # Other work on the machine skews every figure; compare runs with similar loads.
            "load_average_at_start": load_average(),
        },
        "params": {
            "repeat": args.repeat,
            "seconds_per_cell": None if args.turns else args.seconds,
            "turns_per_cell": args.turns,
            "concurrency": args.concurrency,
            "one_user_concurrency": args.one_user_concurrency,
            "warm_ops_per_worker": args.warm,
            "plugin_log_level": args.plugin_log_level,
            "stream": args.stream,
            "think_ms": args.think_ms,
            "chunk_delay_ms": None if args.llm_url else args.chunk_delay_ms,
            "llm": args.llm_url or "bench/fake_ollama.py (subprocess, zero delay)",
            "plugin_service_settings": dict(args.service_settings),
            "http": args.http,
            "watch_dashboard": args.watch_dashboard,
        },
    }
    monitor_port = pick_free_port("127.0.0.1")
    server = EmbeddedNatsServer(
        workdir / "nats", port=0, extra_arguments=("--http_port", str(monitor_port))
    )
    async with contextlib.AsyncExitStack() as stack:
        url = await server.start()
        stack.push_async_callback(server.stop)
        counts = ServerCounts(f"http://127.0.0.1:{monitor_port}")
        stack.push_async_callback(counts.aclose)
        result["env"]["nats_server"] = await server_version(server.binary)
        progress(f"nats-server {result['env']['nats_server']} at {url}, data {server.data_dir}")

        llm: Child | None = None
        if args.llm_url:
            llm_url = args.llm_url.rstrip("/")
        else:
            fake = [sys.executable, str(BENCH_DIR / "fake_ollama.py"), "--port", "0"]
            fake += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
            llm = Child("fake-llm", fake, workdir / "fake_ollama.log")
            stack.push_async_callback(llm.stop)
            line = await llm.start(ready_prefix="LISTENING", env=env)
            llm_url = f"http://127.0.0.1:{line.split()[1]}"
        progress(f"LLM at {llm_url}")

        echo = Child(
            "echo-responder",
            [sys.executable, str(SCRIPT), "--echo-responder", url],
            workdir / "echo.log",
        )
        stack.push_async_callback(echo.stop)
        await echo.start(ready_prefix="READY", env=env)
        passthrough: Child | None = None
        if not args.stream:
            passthrough = Child(
                "passthrough",
                [sys.executable, str(SCRIPT), "--passthrough-responder", url, llm_url],
                workdir / "passthrough.log",
            )
            stack.push_async_callback(passthrough.stop)
            await passthrough.start(ready_prefix="READY", env=env)

        config_path = workdir / "config.json"
        config = plugin_config(llm_url)
        if args.service_settings:
            config.setdefault("service", {}).update(args.service_settings)
        config_path.write_bytes(orjson.dumps(config))
        serve_args = ["serve", "--nats-url", url, "--config", str(config_path)]
        serve_args += ["--log-level", args.plugin_log_level]
        if args.http:
            serve_args += ["--http", args.http]
        if args.plugin_profile:
            argv = [sys.executable, "-c", PROFILED_PLUGIN, str(args.plugin_profile), *serve_args]
        else:
            argv = [*llm_es_command(), *serve_args]
        plugin = Child("plugin", argv, workdir / "plugin.log")
        stack.push_async_callback(plugin.stop)
        await plugin.start(env=env, cwd=workdir)

        nc = await nats.connect(url, name="bench-client")
        stack.push_async_callback(nc.close)
        http = httpx.AsyncClient(
            base_url=llm_url,
            timeout=httpx.Timeout(TURN_TIMEOUT_SECONDS),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        stack.push_async_callback(http.aclose)
        waited = await wait_until_plugin_answers(nc, plugin)
        if args.stream:
            waited += await wait_until_service_answers(nc, plugin)
        progress(f"plugin ready after {waited:.1f}s (pid {plugin.pid}, log {plugin.log_path})")

        pids = {"plugin": plugin.pid, "nats_server": server.pid}
        pids["llm"] = llm.pid if llm is not None else None
        pids["echo"] = echo.pid
        if passthrough is not None:
            pids["passthrough"] = passthrough.pid
        if args.http:
            argv = [sys.executable, str(SCRIPT), "--http-reader", args.http]
            if args.watch_dashboard:
                argv.append("--watch-dashboard")
            reader = Child("http-reader", argv, workdir / "http_reader.log")
            stack.push_async_callback(reader.stop)
            await reader.start(ready_prefix="READY", env=env)
        operations = Operations(nc, http)
        await operations.inbox.start()
        cells = cells_for(args.concurrency, args.one_user_concurrency, stream=args.stream)

        for spec in cells:
            op = operations.op_for(spec)
            warm = args.warm * spec.concurrency
            await run_cell(op, spec.concurrency, seconds=60.0, total_ops=warm, pids={})
        progress(f"warmed up: {args.warm} ops per worker in every cell")

        rounds: list[dict[str, dict[str, Any]]] = []
        for round_index in range(args.repeat):
            measured: dict[str, dict[str, Any]] = {}
            for spec in cells:
                if plugin.pid is None:
                    raise RuntimeError(f"plugin exited mid-run; log:\n{plugin.tail()}")
                cell = await run_cell(
                    operations.op_for(spec),
                    spec.concurrency,
                    seconds=args.seconds,
                    total_ops=args.turns,
                    pids=pids,
                    counts=counts,
                    think=args.think_ms / 1000,
                )
                measured[spec.name] = cell
                progress(
                    f"round {round_index + 1}/{args.repeat} {spec.name}: {cell['per_s']}/s "
                    f"p50 {cell['p50_ms']} ms p99 {cell['p99_ms']} ms errors {cell['errors']}"
                )
            rounds.append(measured)

        # Stop the plugin first so every turn it started has ended before the log is read.
        plugin_exit = await plugin.stop()
        progress(f"plugin stopped (exit {plugin_exit})")
        # Nothing may stay connected across the server restart below.
        await echo.stop()
        if passthrough is not None:
            await passthrough.stop()
        await nc.close()
        successful = operations.turn_ids
        durability = durability_report(successful, await read_stream(url))
        await server.stop()
        url = await server.start()
        durability["successful_turns"] = len(successful)
        restarted = durability_report(successful, await read_stream(url))
        durability["after_server_restart"] = restarted
        progress(
            f"durability: {len(successful)} successful turns, "
            f"{durability['turn_completed_events']} TurnCompleted in the stream, "
            f"{durability['after_server_restart']['turn_completed_events']} after restart"
        )

    result["env"]["load_average_at_end"] = load_average()
    summary = summarize(rounds)
    if args.stream:
        result.update(stream_results(summary, rounds, args.concurrency, durability))
        return result
    overhead = overheads(rounds, args.concurrency)
    baseline_overhead = overheads(rounds, args.concurrency, turn="passthrough")
    c1 = overhead.get("c1", {}).get("p50_ms")
    top = summary.get(f"chat_c{TARGET_CONCURRENCY}", {}).get("per_s")
    baseline_top = summary.get(f"passthrough_c{TARGET_CONCURRENCY}", {}).get("per_s")
    ratio = round(top / baseline_top, 3) if top and baseline_top else None
    one_user_name = f"chat_one_user_c{args.one_user_concurrency}"
    per_user: dict[str, Any] = {}
    if one_user_name in summary and f"chat_c{args.one_user_concurrency}" in summary:
        distinct = summary[f"chat_c{args.one_user_concurrency}"]
        single = summary[one_user_name]
        per_user = {
            "concurrency": args.one_user_concurrency,
            "distinct_users_per_s": distinct["per_s"],
            "one_user_per_s": single["per_s"],
            "distinct_users_p50_ms": distinct["p50_ms"],
            "one_user_p50_ms": single["p50_ms"],
            "one_user_throughput_ratio": (
                round(single["per_s"] / distinct["per_s"], 3) if distinct["per_s"] else None
            ),
        }
    result.update(
        {
            "formula": {
                "own_overhead_ms": (
                    "chat_cN.pXX_ms - http_cN.pXX_ms - nats_cN.pXX_ms, bare cells at the same "
                    "concurrency N, computed per round, then the median over rounds"
                ),
                "per_s": "successful operations / wall seconds of the cell (closed loop)",
                "cpu_ms_per_op": "CPU time a process used during the cell / successful operations",
                "cpu_cores": "CPU time a process used during the cell / wall seconds",
            },
            "cells": summary,
            "own_overhead": overhead,
            "passthrough_overhead": baseline_overhead,
            "per_user_serialization": per_user,
            "durability": durability,
            "targets": {
                "own_overhead_p50_c1_ms": c1,
                "own_overhead_p50_c1_le_1_5ms": (
                    None if c1 is None else c1 <= TARGET_OVERHEAD_P50_MS
                ),
                f"turns_per_s_c{TARGET_CONCURRENCY}": top,
                f"passthrough_turns_per_s_c{TARGET_CONCURRENCY}": baseline_top,
                f"ratio_to_passthrough_c{TARGET_CONCURRENCY}": ratio,
                f"ratio_to_passthrough_c{TARGET_CONCURRENCY}_ge_0_7": (
                    None if ratio is None else ratio >= TARGET_PASSTHROUGH_RATIO
                ),
            },
            "rounds": rounds if args.repeat > 1 else None,
        }
    )
    return result


def stream_results(
    summary: dict[str, dict[str, Any]],
    rounds: list[dict[str, dict[str, Any]]],
    concurrency: list[int],
    durability: dict[str, Any],
) -> dict[str, Any]:
    """The JSON of a `--stream` run."""
    overhead = stream_overheads(rounds, concurrency)
    c1 = overhead.get("c1", {}).get("p50_ms")
    return {
        "formula": {
            "p50_ms": (
                "chat_stream_cN: time from publishing the request to the first chunk message "
                "in the client; http_stream_cN: time from sending the POST to the first NDJSON "
                "line; nats_cN: a core request/reply round trip"
            ),
            "total_p50_ms": "to the final ChatResponse / to the `done` NDJSON line",
            "stream_overhead_ms": (
                "chat_stream_cN.pXX_ms - http_stream_cN.pXX_ms at the same concurrency, "
                "per round, then the median over rounds; p50_beyond_nats_ms also minus "
                "nats_cN.p50_ms (the bus's own round trip, as in own_overhead)"
            ),
            "per_s": "successful operations / wall seconds of the cell (closed loop)",
            "cpu_ms_per_op": "CPU time a process used during the cell / successful operations",
        },
        "cells": summary,
        "stream_overhead": overhead,
        "durability": durability,
        "targets": {
            "first_chunk_overhead_p50_c1_ms": c1,
            "first_chunk_overhead_p50_c1_le_2ms": (
                None if c1 is None else c1 <= TARGET_STREAM_OVERHEAD_P50_MS
            ),
        },
        "rounds": rounds if len(rounds) > 1 else None,
    }


def service_setting(text: str) -> tuple[str, Any]:
    """`KEY=JSON` from the command line as (key, decoded value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not JSON") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell (3)")
    parser.add_argument(
        "--turns", type=int, help="operations per cell instead of --seconds (all workers together)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        help="comma-separated worker counts (1,8,32; with --stream 1,8)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="time to first chunk: streamed rosey.llm.chat vs the bare provider stream",
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the fake LLM's pause between streamed lines, not before the first (0)",
    )
    parser.add_argument(
        "--one-user-concurrency",
        type=int,
        default=8,
        help="workers in the all-on-one-user chat cell (8; 0 skips the cell)",
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="pause of each worker between operations, untimed (0: back to back)",
    )
    parser.add_argument("--warm", type=int, default=3, help="untimed ops per worker per cell (3)")
    parser.add_argument("--llm-url", help="use this Ollama-compatible server instead of a fake")
    parser.add_argument(
        "--plugin-log-level", default="INFO", help="the plugin's --log-level (INFO, as deployed)"
    )
    parser.add_argument(
        "--plugin-profile",
        type=pathlib.Path,
        help="run the plugin under cProfile and write its stats here (slows it down)",
    )
    parser.add_argument(
        "--service-setting",
        dest="service_settings",
        metavar="KEY=JSON",
        type=service_setting,
        action="append",
        default=[],
        help="a `service.KEY` of the plugin's config, e.g. publish_events=false (for A/B runs)",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="the plugin listens here (/metrics and the dashboard); a child process scrapes"
        " /metrics every second for the whole run (A/B against the default: no listener)",
    )
    parser.add_argument(
        "--watch-dashboard",
        action="store_true",
        help="with --http: the child also does what an open dashboard page does (its JSON"
        " every 10 s, a live tail open)",
    )
    parser.add_argument("--http-reader", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="hard limit for the whole run (1800)"
    )
    parser.add_argument("--json-only", action="store_true", help="no progress; compact JSON")
    parser.add_argument("--echo-responder", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--passthrough-responder", nargs=2, metavar=("URL", "LLM_URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [1, 8] if args.stream else [1, 8, 32]
    if args.stream:
        args.one_user_concurrency = 0
    if args.chunk_delay_ms < 0 or args.think_ms < 0:
        parser.error("--chunk-delay-ms and --think-ms must not be negative")
    if args.repeat < 1 or args.seconds <= 0 or (args.turns is not None and args.turns < 1):
        parser.error("--repeat, --seconds and --turns must be positive")
    if not args.concurrency or min(args.concurrency) < 1 or args.one_user_concurrency < 0:
        parser.error("concurrency values must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    global QUIET
    args = parse_args(argv)
    if args.echo_responder:
        asyncio.run(echo_responder(args.echo_responder, args.max_seconds))
        return 0
    if args.http_reader:
        asyncio.run(http_reader(args.http_reader, args.watch_dashboard, args.max_seconds))
        return 0
    if args.passthrough_responder:
        asyncio.run(passthrough_responder(*args.passthrough_responder, args.max_seconds))
        return 0
    QUIET = args.json_only
    return run_in_workdir(run, args, "llm-es-bench-")


BenchRun = Callable[[argparse.Namespace, pathlib.Path], Awaitable[dict[str, Any]]]


async def bounded(
    bench: BenchRun, args: argparse.Namespace, workdir: pathlib.Path
) -> dict[str, Any]:
    """`bench` within `--max-seconds`; SIGTERM cancels it like Ctrl-C does, so the
    children are still stopped in order."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with asyncio.timeout(args.max_seconds):
        return await bench(args, workdir)


def run_in_workdir(bench: BenchRun, args: argparse.Namespace, prefix: str) -> int:
    """Run a bench in a temp dir (kept with --keep-dir), bounded, and print its JSON; exit code."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    try:
        result = asyncio.run(bounded(bench, args, workdir))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:
        progress("stopped by SIGTERM")
        return 143
    finally:
        if args.keep_dir:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    option = 0 if args.json_only else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(result, option=option).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
