"""The `llm-replay` console script, run as a real subprocess against a real log.

What an operator sees: readable text by default, JSON/CSV/JSONL for scripts,
a live tail filtered by the server, and a clear one-line message with a
non-zero exit code for every mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import pathlib
import socket

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.domain.events import MemoryAdded, TokensSpent, TurnAdmitted, TurnCompleted
from llm_es.domain.views import usage_key
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.codec import decode_event
from tests.support.cli import CliResult, console_script, run_script
from tests.support.harness import command, log_events, wait_persisted, wait_until

CLI_TIMEOUT_SECONDS = 60.0
pytestmark = pytest.mark.timeout(120)


LLM_REPLAY = console_script("llm-replay")


async def replay(*args: str, url: str | None = None) -> CliResult:
    """Run `llm-replay [--nats-url URL] ARGS`; kill it if it outlives the bound."""
    argv = ["--nats-url", url, *args] if url else list(args)
    return await run_script(LLM_REPLAY, *argv, within=CLI_TIMEOUT_SECONDS)


async def history(client: NATS) -> None:
    """Chats in two channels by two users, and a memory added and forgotten."""
    assert (await command(client, "Hello there", channel="a"))["success"]
    assert (await command(client, "Second question", channel="a"))["success"]
    assert (await command(client, "Other channel", channel="b", user="bob"))["success"]
    fact = await command(client, "remember Alice likes tea", channel="a")
    await command(client, f"forget {fact['result']['memory_id']}", channel="a")


# ------------------------------------------------------------------ the commands


async def test_rebuild_then_verify_print_readable_reports(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """`rebuild` switches and says so; `verify` finds nothing; `--json` is parseable."""
    await history(client)
    rebuilt = await replay("rebuild", "--no-progress", url=nats_server.url)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "switched: the live views are now llm_data_2 (was llm_data)" in rebuilt.stdout
    verified = await replay("verify", "--json", "--no-progress", url=nats_server.url)
    assert verified.returncode == 0, verified.stderr
    assert verified.json()["ok"] is True
    assert verified.json()["bucket"] == "llm_data_2"
    dry = await replay("rebuild", "--dry-run", "--json", "--no-progress", url=nats_server.url)
    assert dry.returncode == 0, dry.stderr
    assert dry.json()["changes"]["changed"] == 0
    assert dry.json()["switched"] is False


async def test_the_common_options_go_before_or_after_the_command(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """`--nats-url` and `--log-level` work on either side of the command, a value given
    before it stands when the command does not repeat it, and audit and export print the
    same either way; the removed `--fast-reader` is an unknown flag (exit 2)."""
    await history(client)
    url = nats_server.url
    rebuilt = await replay("rebuild", "--nats-url", url, "--json", "--no-progress")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.json()["switched"] is True
    verified = await replay("verify", "--log-level", "ERROR", "--json", "--no-progress", url=url)
    assert verified.returncode == 0, verified.stderr
    assert (verified.json()["ok"], verified.json()["bucket"]) == (True, "llm_data_2")
    for args in (("audit", "--all", "--format", "json"), ("export", "--user", "alice")):
        before = await replay(*args, url=url)
        after = await replay(*args, "--nats-url", url)
        assert (after.returncode, before.returncode) == (0, 0), after.stderr + before.stderr
        assert after.stdout == before.stdout
        assert after.stdout.count("\n") > 2
    refused = await replay("--fast-reader", "verify", url=url)
    assert refused.returncode == 2
    assert "unrecognized arguments: --fast-reader" in refused.stderr


async def test_verify_exits_1_with_a_diff_naming_key_live_and_rebuilt(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """A tampered view makes `verify` exit 1 and print the key and both values."""
    await history(client)
    # Every view written, so no later write of the runner undoes the tampering.
    await wait_persisted(client)
    kv = await client.jetstream().key_value("llm_data")
    entry = await kv.get(usage_key("bob"))
    assert entry.value is not None
    tampered = {**orjson.loads(entry.value), "total_tokens": 123456}
    await kv.put(usage_key("bob"), orjson.dumps(tampered))

    result = await replay("verify", "--no-progress", url=nats_server.url)

    assert result.returncode == 1, result.stderr
    assert "views differ from the log: 1 of" in result.stdout
    assert usage_key("bob") in result.stdout
    assert "total_tokens: live 123456" in result.stdout
    assert "rebuilt" in result.stdout
    assert "fix: llm-replay rebuild" in result.stdout


async def test_state_prints_a_channel_and_a_user(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """`state --channel` shows context and memories (a forgotten one, as of before its
    forget, reads `[erased]`: its key is gone); `state --user --json` usage and limits,
    and `state --user` the same as lines, each limit as used, of, left."""
    await history(client)
    channel = await replay("state", "--channel", "a", url=nats_server.url)
    assert channel.returncode == 0, channel.stderr
    assert "channel 'a' as of now" in channel.stdout
    assert "alice: Hello there" in channel.stdout
    assert "memories: 0" in channel.stdout
    events = await log_events(client)
    added = next(s for s, e in events if e.TYPE == "MemoryAdded")
    then = await replay("state", "--channel", "a", "--seq", str(added), url=nats_server.url)
    assert "memories: 1" in then.stdout
    assert "[fact, importance 3] [erased]" in then.stdout
    assert "Alice likes tea" not in then.stdout
    user = await replay("state", "--user", "alice", "--json", url=nats_server.url)
    assert user.returncode == 0, user.stderr
    assert user.json()["usage"]["total_requests"] == 2
    assert user.json()["rate_limits_remaining"]["requests_minute"] == 8
    as_text = await replay("state", "--user", "alice", url=nats_server.url)
    assert as_text.returncode == 0, as_text.stderr
    # The first two lines carry the times of the last event and of the run.
    heading, judged, *rest = as_text.stdout.splitlines()
    assert heading.startswith("user 'alice' as of now (last event: sequence ")
    assert judged.startswith("limits judged at ")
    assert rest == [
        "  requests/minute           2 of 10 (8 left)",
        "  requests/hour             2 of 100 (98 left)",
        "  requests/day              2 of 500 (498 left)",
        "  tokens/day               90 of 50,000 (49,910 left)",
        "  reserved by open turns: 0 tokens",
        "rejected today: 0",
        "all time: 2 requests, 90 tokens",
        "open turns: 0",
    ]


async def test_audit_prints_table_json_and_csv_with_equal_totals(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """The three formats carry the same totals; rows carry their log sequence ranges."""
    await history(client)
    table = await replay("audit", "--user", "alice", "--no-progress", url=nats_server.url)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].startswith("audit of user 'alice' by day")
    assert "total" in table.stdout
    as_json = await replay(
        "audit", "--user", "alice", "--by", "channel", "--format", "json", url=nats_server.url
    )
    report = as_json.json()
    usage = plugin.views.get(usage_key("alice")) if plugin.views else None
    assert usage is not None
    assert report["totals"]["requests"] == usage["total_requests"] == 2
    assert report["totals"]["tokens"] == usage["total_tokens"]
    (row,) = report["rows"]
    assert row["group"] == "a"
    assert row["first_seq"] <= row["last_seq"]
    as_csv = await replay("audit", "--all", "--format", "csv", url=nats_server.url)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["user"] for r in rows] == ["alice", "bob"]
    assert sum(int(r["tokens"]) for r in rows) == report["totals"]["tokens"] + int(
        rows[1]["tokens"]
    )


async def test_tail_follows_with_a_server_side_filter(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """`tail --channel a --type TurnCompleted` prints only those, from a consumer filtered
    on `llm.ev.a.*.TurnCompleted`; `--limit` ends it."""
    tail = asyncio.create_task(
        replay(
            "tail",
            "--channel",
            "a",
            "--type",
            "TurnCompleted",
            "--json",
            "--limit",
            "2",
            url=nats_server.url,
        )
    )
    js = client.jetstream()

    async def filtered_consumer() -> bool:
        consumers = await js.consumers_info("LLM_EVENTS")
        return any(c.config.filter_subject == "llm.ev.a.*.TurnCompleted" for c in consumers)

    try:
        await wait_until(filtered_consumer, within=20, interval=0.05)
        await command(client, "in b", channel="b", user="bob")
        await command(client, "first in a", channel="a")
        await command(client, "second in a", channel="a", user="bob")
        result = await asyncio.wait_for(tail, CLI_TIMEOUT_SECONDS)
    finally:
        if not tail.done():
            tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tail
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(x["event"]["type"], x["event"]["channel"], x["event"]["user"]) for x in lines] == [
        ("TurnCompleted", "a", "alice"),
        ("TurnCompleted", "a", "bob"),
    ]
    assert all(x["subject"].startswith("llm.ev.a.") for x in lines)


async def test_tail_from_a_sequence_prints_readable_lines(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """`--from-seq 1 --no-follow --user bob` prints bob's events, one readable line each;
    several `--type`s share one filter and are told apart by subject."""
    await history(client)
    result = await replay(
        "tail", "--from-seq", "1", "--no-follow", "--user", "bob", url=nats_server.url
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[4] for line in lines] == [
        "TurnAdmitted",
        "TokensSpent",
        "TurnCompleted",
    ]
    assert all(line.split()[2:4] == ["b", "bob"] for line in lines)
    assert 'message="Other channel"' in lines[0]
    types = await replay(
        "tail",
        "--from-seq",
        "1",
        "--no-follow",
        "--type",
        "MemoryAdded",
        "--type",
        "MemoryForgotten",
        url=nats_server.url,
    )
    assert [line.split()[4] for line in types.stdout.splitlines()] == [
        "MemoryAdded",
        "MemoryForgotten",
    ]


async def test_export_round_trips_the_log(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer, tmp_path: pathlib.Path
) -> None:
    """Every exported line decodes to the stored event, with its sequence and subject, its
    sealed text opened: the forgotten fact reads `[erased]`."""
    await history(client)
    out = tmp_path / "log.jsonl"
    result = await replay("export", "--format", "jsonl", "--output", str(out), url=nats_server.url)
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    stored = await log_events(client)
    assert [line["seq"] for line in lines] == [seq for seq, _ in stored]
    exported = [decode_event(orjson.dumps(line["event"])) for line in lines]
    assert exported == [await plugin.keyring.open_event(e) for _, e in stored]
    assert [e.content for e in exported if isinstance(e, MemoryAdded)] == ["[erased]"]
    assert all(line["subject"].endswith("." + line["event"]["type"]) for line in lines)
    only_spent = await replay(
        "export", "--type", "TokensSpent", "--user", "bob", url=nats_server.url
    )
    (spent,) = [orjson.loads(line) for line in only_spent.stdout.splitlines()]
    assert isinstance(decode_event(orjson.dumps(spent["event"])), TokensSpent)
    later = await replay("export", "--since", "1h", "--until", "2h ago", url=nats_server.url)
    assert later.returncode == 2
    assert "--until must be after --since" in later.stderr
    window = await replay("export", "--from-seq", "2", "--to-seq", "3", url=nats_server.url)
    assert [orjson.loads(line)["seq"] for line in window.stdout.splitlines()] == [2, 3]
    types = {TurnAdmitted.TYPE, TokensSpent.TYPE, TurnCompleted.TYPE}
    assert {line["event"]["type"] for line in lines} >= types


# ------------------------------------------------------------------ mistakes


async def test_mistakes_get_one_clear_line_and_a_non_zero_exit(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """Unknown users and channels, bad times, flags and projections: exit 2 and say why."""
    await history(client)
    url = nats_server.url
    cases: list[tuple[tuple[str, ...], str]] = [
        (("audit", "--user", "nobody"), "unknown user 'nobody'"),
        (("state", "--channel", "nowhere"), "unknown channel 'nowhere'"),
        (("state", "--user", "nobody"), "unknown user 'nobody'"),
        (("audit", "--user", "alice", "--since", "last tuesday"), "--since: cannot read"),
        (("audit", "--all", "--by", "week"), "invalid choice: 'week'"),
        (("audit",), "one of the arguments --user --all is required"),
        (("state", "--channel", "a", "--seq", "0"), "must be 1 or more"),
        (("state", "--channel", "a", "--at", "noon", "--seq", "3"), "not allowed with"),
        (("rebuild", "--projection", "colours"), "unknown projection 'colours'"),
        (("tail", "--type", "TurnStarted"), "invalid choice: 'TurnStarted'"),
        (("state", "--user", ""), "must not be empty"),
    ]
    for args, message in cases:
        result = await replay(*args, url=url)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


async def test_no_server_or_no_log_exits_3(
    nats_server: EmbeddedNatsServer, tmp_path: pathlib.Path
) -> None:
    """Nothing listening, or a server without the log: exit 3 with the reason."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = await replay("verify", url=f"nats://127.0.0.1:{closed_port}")
    assert unreachable.returncode == 3
    assert "cannot connect to NATS at nats://127.0.0.1" in unreachable.stderr
    no_log = await replay("audit", "--all", url=nats_server.url)
    assert no_log.returncode == 3
    assert "no event log: stream LLM_EVENTS does not exist" in no_log.stderr
    bad_config = tmp_path / "config.json"
    bad_config.write_text('{"service": {"max_contxt_messages": 3}}')
    configured = await replay("verify", "--config", str(bad_config), url=nats_server.url)
    assert configured.returncode == 2
    assert "max_contxt_messages" in configured.stderr


DOCS_EVENTS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "events"


async def test_schemas_command_checks_the_documented_schemas() -> None:
    """`llm-replay schemas --check docs/events` agrees with the code (exit 0)."""
    docs = DOCS_EVENTS
    result = await replay("schemas", "--check", str(docs))
    assert result.returncode == 0, result.stderr
