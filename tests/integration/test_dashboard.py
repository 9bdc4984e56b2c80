"""The dashboard on the HTTP listener: its JSON equals `llm-replay audit`, the tail is live.

A scripted workload runs partly before the listening instance starts (so its
figures come from reading the log) and partly after (from the views' fold);
then every endpoint's numbers are checked against the audit's JSON of the same
log, and the routes answer nothing but GET.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import HttpConfig, RateLimitsConfig
from llm_es.domain.events import TurnCompleted, TurnFailed, TurnRejected
from llm_es.embedded import EmbeddedNatsServer
from replay.plot import PNG_NEEDS
from tests.integration.conftest import PluginStarter
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, make_config, wait_until

pytestmark = pytest.mark.timeout(120)

LIMITS = RateLimitsConfig(
    requests_per_minute=3, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)


async def audit(url: str, *args: str) -> dict[str, Any]:
    """`llm-replay audit --all --format json ARGS` against the test's server."""
    result = await run_script(
        console_script("llm-replay"),
        *("--nats-url", url, "audit", "--all", "--format", "json", "--no-progress", *args),
        within=60.0,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = result.json()
    return report


async def get_json(base: str, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        response = await http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    return answer


async def workload(client: NATS, fake_llm: FakeLLMServer, *, users: tuple[str, ...]) -> None:
    """Chats by several users, one the fake LLM fails, one refused by the minute limit."""
    for number, user in enumerate(users):
        for turn in range(1 + number % 3):
            reply = await command(client, f"question {turn} from {user}", user=user)
            assert reply["success"] is True, reply
    fake_llm.fail_status, fake_llm.fail_times = 503, 3
    failed = await command(client, "this one fails", user=users[0])
    assert failed["success"] is False
    refused = await command(client, "over the limit", user=users[2])
    assert refused["success"] is False


async def listening(start: PluginStarter, fake_llm: FakeLLMServer) -> tuple[Plugin, str]:
    config = make_config(fake_llm.base_url, rate_limits=LIMITS)
    plugin = await start(dataclasses.replace(config, http=HttpConfig(listen="127.0.0.1:0")))
    assert plugin.metrics_address is not None
    host, port = plugin.metrics_address
    return plugin, f"http://{host}:{port}"


async def caught_up(plugin: Plugin, client: NATS) -> None:
    """Wait until the dashboard has read the log's history and folded its last event."""
    last = max(seq for seq, _ in await log_events(client))
    dashboard = plugin.dashboard
    assert dashboard is not None
    await wait_until(lambda: dashboard.loaded_up_to is not None)
    await wait_until(lambda: plugin.views is not None and plugin.views.position >= last)


async def test_dashboard_json_equals_the_audit_after_a_scripted_workload(
    start: PluginStarter,
    client: NATS,
    fake_llm: FakeLLMServer,
    nats_server: EmbeddedNatsServer,
    tmp_path: pathlib.Path,
) -> None:
    """Usage per day by provider and by model, the top users today and this month, errors
    by type and completed turns per day equal `llm-replay audit` and the log, for events
    folded from history (before the instance started) and live alike; `audit --plot`
    writes the very SVG the page shows."""
    await start(rate_limits=LIMITS)
    await workload(client, fake_llm, users=("ann", "bob", "cyd"))
    plugin, base = await listening(start, fake_llm)
    await workload(client, fake_llm, users=("dee", "fay", "eve"))
    await caught_up(plugin, client)
    today = datetime.now(UTC).date().isoformat()

    by_day = await audit(nats_server.url, "--by", "day")
    for by in ("provider", "model"):
        usage = await get_json(base, f"/api/usage?by={by}")
        assert usage["days"][-1] == today
        assert len(usage["days"]) == 30
        for name in ("tokens", "requests", "rejected"):
            per_day = collections.Counter[str]()
            for row in by_day["rows"]:
                per_day[row["group"]] += row[name]
            shown = {
                day: sum(series[i] for series in usage[name].values())
                for i, day in enumerate(usage["days"])
            }
            assert {d: n for d, n in shown.items() if n} == {d: n for d, n in per_day.items() if n}
        today_by = await audit(nats_server.url, "--by", by, "--since", today)
        audited = collections.Counter[str]()
        for row in today_by["rows"]:
            audited[row["group"]] += row["tokens"]
        assert {g: s[-1] for g, s in usage["tokens"].items()} == dict(audited)
        assert set(usage["groups"]) == set(audited)
        assert usage["svg"].startswith("<svg")
        assert 'class="bar"' in usage["svg"]

    users = await get_json(base, "/api/users")
    assert users["today"] == today
    month = await audit(nats_server.url, "--since", today[:8] + "01")
    ranked = [(r["user"], r["tokens"], r["requests"], r["rejected"]) for r in month["rows"]]
    assert [
        (r["user"], r["tokens"], r["requests"], r["rejected"]) for r in users["top_month"]
    ] == ranked[:10]
    on_day = await audit(nats_server.url, "--since", today)
    assert [(r["user"], r["tokens"]) for r in users["top_today"]] == [
        (r["user"], r["tokens"]) for r in on_day["rows"]
    ][:10]
    assert len(users["top_today"]) == 6

    events = [event for _, event in await log_events(client)]
    errors = await get_json(base, "/api/errors")
    expected = collections.Counter[str]()
    for event in events:
        if isinstance(event, TurnFailed):
            expected[event.error_type] += 1
        elif isinstance(event, TurnRejected):
            expected[f"rejected_{event.window}"] += 1
    assert expected == {"provider_error": 2, "rejected_minute": 2}
    assert {kind: counts[-1] for kind, counts in errors["counts"].items()} == expected

    latency = await get_json(base, "/api/latency")
    completed = sum(isinstance(event, TurnCompleted) for event in events)
    assert latency["turns"][-1] == completed
    assert latency["p50_ms"][-1] is not None
    assert latency["p99_ms"][-1] >= latency["p50_ms"][-1]

    # The report's plot is the page's chart: the same figures drawn by the same code.
    for by in ("provider", "model"):
        svg_path = tmp_path / f"usage-{by}.svg"
        await audit(nats_server.url, "--plot", str(svg_path), "--plot-by", by)
        page_svg = (await get_json(base, f"/api/usage?by={by}"))["svg"]
        assert svg_path.read_text() == page_svg

    lag = await get_json(base, "/api/lag")
    assert lag["log_end"] == len(events)
    assert set(lag["projections"]) == {"context", "memories", "settings", "usage"}
    assert all(p["lag"] == 0 for p in lag["projections"].values())


async def test_dashboard_routes_answer_get_only_and_name_bad_parameters(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The page comes with its charts and a script-only-by-nonce policy (an event this
    version cannot read is skipped, as the views skip it); a bad `by` or `days` gets 400
    naming it; POST gets 405; an unknown path 404."""
    await start()
    junk = b'{"type": "TokensSpent", "schema": 99}'
    await client.jetstream().publish("llm.ev.lobby.alice.TokensSpent", junk)
    plugin, base = await listening(start, fake_llm)
    dashboard = plugin.dashboard
    assert dashboard is not None
    await wait_until(lambda: dashboard.loaded_up_to is not None)
    assert dashboard.loaded_up_to == 1
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'nonce-" in page.headers["content-security-policy"]
        assert page.text.count("<svg") == 3
        bad_by = await http.get("/api/usage?by=user")
        assert (bad_by.status_code, bad_by.text) == (
            400,
            "by: choose from provider, model, not 'user'\n",
        )
        bad_days = await http.get("/api/errors?days=31")
        assert (bad_days.status_code, bad_days.text) == (
            400,
            "days: a whole number from 1 to 30, not '31'\n",
        )
        posted = await http.post("/api/usage", content=b"{}")
        assert (posted.status_code, posted.text) == (405, "only GET\n")
        missing = await http.get("/api/nothing")
        assert missing.status_code == 404
        elsewhere = await http.get("/admin")
        assert (elsewhere.status_code, elsewhere.text) == (404, "not found: try / or /metrics\n")


async def test_live_tail_streams_new_events_filtered_by_user(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """`/api/tail?user=X` is an event stream of X's events only, as they are appended,
    without any message text."""
    plugin, base = await listening(start, fake_llm)
    assert plugin.dashboard is not None
    seen: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=10.0) as http,
        http.stream("GET", "/api/tail", params={"user": "tailed"}) as stream,
    ):
        assert stream.headers["content-type"] == "text/event-stream"
        await wait_until(lambda: plugin.dashboard is not None and plugin.dashboard.tail.watchers)
        assert (await command(client, "secret words here", user="other"))["success"]
        assert (await command(client, "secret words too", user="tailed"))["success"]
        lines = stream.aiter_lines()
        for _ in range(50):
            line = await anext(lines)
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))
                if seen[-1]["type"] == "TurnCompleted":
                    break
    assert [line["type"] for line in seen] == ["TurnAdmitted", "TokensSpent", "TurnCompleted"]
    assert {line["user"] for line in seen} == {"tailed"}
    assert "secret" not in orjson.dumps(seen).decode()
    assert seen[2]["latency_ms"] > 0


async def test_audit_plot_writes_png_or_says_what_it_needs(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer, tmp_path: pathlib.Path
) -> None:
    """`--plot FILE.png` writes a PNG (CairoSVG and cairo present) or exits 2 saying what
    PNG needs; another suffix exits 2 before reading anything."""
    assert (await command(client, "hello"))["success"] is True
    png = tmp_path / "usage.png"
    args = ("--nats-url", nats_server.url, "audit", "--all", "--no-progress")
    result = await run_script(console_script("llm-replay"), *args, "--plot", str(png))
    if cairo_works():
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert result.stderr.startswith(f"plot: {png} (")
    else:
        assert (result.returncode, result.stderr) == (2, f"llm-replay: {PNG_NEEDS}\n")
    wrong = await run_script(console_script("llm-replay"), *args, "--plot", "usage.pdf")
    assert (wrong.returncode, wrong.stderr) == (
        2,
        "llm-replay: --plot usage.pdf: the file name must end in .svg or .png\n",
    )


def cairo_works() -> bool:
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
