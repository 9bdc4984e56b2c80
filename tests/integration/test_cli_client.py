"""The `llm-es chat` and `llm-es status` console scripts, run as real subprocesses.

The plugin runs in the test's process on the test nats-server; the script
under test reaches it only through NATS, as an operator's terminal would.
"""

from __future__ import annotations

import pathlib
import socket
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.chat_client import NO_ANSWER
from llm_es.domain.events import TurnAdmitted
from llm_es.domain.replies import HELP
from llm_es.embedded import EmbeddedNatsServer
from llm_es.status import NO_LOG_YET
from tests.support.cli import CliResult, console_script, run_script
from tests.support.harness import command, event_types, log_events, wait_persisted

CLI_TIMEOUT_SECONDS = 30.0
MODEL_REPLY = "Hello from the fake model."


LLM_ES = console_script("llm-es")


async def run_cli(*args: str, stdin: bytes = b"") -> CliResult:
    """Run `llm-es ARGS` with `stdin` piped in; kill it if it outlives the bound."""
    return await run_script(LLM_ES, *args, stdin=stdin, within=CLI_TIMEOUT_SECONDS)


def _closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ------------------------------------------------------------------ llm-es chat


async def test_chat_sends_each_line_and_prints_replies(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """A plain line is a chat turn, `!chat help` the help; `/quit` exits 0."""
    result = await run_cli(
        "chat",
        "--nats-url",
        nats_server.url,
        "--channel",
        "c",
        "--user",
        "u",
        stdin=b"hello\n!chat help\n/quit\nnever sent\n",
    )
    assert result.returncode == 0, result.stderr
    banner, *_ = result.stdout.splitlines()
    assert "channel c" in banner
    assert "user u" in banner
    assert "!chat help" in banner
    assert f"rosey> {MODEL_REPLY}" in result.stdout
    assert "!chat remember <fact> - remember a fact for this channel" in result.stdout
    assert HELP.splitlines()[0] in result.stdout
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [(e.channel, e.user, e.message) for e in admitted] == [("c", "u", "hello")]


async def test_chat_skips_blank_lines_and_exits_at_end_of_input(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """Blank lines send nothing; end of input ends the session with exit code 0."""
    result = await run_cli(
        "chat", "--nats-url", nats_server.url, stdin=b"\n   \n!chat persona\n\t\n"
    )
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("rosey> ")]
    assert replies == [
        "rosey> Available personas: default, concise, technical, creative. Current: default. "
        "Use: !chat persona <name>"
    ]
    assert await event_types(client) == []


async def test_chat_prints_refusals_as_errors(
    plugin: Plugin, nats_server: EmbeddedNatsServer
) -> None:
    """A `success: false` reply is printed as `error: <error>` and the session goes on."""
    result = await run_cli(
        "chat", "--nats-url", nats_server.url, stdin=b"persona pirate\n!chat persona\n"
    )
    assert result.returncode == 0, result.stderr
    assert (
        "error: Unknown persona 'pirate'. Available: default, concise, technical, creative"
        in result.stdout
    )
    assert "rosey> Available personas:" in result.stdout


async def test_chat_without_an_instance_says_nobody_answered(
    nats_server: EmbeddedNatsServer,
) -> None:
    """With no llm-es subscribed, each line gets the 'no instance answered' line; exit 0."""
    result = await run_cli(
        "chat", "--nats-url", nats_server.url, "--timeout", "5", stdin=b"hello\nagain\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(NO_ANSWER) == 2
    assert "no llm-es instance answered on rosey.command.chat" in NO_ANSWER


@pytest.mark.parametrize("subcommand", [["chat"], ["status"], ["status", "--json"]])
async def test_unreachable_nats_exits_1_without_echoing_the_password(
    subcommand: list[str],
) -> None:
    """No server at the URL: one line on stderr (no password), nothing on stdout, exit 1."""
    url = f"nats://operator:hunter2@127.0.0.1:{_closed_port()}"
    result = await run_cli(*subcommand, "--nats-url", url, stdin=b"hello\n")
    assert result.returncode == 1
    assert "cannot connect to NATS at nats://operator:***@127.0.0.1:" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stdout == ""


# ------------------------------------------------------------------ llm-es status


async def _status_json(nats_server: EmbeddedNatsServer) -> dict[str, Any]:
    result = await run_cli("status", "--nats-url", nats_server.url, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


async def test_status_json_after_a_turn(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """After one turn: the log's counts by type, every checkpoint at the end (lag 0), answered."""
    answer = await command(client, "Hello there", channel="c", user="u")
    assert answer["success"] is True
    await wait_persisted(client)
    report = await _status_json(nats_server)

    assert report["server"]["version_ok"] is True
    assert report["server"]["jetstream"] is True
    stream = report["stream"]
    assert stream["exists"] is True
    assert (stream["messages"], stream["first_seq"], stream["last_seq"]) == (3, 1, 3)
    assert stream["event_types"] == {"TokensSpent": 1, "TurnAdmitted": 1, "TurnCompleted": 1}
    assert stream["event_types_partial"] is False
    assert (stream["storage"], stream["allow_atomic"]) == ("file", True)
    assert (stream["replicas"], report["views"]["replicas"]) == (1, 1)
    assert stream["duplicate_window_seconds"] > 0
    assert report["views"]["exists"] is True
    assert report["views"]["keys"] == {
        "messages": 1,
        "memories": 0,
        "channel": 0,
        "usage": 1,
        "checkpoint": 4,
        "quarantine": 0,
    }
    assert report["checkpoints"] == {
        name: {"seq": 3, "lag": 0, "stored": True}
        for name in ("context", "memories", "settings", "usage")
    }
    assert report["instance"] == {
        "subject": "rosey.command.chat",
        "answered": True,
        "success": True,
    }
    assert plugin.service is not None
    [running] = report["instances"]
    assert running["instance"] == plugin.service.instance_id
    assert (running["admitted"], running["rejected"], running["admission_conflicts"]) == (1, 0, 0)
    assert running["turns_in_flight"] == 0
    assert await event_types(client) == ["TurnAdmitted", "TokensSpent", "TurnCompleted"]


async def test_status_text_is_aligned_key_value_lines(
    plugin: Plugin, client: NATS, nats_server: EmbeddedNatsServer
) -> None:
    """The human report is `key: value` lines with the values in one column."""
    await command(client, "Hello there")
    await wait_persisted(client)
    result = await run_cli("status", "--nats-url", nats_server.url)
    assert result.returncode == 0, result.stderr
    assert "nats_disconnected" not in result.stderr  # its own close is no news
    lines = result.stdout.splitlines()
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1, lines
    fields = {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}
    assert fields["stream messages"] == "3"
    assert fields["events TurnCompleted"] == "1"
    assert fields["checkpoint usage"] == "3 (lag 0)"
    assert fields["instance"] == "answered on rosey.command.chat"
    assert plugin.service is not None
    counters = fields[f"instance {plugin.service.instance_id}"]
    assert "admitted 1, rejected 0, admission conflicts 0" in counters


async def test_status_without_an_event_log_says_so_and_exits_0(
    nats_server: EmbeddedNatsServer,
) -> None:
    """Before any `llm-es serve`: 'no event log yet', no answer, exit 0, in both formats."""
    text = await run_cli("status", "--nats-url", nats_server.url)
    assert text.returncode == 0, text.stderr
    assert NO_LOG_YET in text.stdout
    assert "NO ANSWER on rosey.command.chat" in text.stdout

    report = await _status_json(nats_server)
    assert report["stream"] == {"name": "LLM_EVENTS", "exists": False, "note": NO_LOG_YET}
    assert report["views"]["exists"] is False
    assert report["instance"]["answered"] is False
    assert report["server"]["version_ok"] is True


@pytest.mark.parametrize("order", ["after-subcommand", "before-subcommand"])
async def test_bad_config_key_exits_2_naming_the_key(tmp_path: pathlib.Path, order: str) -> None:
    """A config file with an unknown key: exit 2, and stderr names the key."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"service": {"max_context_mesages": 5}}')
    if order == "after-subcommand":
        args = ["status", "--config", str(bad)]
    else:
        args = ["--config", str(bad), "status"]
    result = await run_cli(*args)
    assert result.returncode == 2
    assert "service.max_context_mesages" in result.stderr
    assert result.stdout == ""
