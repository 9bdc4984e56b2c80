"""deploy/nats-server.conf on a real nats-server: each user can do its job and nothing more.

llm-es runs as `llmes` (commands, streaming, events, `llm-replay rebuild`), the bot as
`bot`, other plugins as `plugins`, `llm-replay verify|audit` as `auditor`. The server log
must show no permission violation for work the users are meant to do, and one for each
thing they are not.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es import access
from llm_es.app import Plugin
from llm_es.config import NatsConfig, Secret
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.connection import connect
from llm_es.store.log import STREAM_NAME
from projections.runner import ViewRunner, build_view_runner
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, make_config, wait_until

pytestmark = pytest.mark.timeout(120)

DEPLOY_CONFIG = pathlib.Path(__file__).parents[2] / "deploy" / "nats-server.conf"
PASSWORDS = {
    "llmes": "pwllmes0123",
    "bot": "pwbot4567",
    "plugins": "pwplugins89ab",
    "auditor": "pwauditorcdef",
}
INBOXES = {"llmes": access.PLUGIN_INBOX, "auditor": access.AUDITOR_INBOX}
DENIED_SECONDS = 1.0
VIOLATION = re.compile(r'user:(\S+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')


def nats_config(user: str, url: str) -> NatsConfig:
    return NatsConfig(
        url=url,
        user=user,
        password=Secret(PASSWORDS[user]),
        inbox_prefix=INBOXES.get(user),
    )


@pytest.fixture
async def deploy_server(tmp_path: pathlib.Path) -> AsyncIterator[EmbeddedNatsServer]:
    environment = {f"{name.upper()}_PASSWORD": pw for name, pw in PASSWORDS.items()}
    server = EmbeddedNatsServer(
        tmp_path / "nats",
        port=0,
        extra_arguments=("-c", str(DEPLOY_CONFIG)),
        environment=environment,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Users:
    """One connection per user, as llm-es connects (closed at teardown)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: dict[str, NATS] = {}

    async def connect(self, user: str) -> NATS:
        if user not in self.connections:
            nc = await connect(nats_config(user, self.url), None, f"test-{user}")
            self.connections[user] = nc
        return self.connections[user]

    async def close(self) -> None:
        for nc in self.connections.values():
            await nc.close()


@pytest.fixture
async def users(deploy_server: EmbeddedNatsServer) -> AsyncIterator[Users]:
    each = Users(deploy_server.url)
    try:
        yield each
    finally:
        await each.close()


@pytest.fixture
async def plugin(
    users: Users, fake_llm: FakeLLMServer, deploy_server: EmbeddedNatsServer
) -> AsyncIterator[Plugin]:
    nc = await users.connect("llmes")
    config = make_config(fake_llm.base_url)
    running = Plugin(config, nc, view_runner_factory=build_view_runner)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def server_violations(server: EmbeddedNatsServer) -> list[tuple[str, str, str]]:
    """(user, "Publish" or "Subscription", subject) of each violation in the server's log."""
    return [
        (found[1], found[2], found[3])
        for found in map(VIOLATION.search, server.log_file.read_text().splitlines())
        if found is not None
    ]


async def denied_request(nc: NATS, subject: str, data: bytes = b"") -> bool:
    """True when the server drops the request (no answer: a publish permission violation)."""
    try:
        await nc.request(subject, data, timeout=DENIED_SECONDS)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return True
    return False


async def log_last_seq(nc: NATS) -> int:
    return (await nc.jetstream().stream_info(STREAM_NAME)).state.last_seq


async def test_the_plugin_serves_bot_and_plugins_streaming_included(
    plugin: Plugin, users: Users, deploy_server: EmbeddedNatsServer
) -> None:
    """llmes starts, answers a bot's `!chat`, streams a chat to a plugin (many messages to
    one reply subject: allow_responses max > 1), publishes `rosey.event.llm.*`; the server
    logs no permission violation for any of it."""
    bot, other = await users.connect("bot"), await users.connect("plugins")
    events: asyncio.Queue[str] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(msg.subject)

    await other.subscribe("rosey.event.llm.>", cb=on_event)
    await other.flush()
    answer = await command(bot, "Hello there")
    assert answer["success"] is True, answer
    async with asyncio.timeout(10):
        assert await events.get() == "rosey.event.llm.response"

    inbox = other.new_inbox()
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await received.put(orjson.loads(msg.data))

    sub = await other.subscribe(inbox, cb=collect)
    payload = {"channel": "c", "user": "u", "message": "Stream please", "stream": True}
    await other.publish("rosey.llm.chat", orjson.dumps(payload), reply=inbox)
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not messages or "success" not in messages[-1]:
            messages.append(await received.get())
    await sub.unsubscribe()
    assert len(messages) > 2, messages
    assert messages[-1]["success"] is True
    assert "".join(m["chunk"] for m in messages[:-1]) == messages[-1]["content"]

    status = await other.request("rosey.llm.status", b"{}", timeout=10)
    assert orjson.loads(status.data)["healthy"] is True
    assert server_violations(deploy_server) == []


async def test_the_bot_cannot_write_delete_purge_or_read_the_log_or_kv(
    plugin: Plugin, users: Users, deploy_server: EmbeddedNatsServer
) -> None:
    """Every attempt is refused by the server; the log is untouched."""
    llmes, bot = await users.connect("llmes"), await users.connect("bot")
    assert (await command(bot, "Hello"))["success"] is True
    before = await log_last_seq(llmes)

    await bot.publish("llm.ev.lobby.alice.TokensSpent", b'{"forged": true}')
    denied_apis = (
        f"STREAM.DELETE.{STREAM_NAME}",
        f"STREAM.PURGE.{STREAM_NAME}",
        f"STREAM.INFO.{STREAM_NAME}",
        f"CONSUMER.CREATE.{STREAM_NAME}",
        "DIRECT.GET.KV_llm_data.$KV.llm_data.checkpoint.context",
    )
    for subject in [f"$JS.API.{api}" for api in denied_apis] + ["$KV.llm_data.usage.alice"]:
        assert await denied_request(bot, subject), subject
    await bot.subscribe("llm.ev.>")
    await bot.flush()

    assert await log_last_seq(llmes) == before
    published = [f"$JS.API.{api}" for api in denied_apis] + ["$KV.llm_data.usage.alice"]
    assert server_violations(deploy_server) == [
        ("bot", "Publish", "llm.ev.lobby.alice.TokensSpent"),
        *[("bot", "Publish", subject) for subject in published],
        ("bot", "Subscription", "llm.ev.>"),
    ]


async def test_neither_llmes_nor_the_auditor_can_delete_or_purge_the_log(
    plugin: Plugin, users: Users
) -> None:
    """The deny list holds for the plugin's own user; the auditor cannot publish at all."""
    llmes, auditor = await users.connect("llmes"), await users.connect("auditor")
    for nc in (llmes, auditor):
        assert await denied_request(nc, f"$JS.API.STREAM.DELETE.{STREAM_NAME}")
        assert await denied_request(nc, f"$JS.API.STREAM.PURGE.{STREAM_NAME}")
    before = await log_last_seq(llmes)
    await auditor.publish("llm.ev.lobby.alice.TokensSpent", b"{}")
    await auditor.flush()
    assert await log_last_seq(llmes) == before
    assert (await auditor.jetstream().stream_info(STREAM_NAME)).state.last_seq == before


def write_config(path: pathlib.Path, user: str, url: str) -> pathlib.Path:
    body: dict[str, Any] = {
        "nats": {"url": url, "user": user, "password": PASSWORDS[user]},
        "http": {"listen": None},
    }
    if user in INBOXES:
        body["nats"]["inbox_prefix"] = INBOXES[user]
    path.write_bytes(orjson.dumps(body))
    path.chmod(0o600)
    return path


async def test_rebuild_as_llmes_then_verify_and_audit_as_the_auditor(
    plugin: Plugin, users: Users, deploy_server: EmbeddedNatsServer, tmp_path: pathlib.Path
) -> None:
    """`llm-replay rebuild` twice as llmes (the second deletes the first generation),
    then `verify` and `audit` as the auditor: all succeed, no permission violation."""
    bot = await users.connect("bot")
    for text in ("One", "Two", "remember Alice likes tea"):
        assert (await command(bot, text))["success"] is True
    replay = console_script("llm-replay")
    as_llmes = write_config(tmp_path / "llmes.json", "llmes", deploy_server.url)
    as_auditor = write_config(tmp_path / "auditor.json", "auditor", deploy_server.url)

    for generation in (2, 3):
        rebuilt = await run_script(
            replay, "rebuild", "--no-progress", "--config", str(as_llmes), within=60
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert f"the live views are now llm_data_{generation}" in rebuilt.stdout
    assert "deleted the old generation llm_data" in rebuilt.stdout, rebuilt.stdout

    async def switched() -> bool:
        views = plugin.views
        return isinstance(views, ViewRunner) and views.bucket == "llm_data_3"

    await wait_until(switched, within=10)
    assert (await command(bot, "Three"))["success"] is True
    verified = await run_script(replay, "verify", "--no-progress", "--config", str(as_auditor))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    audited = await run_script(replay, "audit", "--all", "--config", str(as_auditor))
    assert audited.returncode == 0, audited.stderr
    assert "alice" in audited.stdout
    assert server_violations(deploy_server) == []


def test_the_shipped_config_is_what_llm_es_access_renders() -> None:
    """deploy/nats-server.conf is generated: `python -m llm_es.access > deploy/nats-server.conf`."""
    rendered = access.render_server_config(access.deploy_users(), header=access.DEPLOY_HEADER)
    assert DEPLOY_CONFIG.read_text() == rendered
    assert "password: $" in rendered
    assert not any(pw in rendered for pw in PASSWORDS.values())
    assert os.path.basename(DEPLOY_CONFIG) == "nats-server.conf"
