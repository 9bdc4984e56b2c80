"""The deprecated `llm.request` interface: chat, complete, reset, bad input, deprecation log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es.app import Plugin
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import ContextReset, TurnAdmitted
from llm_es.service.chat import SERVICE_USER
from llm_es.service.legacy import LegacySurface
from tests.integration.conftest import PluginStarter
from tests.support.harness import REQUEST_TIMEOUT, log_events, make_config

pytestmark = pytest.mark.timeout(60)


LEGACY_LOGGER = "llm_es.service.legacy"


@pytest.fixture
async def legacy(plugin: Plugin) -> LegacySurface:
    """The running plugin's legacy surface (`Plugin.start` wires it)."""
    assert plugin.legacy is not None
    return plugin.legacy


class Outbox:
    """Everything published on `llm.response` and `llm.error`, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    async def take(self, msg: Msg) -> None:
        self.messages.append((msg.subject, orjson.loads(msg.data)))
        self._arrived.set()

    async def next(self) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while not self.messages:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages.pop(0)


@pytest.fixture
async def outbox(client: NATS) -> AsyncIterator[Outbox]:
    box = Outbox()
    subs = [await client.subscribe(s, cb=box.take) for s in ("llm.response", "llm.error")]
    await client.flush()
    try:
        yield box
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def send(client: NATS, payload: dict[str, Any] | bytes) -> None:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await client.publish("llm.request", data)


async def test_chat_is_answered_on_llm_response(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """A published chat request gets the model's answer on `llm.response`, recorded as legacy."""
    await send(
        client, {"action": "chat", "channel_id": "lobby", "message": "hi", "username": "alice"}
    )
    subject, answer = await outbox.next()
    assert subject == "llm.response"
    assert answer["success"] is True
    assert answer["type"] == "llm_response"
    assert answer["action"] == "chat"
    assert answer["channel_id"] == "lobby"
    assert answer["username"] == "alice"
    assert answer["content"] == answer["message"] == "Hello from the fake model."
    assert answer["provider"] == "ollama"
    assert answer["tokens_used"] > 0
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [(a.source, a.user, a.channel, a.purpose) for a in admitted] == [
        ("legacy", "alice", "lobby", "chat")
    ]


async def test_request_with_a_reply_subject_is_answered_there_too(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """`nc.request` on `llm.request` gets the same answer that goes to `llm.response`."""
    payload = {"action": "chat", "channel_id": "lobby", "message": "hello", "username": "bob"}
    reply = await client.request("llm.request", orjson.dumps(payload), timeout=REQUEST_TIMEOUT)
    direct = orjson.loads(reply.data)
    subject, published = await outbox.next()
    assert subject == "llm.response"
    assert direct == published
    assert direct["success"] is True


async def test_chat_without_username_is_booked_to_the_seed_default(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """As in the seed, a chat without `username` speaks as `User`."""
    await send(client, {"action": "chat", "channel_id": "lobby", "message": "who am I?"})
    subject, answer = await outbox.next()
    assert subject == "llm.response"
    assert answer["username"] is None
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [a.user for a in admitted] == ["User"]


async def test_complete_is_a_raw_completion_under_the_callers_limits(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """`complete` sends only the message (no persona, no context) and books it to the
    username, or to the service identity without one."""
    await send(client, {"action": "complete", "message": "2+2?", "username": "carol"})
    subject, answer = await outbox.next()
    assert subject == "llm.response"
    assert answer["content"] == "Hello from the fake model."
    assert answer["channel_id"] is None
    await send(client, {"action": "complete", "channel_id": "", "message": "and 3+3?"})
    subject, anonymous = await outbox.next()
    assert subject == "llm.response"
    assert anonymous["username"] is None
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [(a.user, a.purpose, a.source, a.channel) for a in admitted] == [
        ("carol", "complete", "legacy", None),
        (SERVICE_USER, "complete", "legacy", None),
    ]


async def test_complete_sends_the_message_alone(
    legacy: LegacySurface, client: NATS, outbox: Outbox, fake_llm: Any
) -> None:
    """The provider receives exactly one user message for a completion."""
    await send(client, {"action": "complete", "message": "just this", "username": "dave"})
    await outbox.next()
    body = fake_llm.chat_requests[-1].body
    assert body is not None
    assert body["messages"] == [{"role": "user", "content": "just this"}]


async def test_reset_clears_the_channel(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """`reset` records ContextReset for the channel and answers on `llm.response`."""
    await send(client, {"action": "reset", "channel_id": "lobby", "username": "erin"})
    subject, answer = await outbox.next()
    assert subject == "llm.response"
    assert answer["content"] == "Conversation context reset"
    await send(client, {"action": "reset", "channel_id": "other"})
    subject, _ = await outbox.next()
    assert subject == "llm.response"
    resets = [e for _, e in await log_events(client) if isinstance(e, ContextReset)]
    assert [(r.channel, r.user) for r in resets] == [("lobby", "erin"), ("other", "User")]


async def test_rate_limited_chat_answers_on_llm_error(
    start: PluginStarter, client: NATS, fake_llm: Any, outbox: Outbox
) -> None:
    """A refused turn is an `llm.error` with the seed's rate-limit text."""
    await start(make_config(fake_llm.base_url, rate_limits=RateLimitsConfig(requests_per_minute=1)))
    chat = {"action": "chat", "channel_id": "lobby", "message": "one", "username": "frank"}
    await send(client, chat)
    assert (await outbox.next())[0] == "llm.response"
    await send(client, {**chat, "message": "two"})
    subject, refused = await outbox.next()
    assert subject == "llm.error"
    assert refused["success"] is False
    assert refused["error"].startswith("Rate limit: 1 requests/minute")
    assert refused["reason"] == "rate_limit"


BAD_INPUTS: list[tuple[bytes, str]] = [
    (b"{not json", "Invalid JSON"),
    (b"[1, 2]", "Payload must be a JSON object, got an array"),
    (orjson.dumps({"channel_id": "c", "message": "m"}), "Missing field 'action'"),
    (orjson.dumps({"action": "dance", "channel_id": "c"}), "Unknown action: 'dance'"),
    (orjson.dumps({"action": 7, "channel_id": "c"}), "Unknown action: 7"),
    (orjson.dumps({"action": "chat", "message": "m"}), "Missing field 'channel_id'"),
    (orjson.dumps({"action": "chat", "channel_id": "c"}), "Missing field 'message'"),
    (orjson.dumps({"action": "reset"}), "Missing field 'channel_id'"),
    (orjson.dumps({"action": "complete"}), "Missing field 'message'"),
    (
        orjson.dumps({"action": "chat", "channel_id": "c", "message": 5}),
        "Field 'message' must be a string, got a number",
    ),
    (
        orjson.dumps({"action": "chat", "channel_id": ["c"], "message": "m"}),
        "Field 'channel_id' must be a string, got an array",
    ),
    (
        orjson.dumps({"action": "chat", "channel_id": "c", "message": "m", "username": True}),
        "Field 'username' must be a string, got a boolean",
    ),
    (
        orjson.dumps({"action": "chat", "channel_id": "c", "message": "   "}),
        "Field 'message' must not be empty",
    ),
    (
        orjson.dumps({"action": "chat", "channel_id": "c", "message": "x" * 9000}),
        "Message too long: 9000 characters (limit 8000)",
    ),
    (
        orjson.dumps({"action": "reset", "channel_id": "c" * 200}),
        "Field 'channel_id' is too long",
    ),
]


@pytest.mark.parametrize(("payload", "error"), BAD_INPUTS)
async def test_bad_input_gets_llm_error_and_appends_nothing(
    legacy: LegacySurface, client: NATS, outbox: Outbox, payload: bytes, error: str
) -> None:
    """Invalid JSON, unknown actions, missing, wrong-typed, empty or oversize fields get
    an `llm.error` naming the problem; nothing is appended and the handler keeps working."""
    await send(client, payload)
    subject, answer = await outbox.next()
    assert subject == "llm.error"
    assert answer["success"] is False
    assert answer["type"] == "llm_error"
    assert answer["error"].startswith(error)
    assert await log_events(client) == []
    await send(client, {"action": "reset", "channel_id": "after"})
    assert (await outbox.next())[0] == "llm.response"


async def test_bad_input_echoes_only_short_string_fields(
    legacy: LegacySurface, client: NATS, outbox: Outbox
) -> None:
    """An error answer repeats action, channel and user when readable, never a huge value."""
    await send(client, {"action": "dance", "channel_id": "c" * 5000, "username": "gus"})
    _, answer = await outbox.next()
    assert answer["action"] == "dance"
    assert answer["channel_id"] is None
    assert answer["username"] == "gus"


async def test_deprecation_is_logged_once_per_caller(
    legacy: LegacySurface,
    client: NATS,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every caller (by username, or the anonymous one) is warned about once, not per request."""
    caplog.set_level(logging.WARNING, logger="llm_es.service.legacy")
    requests = [
        {"action": "reset", "channel_id": "a", "username": "hana"},
        {"action": "reset", "channel_id": "b", "username": "hana"},
        {"action": "reset", "channel_id": "c", "username": "ivan"},
        {"action": "reset", "channel_id": "d"},
        {"action": "reset", "channel_id": "e", "username": "hana"},
        {"action": "reset", "channel_id": "f"},
    ]
    for request in requests:
        await send(client, request)
        await outbox.next()
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "llm_es.service.legacy"
        and r.getMessage().startswith("legacy_request_deprecated")
    ]
    assert len(warnings) == 3
    assert all(
        r.levelno == logging.WARNING for r in caplog.records if r.name == "llm_es.service.legacy"
    )
    assert any("caller=hana" in w for w in warnings)
    assert any("caller=ivan" in w for w in warnings)
    assert any('caller="(no username)"' in w for w in warnings)


async def test_stop_stops_answering(legacy: LegacySurface, client: NATS) -> None:
    """After `stop`, nobody answers `llm.request` any more."""
    await legacy.stop()
    payload = orjson.dumps({"action": "reset", "channel_id": "x"})
    with pytest.raises(nats.errors.NoRespondersError):
        await client.request("llm.request", payload, timeout=2)
