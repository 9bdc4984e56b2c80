"""Requests with a `request_id`: a retry is answered with the first outcome, never a second turn."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import REQUEST_TIMEOUT, event_types, raw_request


async def chat_command(client: NATS, args: str, request_id: str) -> dict[str, Any]:
    payload = {"channel": "lobby", "user": "alice", "args": args, "request_id": request_id}
    return await raw_request(client, "rosey.command.chat", orjson.dumps(payload))


async def test_chat_command_sent_twice_is_one_turn_with_one_answer(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The same `!chat` with the same request_id: one TurnAdmitted, one TokensSpent, one
    provider call, and the same reply both times."""
    first = await chat_command(client, "hello there", "req-1")
    second = await chat_command(client, "hello there", "req-1")
    assert first["success"] is True, first
    assert second == first
    types = await event_types(client)
    assert types.count("TurnAdmitted") == 1
    assert types.count("TokensSpent") == 1
    assert types.count("TurnCompleted") == 1
    assert len(fake_llm.chat_requests) == 1
    third = await chat_command(client, "hello there", "req-2")
    assert third["success"] is True
    assert (await event_types(client)).count("TurnAdmitted") == 2


async def test_service_chat_retried_while_the_first_runs_waits_for_its_answer(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """`rosey.llm.chat` sent again while the first is still being answered: both replies
    are the first turn's answer, with the same `Llm-Turn-Id`; the log holds one turn."""
    fake_llm.delay = 1.0
    body = orjson.dumps({"channel": "lobby", "user": "bob", "message": "hi", "request_id": "abc"})
    first, second = await asyncio.gather(
        client.request("rosey.llm.chat", body, timeout=REQUEST_TIMEOUT),
        client.request("rosey.llm.chat", body, timeout=REQUEST_TIMEOUT),
    )
    assert orjson.loads(first.data) == orjson.loads(second.data)
    assert orjson.loads(first.data)["success"] is True
    assert sorted(orjson.loads(first.data)) == [
        "content", "error", "provider", "success", "tokens_used"
    ]  # fmt: skip
    assert first.headers is not None
    assert second.headers is not None
    assert first.headers["Llm-Turn-Id"] == second.headers["Llm-Turn-Id"]
    types = await event_types(client)
    assert (types.count("TurnAdmitted"), types.count("TokensSpent")) == (1, 1)
    assert len(fake_llm.chat_requests) == 1


async def test_remember_sent_twice_is_one_memory(plugin: Plugin, client: NATS) -> None:
    """`!chat remember` and `rosey.llm.memory.add` retried with their request_id: one memory
    each, and the same reply (same memory id) both times."""
    payload = {"channel": "lobby", "user": "alice", "args": "tea is at 4", "request_id": "m1"}
    data = orjson.dumps(payload)
    first = await raw_request(client, "rosey.command.chat.remember", data)
    second = await raw_request(client, "rosey.command.chat.remember", data)
    assert first["success"] is True, first
    assert second == first
    add = orjson.dumps({"channel": "lobby", "content": "coffee at 10", "request_id": "m2"})
    added = await raw_request(client, "rosey.llm.memory.add", add)
    again = await raw_request(client, "rosey.llm.memory.add", add)
    assert added["success"] is True
    assert again == added
    assert (await event_types(client)).count("MemoryAdded") == 2


async def test_request_id_of_a_wrong_type_is_refused(plugin: Plugin, client: NATS) -> None:
    """A request_id that is not a non-blank string is a clear error; nothing is appended."""
    before = await event_types(client)
    body = orjson.dumps({"channel": "lobby", "user": "bob", "message": "hi", "request_id": 7})
    answer = await raw_request(client, "rosey.llm.chat", body)
    assert answer["success"] is False
    assert "request_id" in answer["error"]
    assert await event_types(client) == before
