"""The `rosey.llm.*` service as other plugins use it: schemas, streaming, limits, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es import headers
from llm_es.app import Plugin
from llm_es.config import Config, OllamaConfig, ProvidersConfig, RateLimitsConfig
from llm_es.domain.events import MemoryAdded, PersonaSwitched, TokensSpent, TurnAdmitted
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import REQUEST_TIMEOUT, event_types, log_events, raw_request

REPLY = "Hello from the fake model."


async def call(client: NATS, endpoint: str, body: Any) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await raw_request(client, f"rosey.llm.{endpoint}", data)


async def call_with_headers(
    client: NATS, endpoint: str, body: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    reply = await client.request(f"rosey.llm.{endpoint}", data, timeout=REQUEST_TIMEOUT)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer, dict(reply.headers or {})


async def test_chat_answers_with_the_seed_schema(plugin: Plugin, client: NATS) -> None:
    """ChatRequest -> exactly ChatResponse{success, content, error, tokens_used, provider};
    the turn and the model travel as headers."""
    answer, found = await call_with_headers(
        client, "chat", {"channel": "c", "user": "u", "message": "Hi"}
    )
    spent = next(e for _, e in await log_events(client) if isinstance(e, TokensSpent))
    assert answer == {
        "success": True,
        "content": REPLY,
        "error": None,
        "tokens_used": spent.prompt_tokens + spent.completion_tokens,
        "provider": "ollama",
    }
    admitted = next(e for _, e in await log_events(client) if isinstance(e, TurnAdmitted))
    assert admitted.source == "service"
    assert found == {headers.LLM_TURN_ID: admitted.turn_id, headers.LLM_MODEL: "llama3.2"}


async def test_chat_persona_override_is_per_request(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A request's persona applies to that turn only."""
    await call(
        client, "chat", {"channel": "c", "user": "u", "message": "Hi", "persona": "technical"}
    )
    system = fake_llm.chat_requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    assert "technical" in system
    await call(client, "chat", {"channel": "c", "user": "u", "message": "Again"})
    system = fake_llm.chat_requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    assert "technical" not in system


async def test_streamed_chat_sends_chunks_then_the_final_response(
    plugin: Plugin, client: NATS
) -> None:
    """stream: true -> {chunk, index} messages in order, then exactly the ChatResponse."""
    inbox = client.new_inbox()
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    final_headers: list[dict[str, str]] = []

    async def collect(msg: Any) -> None:
        body = orjson.loads(msg.data)
        if "success" in body:
            final_headers.append(dict(msg.headers or {}))
        await received.put(body)

    sub = await client.subscribe(inbox, cb=collect)
    payload = {"channel": "c", "user": "u", "message": "Stream please", "stream": True}
    await client.publish("rosey.llm.chat", orjson.dumps(payload), reply=inbox)
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not messages or "success" not in messages[-1]:
            messages.append(await received.get())
    await sub.unsubscribe()
    chunks, final = messages[:-1], messages[-1]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["chunk"] for c in chunks) == REPLY
    spent = next(e for _, e in await log_events(client) if isinstance(e, TokensSpent))
    assert final == {
        "success": True,
        "content": REPLY,
        "error": None,
        "tokens_used": spent.prompt_tokens + spent.completion_tokens,
        "provider": "ollama",
    }
    assert not spent.estimated
    assert final_headers == [{headers.LLM_TURN_ID: spent.turn_id, headers.LLM_MODEL: "llama3.2"}]


async def test_complete_is_rate_limited_and_booked_to_the_user_or_the_service(
    start: PluginStarter, client: NATS
) -> None:
    """Completions go through the same limits and ledger as chat turns."""
    await start(rate_limits=RateLimitsConfig(2, None, None, None))
    body = {"messages": [{"role": "user", "content": "Explain async"}], "max_tokens": 50}
    first, found = await call_with_headers(client, "complete", {**body, "user": "plugin-a"})
    assert first["success"] is True
    assert first["content"] == REPLY
    assert found[headers.LLM_MODEL] == "llama3.2"
    await call(client, "complete", {**body, "user": "plugin-a"})
    third = await call(client, "complete", {**body, "user": "plugin-a"})
    assert third["success"] is False
    assert third["error"].startswith("Rate limit: 2 requests/minute")
    anonymous = await call(client, "complete", body)
    assert anonymous["success"] is True
    booked = [e.user for _, e in await log_events(client) if isinstance(e, TokensSpent)]
    assert booked == ["plugin-a", "plugin-a", "service"]


@pytest.mark.parametrize("style", ["concise", "detailed", "bullets"])
async def test_summarize_honours_style_and_max_length(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer, style: str
) -> None:
    """The summary never exceeds max_length words, whatever the model returns."""
    fake_llm.reply = "- " + " ".join(["word"] * 40) + "\n- short point"
    answer = await call(
        client, "summarize", {"text": "A long text " * 50, "max_length": 12, "style": style}
    )
    assert answer["success"] is True
    assert len(answer["summary"].split()) <= 12
    system = fake_llm.chat_requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    assert "at most 12 words" in system


async def test_memory_add_recall_forget(plugin: Plugin, client: NATS) -> None:
    """MemoryResponse{success, memories, count, memory_id, error} for add, recall and forget;
    `memories` lists each memory as `!chat recall` shows it."""
    added = await call(
        client,
        "memory.add",
        {
            "channel": "c",
            "content": "Alice prefers Python",
            "category": "preference",
            "user_id": "alice",
            "importance": 4,
        },
    )
    memory_id = added["memory_id"]
    assert added == {
        "success": True,
        "memories": None,
        "count": 1,
        "memory_id": memory_id,
        "error": None,
    }
    stored = next(e for _, e in await log_events(client) if isinstance(e, MemoryAdded))
    assert (stored.category, stored.importance, stored.user_id) == ("preference", 4, "alice")
    recalled = await call(client, "memory.recall", {"channel": "c", "query": "python", "limit": 5})
    assert recalled == {
        "success": True,
        "memories": [f"Alice prefers Python (ID: {memory_id})"],
        "count": 1,
        "memory_id": None,
        "error": None,
    }
    forgotten = await call(client, "memory.forget", {"channel": "c", "memory_id": memory_id})
    assert forgotten["success"] is True
    again = await call(client, "memory.forget", {"channel": "c", "memory_id": memory_id})
    assert again == {
        "success": False,
        "memories": None,
        "count": 0,
        "memory_id": None,
        "error": f"Memory not found: {memory_id}",
    }


async def test_memory_add_takes_the_seed_defaults(plugin: Plugin, client: NATS) -> None:
    """A MemoryAddRequest as `asdict` sends it with nulls: category fact, importance 1."""
    body = {"channel": "c", "content": "Bob likes tea", "category": "fact"}
    added = await call(client, "memory.add", {**body, "user_id": None, "importance": None})
    assert added["success"] is True
    stored = next(e for _, e in await log_events(client) if isinstance(e, MemoryAdded))
    assert (stored.category, stored.importance, stored.user_id) == ("fact", 1, None)


async def test_persona_get_and_set(plugin: Plugin, client: NATS) -> None:
    """persona.get lists the channel's persona and the others; persona.set switches it,
    recorded as PersonaSwitched like `!chat persona`; an unknown one is refused."""
    available = ["default", "concise", "technical", "creative"]
    got = await call(client, "persona.get", {"channel": "c"})
    assert got == {"success": True, "persona": "default", "available": available, "error": None}
    switched = await call(client, "persona.set", {"channel": "c", "persona": "concise"})
    assert switched == {
        "success": True,
        "persona": "concise",
        "available": available,
        "error": None,
    }
    assert (await call(client, "persona.get", {"channel": "c"}))["persona"] == "concise"
    assert (await call(client, "persona.get", {"channel": "other"}))["persona"] == "default"
    refused = await call(client, "persona.set", {"channel": "c", "persona": "pirate"})
    assert refused == {
        "success": False,
        "persona": "concise",
        "available": available,
        "error": "Unknown persona 'pirate'. Available: default, concise, technical, creative",
    }
    switches = [e for _, e in await log_events(client) if isinstance(e, PersonaSwitched)]
    assert [(e.channel, e.user, e.persona) for e in switches] == [("c", None, "concise")]


async def test_status_and_usage(start: PluginStarter, client: NATS) -> None:
    """status is truthful and cheap; usage reports what each limit still allows."""
    await start(rate_limits=RateLimitsConfig(10, 100, 500, 50000))
    await call(client, "chat", {"channel": "c", "user": "alice", "message": "Hi"})
    status = await call(client, "status", b"")
    tokens = sum(
        e.prompt_tokens + e.completion_tokens
        for _, e in await log_events(client)
        if isinstance(e, TokensSpent)
    )
    assert status == {
        "healthy": True,
        "provider": "ollama",
        "model": "llama3.2",
        "requests_today": 1,
        "tokens_today": tokens,
        "rate_limited": False,
        "uptime_seconds": status["uptime_seconds"],
    }
    assert type(status["uptime_seconds"]) is int
    assert status["uptime_seconds"] >= 0
    # StatusRequest has no fields: any body, even one that is not JSON, asks for the status.
    assert (await call(client, "status", b"{not json"))["requests_today"] == 1
    usage = await call(client, "usage", {"user": "alice"})
    assert sorted(usage) == ["rate_limits_remaining", "requests_today", "tokens_today", "user"]
    assert usage["requests_today"] == 1
    remaining = usage["rate_limits_remaining"]
    assert (
        remaining["requests_minute"],
        remaining["requests_hour"],
        remaining["requests_day"],
    ) == (
        9,
        99,
        499,
    )
    assert remaining["tokens_day"] == 50000 - usage["tokens_today"]


async def test_usage_without_a_user_sums_everyone_today(start: PluginStarter, client: NATS) -> None:
    """UsageRequest{user: null} (what `asdict(UsageRequest())` sends) or `{}` answers
    everyone's totals today, with no per-limit figures."""
    await start(rate_limits=RateLimitsConfig(10, None, None, None))
    await call(client, "chat", {"channel": "c", "user": "alice", "message": "Hi"})
    await call(client, "chat", {"channel": "d", "user": "bob", "message": "Hi"})
    tokens = sum(
        e.prompt_tokens + e.completion_tokens
        for _, e in await log_events(client)
        if isinstance(e, TokensSpent)
    )
    expected = {
        "user": None,
        "requests_today": 2,
        "tokens_today": tokens,
        "rate_limits_remaining": {},
    }
    assert await call(client, "usage", {"user": None}) == expected
    assert await call(client, "usage", {}) == expected
    # A limit switched off has no figure (the seed's dict holds only integers).
    alice = await call(client, "usage", {"user": "alice"})
    assert alice["rate_limits_remaining"] == {"requests_minute": 9}


async def test_status_reports_an_unreachable_provider(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """With the provider down, healthy is false."""
    await fake_llm.stop()
    await start()
    status = await call(client, "status", {})
    assert status["healthy"] is False


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        ("chat", b"{not json", "Invalid JSON"),
        ("chat", {"user": "u", "message": "m"}, "'channel'"),
        ("chat", {"channel": "c", "user": 5, "message": "m"}, "'user'"),
        ("chat", {"channel": "c", "user": "u", "message": ""}, "'message'"),
        ("chat", {"channel": "c", "user": "u", "message": "m", "persona": "pirate"}, "'persona'"),
        ("chat", {"channel": "c", "user": "u", "message": "m", "provider": "nope"}, "'nope'"),
        ("chat", {"channel": "c", "user": "u", "message": "m", "stream": "yes"}, "'stream'"),
        ("complete", {"messages": []}, "'messages'"),
        ("complete", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            "complete",
            {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "'temperature'",
        ),
        (
            "complete",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "'max_tokens'",
        ),
        ("summarize", {"text": ""}, "'text'"),
        ("summarize", {"text": "t", "style": "poem"}, "'style'"),
        ("summarize", {"text": "t", "max_length": "long"}, "'max_length'"),
        ("memory.add", {"channel": "c"}, "'content'"),
        ("memory.add", {"channel": "c", "content": "x", "importance": 9}, "'importance'"),
        ("memory.recall", {"channel": "c", "query": "x", "limit": -1}, "'limit'"),
        ("memory.forget", {"channel": "c"}, "'memory_id'"),
        ("memory.forget", {"channel": "c", "memory_id": "zz"}, "Invalid memory ID"),
        ("persona.get", {}, "'channel'"),
        ("persona.set", {"channel": "c", "persona": 3}, "'persona'"),
    ],
)
async def test_bad_requests_get_an_error_naming_the_field_and_append_nothing(
    plugin: Plugin, client: NATS, endpoint: str, body: Any, field: str
) -> None:
    """Every endpoint answers bad input with success false naming the field; nothing is logged
    as an event and the endpoint keeps serving."""
    answer, found = await call_with_headers(client, endpoint, body)
    assert answer["success"] is False
    assert field in answer["error"]
    assert found[headers.SERVICE_ERROR] == answer["error"]
    assert found[headers.SERVICE_ERROR_CODE] == "400"
    assert await event_types(client) == []
    assert (await call(client, "status", {}))["provider"] == "ollama"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"user": 5}, "'user'"), ([1, 2], "JSON object"), (b"{not json", "Invalid JSON")],
)
async def test_bad_usage_requests_get_the_seed_shape_and_the_error_in_headers(
    plugin: Plugin, client: NATS, body: Any, field: str
) -> None:
    """UsageResponse has no error field: a bad request gets an all-zero UsageResponse (so
    `UsageResponse(**body)` still works) and the error in the micro error headers."""
    answer, found = await call_with_headers(client, "usage", body)
    assert answer == {
        "user": None,
        "requests_today": 0,
        "tokens_today": 0,
        "rate_limits_remaining": {},
    }
    assert field in found[headers.SERVICE_ERROR]
    assert found[headers.SERVICE_ERROR_CODE] == "400"


async def test_service_is_discoverable(plugin: Plugin, client: NATS) -> None:
    """$SRV.INFO lists the service, its version and every endpoint subject."""
    reply = await client.request("$SRV.INFO.rosey-llm", b"", timeout=5)
    info = orjson.loads(reply.data)
    assert info["name"] == "rosey-llm"
    subjects = sorted(e["subject"] for e in info["endpoints"])
    assert subjects == sorted(
        f"rosey.llm.{n}"
        for n in (
            "chat",
            "complete",
            "summarize",
            "memory.add",
            "memory.recall",
            "memory.forget",
            "persona.get",
            "persona.set",
            "status",
            "usage",
        )
    )
    assert all(e["queue_group"] == "llm-es" for e in info["endpoints"])
    stats = orjson.loads((await client.request("$SRV.STATS.rosey-llm", b"", timeout=5)).data)
    assert stats["name"] == "rosey-llm"


async def test_service_stats_carry_the_instance_admission_counters(
    start: PluginStarter, client: NATS
) -> None:
    """$SRV.STATS shows, on the chat endpoint, how many turns this instance admitted,
    refused and re-decided after losing a race."""
    plugin = await start(rate_limits=RateLimitsConfig(2, None, None, None))
    for n in range(3):
        await call(client, "chat", {"channel": "c", "user": "alice", "message": f"Hi {n}"})
    completion = {"messages": [{"role": "user", "content": "Say hi"}], "user": "bob"}
    assert (await call(client, "complete", completion))["success"] is True
    stats = orjson.loads((await client.request("$SRV.STATS.rosey-llm", b"", timeout=5)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    data = by_name["chat"]["data"]
    assert plugin.service is not None
    assert data["instance"] == plugin.service.instance_id
    assert (data["admitted"], data["rejected"]) == (3, 1)  # alice 2 + bob 1; alice's third
    assert data["admission_conflicts"] == 0
    assert data["conflict_retries_per_admitted"] == 0.0
    assert data["turns_in_flight"] == 0
    assert not by_name["usage"].get("data")


async def test_a_stream_that_dies_midway_fails_the_turn_and_stores_no_answer(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The model's server goes away after the first chunk: the caller gets a failure, the
    turn is recorded as failed, and the partial text never enters the channel's context."""
    fake_llm.reply = "one two three four five six"
    fake_llm.chunk_delay = 0.3
    inbox = client.new_inbox()
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await received.put(orjson.loads(msg.data))

    sub = await client.subscribe(inbox, cb=collect)
    payload = {"channel": "c", "user": "u", "message": "Stream please", "stream": True}
    await client.publish("rosey.llm.chat", orjson.dumps(payload), reply=inbox)
    async with asyncio.timeout(10):
        first = await received.get()
        assert "chunk" in first
        await fake_llm.stop()
        final = await received.get()
        while "success" not in final:
            final = await received.get()
    await sub.unsubscribe()
    assert final["success"] is False
    kinds = await event_types(client)
    assert "TurnFailed" in kinds
    assert "TurnCompleted" not in kinds
    assert plugin.views is not None
    context = plugin.views.get("messages.c.recent")
    assert context is None or context["messages"] == []


async def test_status_says_rate_limited_only_while_the_provider_throttles(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A fresh system is not rate limited; after the default provider answers 429 with
    Retry-After 30 it is, until a later answer succeeds."""
    await start(
        Config(
            providers=ProvidersConfig(
                ollama=OllamaConfig(
                    base_url=fake_llm.base_url, max_retries=0, default_model="llama3.2"
                )
            )
        )
    )
    assert (await call(client, "status", {}))["rate_limited"] is False
    fake_llm.fail_status, fake_llm.retry_after = 429, 30.0
    refused = await call(client, "chat", {"channel": "c", "user": "u", "message": "Hi"})
    assert refused["error"].startswith("Ollama API error: 429")
    assert (await call(client, "status", {}))["rate_limited"] is True
    fake_llm.fail_status = None
    assert (await call(client, "chat", {"channel": "c", "user": "u", "message": "Hi"}))["success"]
    assert (await call(client, "status", {}))["rate_limited"] is False
