"""The seed's own consumers, against a real `llm-es serve`: every reply and every event is read
with the seed plugin's dataclasses (`Class(**json)`, which refuses any unknown field), with
the declared JSON types; what llm-es adds travels in headers.

The dataclasses below are declared from `DESIGN.md` "Seed schemas" (field names, order,
defaults), as another plugin of the bot has them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import signal
import types
import typing
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es import headers
from llm_es.embedded import EmbeddedNatsServer
from tests.support.cli import console_script, hermetic_env
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import REQUEST_TIMEOUT, command, wait_until

# ruff: noqa: UP045 -- the seed's classes spell optionals as Optional[...]; kept as declared.

pytestmark = pytest.mark.timeout(120)

# ---------------------------------------------------------------- the seed's classes


@dataclass
class ChatRequest:
    channel: str
    user: str
    message: str
    persona: Optional[str] = None


@dataclass
class CompletionRequest:
    messages: list[dict[str, str]]
    temperature: float = 0.7
    max_tokens: Optional[int] = None
    provider: Optional[str] = None


@dataclass
class SummarizeRequest:
    text: str
    max_length: int = 200
    style: str = "concise"


@dataclass
class MemoryAddRequest:
    channel: str
    content: str
    category: str = "fact"
    user_id: Optional[str] = None
    importance: int = 1


@dataclass
class MemoryRecallRequest:
    channel: str
    query: str
    user_id: Optional[str] = None
    limit: int = 5


@dataclass
class PersonaGetRequest:
    channel: str


@dataclass
class PersonaSetRequest:
    channel: str
    persona: str


@dataclass
class StatusRequest:
    pass


@dataclass
class UsageRequest:
    user: Optional[str] = None


@dataclass
class ChatResponse:
    success: bool
    content: Optional[str] = None
    error: Optional[str] = None
    tokens_used: int = 0
    provider: Optional[str] = None


@dataclass
class CompletionResponse:
    success: bool
    content: Optional[str] = None
    error: Optional[str] = None
    tokens_used: int = 0
    provider: Optional[str] = None


@dataclass
class SummaryResponse:
    success: bool
    summary: Optional[str] = None
    error: Optional[str] = None


@dataclass
class MemoryResponse:
    success: bool
    memories: Optional[list[str]] = None
    count: int = 0
    memory_id: Optional[str] = None
    error: Optional[str] = None


@dataclass
class PersonaResponse:
    success: bool
    persona: Optional[str] = None
    available: Optional[list[str]] = None
    error: Optional[str] = None


@dataclass
class StatusResponse:
    healthy: bool
    provider: str
    model: str
    requests_today: int
    tokens_today: int
    rate_limited: bool = False
    uptime_seconds: int = 0


@dataclass
class UsageResponse:
    user: Optional[str]
    requests_today: int
    tokens_today: int
    rate_limits_remaining: dict[str, int] = field(default_factory=dict)


@dataclass
class LLMResponseEvent:
    channel: str
    user: str
    prompt_length: int
    response_length: int
    tokens_used: int
    provider: str
    latency_ms: int
    persona: Optional[str] = None


@dataclass
class LLMErrorEvent:
    channel: str
    user: str
    error: str
    provider: str
    error_type: str = "provider_error"


@dataclass
class LLMMemoryEvent:
    channel: str
    action: str
    user_id: Optional[str]
    memory_count: int


@dataclass
class LLMSummarizedEvent:
    channel: str
    message_count: int
    summary_length: int


@dataclass
class UsageThresholdEvent:
    user: str
    channel: str
    threshold_type: str
    current: int
    limit: int
    percentage: float


EVENT_CLASSES: dict[str, type[Any]] = {
    "response": LLMResponseEvent,
    "error": LLMErrorEvent,
    "memory": LLMMemoryEvent,
    "summarized": LLMSummarizedEvent,
    "usage_threshold": UsageThresholdEvent,
}


def has_type(value: Any, declared: Any) -> bool:
    """Whether a decoded JSON value has the declared type (int is not bool, float is float)."""
    origin = typing.get_origin(declared)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, option) for option in typing.get_args(declared))
    if declared is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(declared)
        return isinstance(value, list) and all(has_type(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(declared)
        return isinstance(value, dict) and all(
            has_type(k, key) and has_type(v, item) for k, v in value.items()
        )
    if declared is int:
        return type(value) is int
    if declared is float:
        return type(value) is float
    return type(value) is declared


def read_as(cls: type[Any], body: dict[str, Any]) -> Any:
    """`cls(**body)` as a seed consumer does it, then every field checked against its type."""
    instance = cls(**body)
    hints = typing.get_type_hints(cls)
    wrong = {
        f.name: getattr(instance, f.name)
        for f in dataclasses.fields(cls)
        if not has_type(getattr(instance, f.name), hints[f.name])
    }
    assert not wrong, f"{cls.__name__} fields with the wrong type: {wrong}"
    assert list(body) == [f.name for f in dataclasses.fields(cls)], "every field, in order"
    return instance


# ---------------------------------------------------------------- a real `llm-es serve`


@pytest.fixture
async def serve(
    tmp_path: pathlib.Path, nats_server: EmbeddedNatsServer, fake_llm: FakeLLMServer
) -> AsyncIterator[str]:
    """`llm-es serve --nats-url URL --config PATH` with small limits and summaries."""
    config = tmp_path / "config.json"
    config.write_bytes(
        orjson.dumps(
            {
                "providers": {"ollama": {"base_url": fake_llm.base_url}},
                "rate_limits": {
                    "requests_per_minute": 5,
                    "requests_per_hour": None,
                    "requests_per_day": None,
                    "tokens_per_day": None,
                },
                "service": {"max_context_messages": 2, "summarize_after_messages": 4},
                "http": {"listen": None},
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        console_script("llm-es"),
        "serve",
        "--nats-url",
        nats_server.url,
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=hermetic_env(),
    )
    try:
        client = await nats.connect(nats_server.url, max_reconnect_attempts=2)
        try:

            async def ready() -> bool:
                try:
                    return bool((await command(client, "help", user="probe"))["success"])
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    return False

            await wait_until(ready, within=30, interval=0.2)
        finally:
            await client.close()
        yield nats_server.url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()


async def request(
    client: NATS, subject: str, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    reply = await client.request(subject, orjson.dumps(body), timeout=REQUEST_TIMEOUT)
    answer: dict[str, Any] = orjson.loads(reply.data)
    return answer, dict(reply.headers or {})


async def test_every_request_as_the_seed_sends_it_gets_a_reply_its_class_reads(
    serve: str, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Each request sent as `asdict(...)` (optional fields null) is answered with a body
    `ResponseClass(**body)` accepts, with the declared types; turns name themselves in
    the `Llm-Turn-Id` and `Llm-Model` headers."""
    chat, found = await request(
        client, "rosey.llm.chat", asdict(ChatRequest(channel="c", user="u", message="Hi"))
    )
    answered = read_as(ChatResponse, chat)
    assert answered.success
    assert answered.content == "Hello from the fake model."
    assert answered.tokens_used > 0
    assert len(found[headers.LLM_TURN_ID]) == 32
    assert found[headers.LLM_MODEL] == "llama3.2"
    # Fields the seed's class lacks are still accepted in a request.
    extra = {**asdict(ChatRequest("c", "u", "Again", "concise")), "provider": None, "stream": None}
    assert read_as(ChatResponse, (await request(client, "rosey.llm.chat", extra))[0]).success

    completion = CompletionRequest(messages=[{"role": "user", "content": "Say hi"}])
    completed, found = await request(client, "rosey.llm.complete", asdict(completion))
    assert read_as(CompletionResponse, completed).success
    assert headers.LLM_TURN_ID in found

    summary = asdict(SummarizeRequest(text="A long story about a cat. " * 20))
    assert read_as(SummaryResponse, (await request(client, "rosey.llm.summarize", summary))[0])

    added = read_as(
        MemoryResponse,
        (
            await request(
                client,
                "rosey.llm.memory.add",
                asdict(MemoryAddRequest(channel="c", content="Alice prefers Python")),
            )
        )[0],
    )
    assert (added.success, added.count) == (True, 1)
    assert added.memory_id
    recalled = read_as(
        MemoryResponse,
        (
            await request(
                client,
                "rosey.llm.memory.recall",
                asdict(MemoryRecallRequest(channel="c", query="python")),
            )
        )[0],
    )
    assert recalled.memories == [f"Alice prefers Python (ID: {added.memory_id})"]
    assert recalled.count == 1

    persona = read_as(
        PersonaResponse,
        (await request(client, "rosey.llm.persona.get", asdict(PersonaGetRequest("c"))))[0],
    )
    assert persona.persona == "default"
    switched = read_as(
        PersonaResponse,
        (
            await request(
                client, "rosey.llm.persona.set", asdict(PersonaSetRequest("c", "technical"))
            )
        )[0],
    )
    assert (switched.success, switched.persona) == (True, "technical")

    status = read_as(
        StatusResponse, (await request(client, "rosey.llm.status", asdict(StatusRequest())))[0]
    )
    assert (status.healthy, status.rate_limited) == (True, False)
    assert status.requests_today >= 4

    everyone = read_as(
        UsageResponse, (await request(client, "rosey.llm.usage", asdict(UsageRequest())))[0]
    )
    assert (everyone.user, everyone.requests_today) == (None, status.requests_today)
    one = read_as(
        UsageResponse, (await request(client, "rosey.llm.usage", asdict(UsageRequest("u"))))[0]
    )
    assert (one.user, one.rate_limits_remaining) == ("u", {"requests_minute": 3})


async def test_failures_and_bad_input_are_read_by_the_same_classes(
    serve: str, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A provider failure, a refused request and a malformed one still answer bodies the
    seed's classes read, with `success` false and the reason in `error`."""
    fake_llm.fail_status = 400
    failed = read_as(
        ChatResponse,
        (await request(client, "rosey.llm.chat", asdict(ChatRequest("c", "u", "Hi"))))[0],
    )
    assert not failed.success
    assert failed.error.startswith("Ollama API error: 400")
    fake_llm.fail_status = None
    bad = read_as(
        ChatResponse,
        (await request(client, "rosey.llm.chat", {"channel": "c", "user": 5, "message": "m"}))[0],
    )
    assert not bad.success
    assert "'user'" in bad.error
    missing = read_as(
        MemoryResponse, (await request(client, "rosey.llm.memory.recall", {"channel": "c"}))[0]
    )
    assert not missing.success
    assert "'query'" in missing.error
    usage, found = await request(client, "rosey.llm.usage", {"user": ["not", "a", "name"]})
    read_as(UsageResponse, usage)
    assert "'user'" in found[headers.SERVICE_ERROR]


WARM_UP = "warm-up"


class Events:
    """`rosey.event.llm.>` as a seed subscriber reads it: each body with its class
    (kept unless it comes from the warm-up turns)."""

    def __init__(self) -> None:
        self.read: list[tuple[str, Any, dict[str, str]]] = []

    async def take(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[1]
        event = read_as(EVENT_CLASSES[kind], orjson.loads(msg.data))
        if not event.channel.startswith(WARM_UP):
            self.read.append((kind, event, dict(msg.headers or {})))

    def of(self, kind: str) -> list[Any]:
        return [event for name, event, _ in self.read if name == kind]


async def test_every_event_is_read_by_its_seed_class_with_the_log_in_headers(
    serve: str, client: NATS
) -> None:
    """A chat, a refusal, remember/recall/forget, a summary and a usage threshold each
    publish events their seed class reads; `Nats-Msg-Id`, `Llm-Seq` and `Llm-Timestamp`
    name the log event, `Llm-Turn-Id` the turn."""
    events = Events()
    sub = await client.subscribe("rosey.event.llm.>", cb=events.take)
    await client.flush()
    # The publisher of a fresh serve starts at the log's end once it holds its lease.
    published: list[Msg] = []

    async def seen(msg: Msg) -> None:
        published.append(msg)

    warm = await client.subscribe("rosey.event.llm.response", cb=seen)
    for attempt in range(50):
        await command(client, "warm up", channel=f"{WARM_UP}-{attempt}", user=f"w{attempt}")
        if published:
            break
        await asyncio.sleep(0.1)
    assert published, "the event publisher never started"
    await warm.unsubscribe()

    for n in range(3):  # chats in one channel: a summary follows
        assert (await command(client, f"I like tea {n}", channel="lobby", user="ann"))["success"]
    for n in range(6):  # the 4th of 5 a minute crosses 80%, the 6th is refused
        await command(client, f"busy {n}", channel="busy", user="bob")
    remembered = await command(client, "remember The sky is blue", channel="lobby", user="ann")
    memory_id = remembered["result"]["memory_id"]
    await command(client, "recall sky", channel="lobby", user="cy")
    await command(client, f"forget {memory_id}", channel="lobby", user="ann")

    await wait_until(
        lambda: (
            len(events.of("memory")) == 3
            and {s.channel for s in events.of("summarized")} == {"lobby", "busy"}
        )
    )
    await wait_until(lambda: events.of("usage_threshold") and events.of("error"))
    responses = events.of("response")
    assert len(responses) == 3 + 5
    assert all(r.provider == "ollama" and r.tokens_used > 0 for r in responses)
    (refused,) = events.of("error")
    assert (refused.user, refused.error_type) == ("bob", "rate_limit")
    assert refused.error.startswith("Rate limit: 5 requests/minute")
    (threshold,) = events.of("usage_threshold")
    assert (threshold.threshold_type, threshold.current, threshold.limit) == ("minute", 4, 5)
    assert threshold.percentage == 0.8
    assert [(m.action, m.memory_count) for m in events.of("memory")] == [
        ("add", 1),
        ("recall", 1),
        ("forget", 1),
    ]
    summaries = events.of("summarized")
    assert {s.channel for s in summaries} == {"lobby", "busy"}
    assert all(s.message_count > 0 and s.summary_length > 0 for s in summaries)

    seqs = []
    for kind, _, found in events.read:
        assert found[headers.LLM_TIMESTAMP].endswith("Z")
        seqs.append(int(found[headers.LLM_SEQ]))
        assert found[headers.MSG_ID]
        turned = kind in ("response", "error", "usage_threshold")
        assert (headers.LLM_TURN_ID in found) == turned, kind
    assert seqs == sorted(seqs)
    assert len({found[headers.MSG_ID] for _, _, found in events.read}) == len(events.read)
    await sub.unsubscribe()
