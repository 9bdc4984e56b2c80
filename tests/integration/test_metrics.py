"""`/metrics`: Prometheus text from a running plugin, whose counts equal what the log records."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from llm_es.config import HttpConfig, RateLimitsConfig
from llm_es.domain.events import TokensSpent, TurnAdmitted, TurnCompleted, TurnFailed, TurnRejected
from llm_es.embedded import EmbeddedNatsServer, pick_free_port
from tests.integration.conftest import PluginStarter
from tests.integration.test_serve import port_open, start_serve, stop_serve
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, make_config, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

USER = "zed_private_user"
CHANNEL = "secret_channel_x"
OTHER_USER = "quinn_other_user"


async def scrape(host: str, port: int) -> tuple[str, Samples]:
    """GET /metrics: its text, and every sample by (name, sorted labels)."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.get(f"http://{host}:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def labelled(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (each, labels), value in samples.items() if each == name}


async def test_metrics_counts_equal_the_log_after_a_scripted_workload(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Chats that complete, one the fake LLM fails (503, retried twice), a rate-limit
    rejection and a remember: turns, tokens, events, provider calls and retries on /metrics
    are the log's counts, and no user or channel name appears in the text."""
    limits = RateLimitsConfig(
        requests_per_minute=4, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
    )
    config = make_config(fake_llm.base_url, rate_limits=limits)
    plugin = await start(dataclasses.replace(config, http=HttpConfig(listen="127.0.0.1:0")))
    address = plugin.metrics_address
    assert address is not None
    assert address[1] > 0

    for text in ("hello there", "how are you"):
        assert (await command(client, text, channel=CHANNEL, user=USER))["success"] is True
    fake_llm.fail_status, fake_llm.fail_times = 503, 3
    assert (await command(client, "this one fails", channel=CHANNEL, user=USER))["success"] is False
    assert (await command(client, "one more", channel=CHANNEL, user=USER))["success"] is True
    rejected = await command(client, "over the limit", channel=CHANNEL, user=USER)
    assert rejected["success"] is False
    remembered = await command(client, "remember the door code is blue", user=OTHER_USER)
    assert remembered["success"] is True

    events = [event for _, event in await log_events(client)]
    text, samples = await scrape(*address)

    for name in (USER, CHANNEL, OTHER_USER):
        assert name not in text
    by_type = collections.Counter(event.TYPE for event in events)
    assert labelled(samples, "llm_es_events_appended_total") == {
        (("type", kind),): float(count) for kind, count in by_type.items()
    }
    purposes = {e.turn_id: e.purpose for e in events if isinstance(e, TurnAdmitted)}
    turns: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for event in events:
        if isinstance(event, TurnCompleted):
            turns["completed", "", purposes[event.turn_id]] += 1
        elif isinstance(event, TurnFailed):
            turns["failed", event.error_type, purposes[event.turn_id]] += 1
        elif isinstance(event, TurnRejected):
            turns["rejected", event.window, "unknown"] += 1
    assert turns == {
        ("completed", "", "chat"): 3,
        ("failed", "provider_error", "chat"): 1,
        ("rejected", "minute", "unknown"): 1,
    }
    assert labelled(samples, "llm_es_turns_total") == {
        (("outcome", o), ("purpose", p), ("reason", r)): float(n) for (o, r, p), n in turns.items()
    }
    tokens: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for event in events:
        if isinstance(event, TokensSpent):
            tokens[event.model, event.provider, "prompt"] += event.prompt_tokens
            tokens[event.model, event.provider, "completion"] += event.completion_tokens
    assert sum(tokens.values()) > 0
    assert labelled(samples, "llm_es_tokens_total") == {
        (("kind", k), ("model", m), ("provider", p)): float(n) for (m, p, k), n in tokens.items()
    }
    assert labelled(samples, "llm_es_provider_calls_total") == {
        (("provider", "ollama"), ("status", "200")): 3.0,
        (("provider", "ollama"), ("status", "503")): 3.0,
    }
    assert labelled(samples, "llm_es_provider_retries_total") == {
        (("provider", "ollama"), ("status", "503")): 2.0
    }
    assert samples["llm_es_admission_conflicts_total", ()] == 0.0
    assert samples["llm_es_turn_seconds_count", (("part", "total"),)] == 4.0
    assert samples["llm_es_turn_seconds_count", (("part", "own"),)] == 4.0
    provider_seconds = labelled(samples, "llm_es_provider_seconds_count")
    assert provider_seconds == {
        (("outcome", "ok"), ("provider", "ollama")): 3.0,
        (("outcome", "failed"), ("provider", "ollama")): 1.0,
    }
    # Every append waited for: the turns' admissions and ends, the rejection, the memory.
    assert samples["llm_es_append_seconds_count", ()] >= 4 + 4 + 1 + 1
    last_seq = len(events)
    assert samples["llm_es_log_messages", ()] == float(last_seq)
    assert samples["llm_es_log_bytes", ()] > 0
    assert labelled(samples, "llm_es_views_lag_events") == {
        (("projection", name),): 0.0 for name in ("context", "memories", "settings", "usage")
    }
    assert samples["llm_es_views_lease_held", ()] == 1.0
    assert samples["llm_es_turns_in_flight", ()] == 0.0
    assert 0 <= samples["llm_es_heartbeat_age_seconds", ()] < 30

    # The publisher leads, and publishes one response per completed turn and the memory.
    async def published() -> bool:
        _, now = await scrape(*address)
        counts = labelled(now, "llm_es_events_published_total")
        return (
            now["llm_es_publisher_lease_held", ()] == 1.0
            and counts.get((("type", "response"),)) == 3.0
            and counts.get((("type", "memory"),)) == 1.0
        )

    await wait_until(published, within=15)


async def test_metrics_listener_answers_only_get(
    start: PluginStarter, fake_llm: FakeLLMServer
) -> None:
    """A path neither /metrics nor the dashboard's is 404, another method 405; a plugin
    without http.listen opens nothing."""
    config = make_config(fake_llm.base_url)
    quiet = await start(config)
    assert quiet.metrics_address is None
    plugin = await start(dataclasses.replace(config, http=HttpConfig(listen="127.0.0.1:0")))
    assert plugin.metrics_address is not None
    host, port = plugin.metrics_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10.0) as http:
        assert (await http.get("/favicon.ico")).status_code == 404
        assert (await http.post("/metrics", content=b"x")).status_code == 405
        assert (await http.get("/metrics?x=1")).status_code == 200


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (Linux /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def serve_until_ready(
    nats_server: EmbeddedNatsServer, config: dict[str, Any], tmp_path: pathlib.Path, *args: str
) -> asyncio.subprocess.Process:
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(config))
    process = await start_serve("--nats-url", nats_server.url, "--config", str(path), *args)
    client = await nats.connect(nats_server.url, max_reconnect_attempts=2)
    try:

        async def ready() -> bool:
            try:
                return bool((await command(client, "help"))["success"])
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False

        await wait_until(ready, within=30, interval=0.2)
    finally:
        await client.close()
    return process


@pytest.mark.timeout(90)
async def test_serve_http_flag_wins_and_null_opens_no_port(
    nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer, tmp_path: pathlib.Path
) -> None:
    """`llm-es serve --http` serves /metrics there, not on http.listen; with http.listen null
    the process listens on no TCP port at all."""
    providers = {"ollama": {"base_url": fake_llm.base_url}}
    configured, flagged = pick_free_port("127.0.0.1"), pick_free_port("127.0.0.1")
    config = {"providers": providers, "http": {"listen": f"127.0.0.1:{configured}"}}
    process = await serve_until_ready(
        nats_server, config, tmp_path, "--http", f"127.0.0.1:{flagged}"
    )
    try:
        _, samples = await scrape("127.0.0.1", flagged)
        assert samples["llm_es_views_lease_held", ()] in (0.0, 1.0)
        assert not await port_open(configured)
        assert listening_ports(process.pid) == {flagged}
    finally:
        stderr = await stop_serve(process)
    assert process.returncode == 0, stderr
    assert f"metrics_listening url=http://127.0.0.1:{flagged}/metrics" in stderr

    config = {"providers": providers, "http": {"listen": None}}
    process = await serve_until_ready(nats_server, config, tmp_path)
    try:
        assert listening_ports(process.pid) == set()
    finally:
        stderr = await stop_serve(process)
    assert process.returncode == 0, stderr
    assert "metrics_listening" not in stderr


async def test_bad_listen_values_are_clear_errors(tmp_path: pathlib.Path) -> None:
    """A malformed http.listen or --http stops serve at once: exit 2, naming the setting."""
    config = tmp_path / "config.json"
    config.write_text('{"http": {"listen": "localhost"}}')
    process = await start_serve("--config", str(config), "--data-dir", str(tmp_path / "d"))
    stderr = await stop_serve(process, sig=None)
    assert process.returncode == 2
    assert "config key 'http.listen': expected HOST:PORT" in stderr
    assert '"localhost"' in stderr

    result = await run_script(
        console_script("llm-es"), "serve", "--http", "127.0.0.1:http", within=30
    )
    assert result.returncode == 2
    assert "llm-es: --http: expected HOST:PORT" in result.stderr
    assert "'127.0.0.1:http'" in result.stderr
    assert not (tmp_path / "d").exists()


async def test_a_taken_port_stops_serve_with_a_clear_message(
    nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer, tmp_path: pathlib.Path
) -> None:
    """Another process on the metrics port: serve exits 1 saying which address and how to
    change it, instead of running without the metrics an operator expects."""
    blocker = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        path = tmp_path / "config.json"
        path.write_bytes(orjson.dumps({"providers": {"ollama": {"base_url": fake_llm.base_url}}}))
        process = await start_serve(
            "--nats-url", nats_server.url, "--config", str(path), "--http", f"127.0.0.1:{port}"
        )
        stderr = await stop_serve(process, sig=None)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for /metrics" in stderr
