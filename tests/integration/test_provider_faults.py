"""A misbehaving provider, seen through NATS: each turn ends failed with a clear error,
its reservation is released, and the plugin keeps answering meanwhile.

Faults: a model slower than its timeout, a body that is no answer, a storm of 429s
and of 500s that outlasts the retries, and a connection the server closes mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.domain.views import usage_key
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import DEFAULT_REPLY, FakeLLMServer
from tests.support.harness import command, log_events

PROVIDER_TIMEOUT = 1.0
"""The provider's timeout in these tests: a slow model fails within seconds."""
ANSWER_WITHIN = 1.0
"""Seconds a command that needs no provider may take while a provider call hangs."""
LIMITS = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)


def slow(llm: FakeLLMServer) -> None:
    llm.delay = PROVIDER_TIMEOUT * 3


def garbage(llm: FakeLLMServer) -> None:
    llm.raw_answer = b"\x00\x01 this is not JSON }{"


def rate_limit_storm(llm: FakeLLMServer) -> None:
    llm.fail_status, llm.retry_after = 429, 0.05


def server_error_storm(llm: FakeLLMServer) -> None:
    llm.fail_status = 500


def heal(llm: FakeLLMServer) -> None:
    llm.delay, llm.raw_answer, llm.fail_status, llm.retry_after = 0.0, None, None, None


# fault, the words the user's error must contain
FAULTS: list[tuple[Callable[[FakeLLMServer], None], str]] = [
    (slow, "Ollama did not answer within 1s"),
    (garbage, "Ollama returned invalid JSON"),
    (rate_limit_storm, "Ollama API error: 429 Too Many Requests"),
    (server_error_storm, "Ollama API error: 500 Internal Server Error"),
]


async def turn_outcomes(client: NATS) -> tuple[int, int, int]:
    """How many turns the log admitted, completed and failed."""
    events = [event for _, event in await log_events(client)]
    return (
        sum(isinstance(e, TurnAdmitted) for e in events),
        sum(isinstance(e, TurnCompleted) for e in events),
        sum(isinstance(e, TurnFailed) for e in events),
    )


def open_turns(plugin: Plugin, user: str) -> dict[str, object]:
    assert plugin.views is not None
    usage = plugin.views.get(usage_key(user))
    return dict(usage["open_turns"]) if usage else {}


@pytest.mark.parametrize(("fault", "expected"), FAULTS, ids=[f.__name__ for f, _ in FAULTS])
async def test_a_provider_fault_fails_the_turn_clearly_and_releases_its_reservation(
    start: PluginStarter,
    client: NATS,
    fake_llm: FakeLLMServer,
    fault: Callable[[FakeLLMServer], None],
    expected: str,
) -> None:
    """The turn's reply is a clear error naming the fault, the log closes the turn as
    failed, the user holds no reservation after it, and once the provider heals the
    same user is answered again."""
    plugin = await start(rate_limits=LIMITS, timeout=PROVIDER_TIMEOUT)
    fault(fake_llm)
    failed = await command(client, "hello", user="bob")
    assert failed["success"] is False
    assert expected.lower() in failed["error"].lower(), failed["error"]
    assert "Traceback" not in failed["error"]
    assert await turn_outcomes(client) == (1, 0, 1)
    assert open_turns(plugin, "bob") == {}

    heal(fake_llm)
    answered = await command(client, "hello again", user="bob")
    assert answered["success"] is True, answered
    assert answered["result"]["message"] == DEFAULT_REPLY
    assert await turn_outcomes(client) == (2, 1, 1)


async def test_a_hung_provider_call_never_holds_up_other_channels_commands(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """While one channel's turns wait on a model that does not answer, other channels'
    help, remember, recall and persona commands are answered at once."""
    await start(rate_limits=LIMITS, timeout=PROVIDER_TIMEOUT * 5)
    fake_llm.hold = asyncio.Event()
    fake_llm.chat_started.clear()
    hung = [
        asyncio.create_task(command(client, f"question {n}", channel="busy", user=f"u{n}"))
        for n in range(8)
    ]
    try:
        await asyncio.wait_for(fake_llm.chat_started.wait(), timeout=5)
        for args, subject in [
            ("help", "rosey.command.chat"),
            ("the moon is far", "rosey.command.chat.remember"),
            ("moon", "rosey.command.chat.recall"),
            ("persona concise", "rosey.command.chat"),
        ]:
            started = time.perf_counter()
            answer = await command(client, args, channel="quiet", subject=subject)
            assert answer["success"] is True, answer
            assert time.perf_counter() - started < ANSWER_WITHIN, (args, answer)
    finally:
        fake_llm.hold.set()
        replies = await asyncio.gather(*hung)
    assert all(reply["success"] for reply in replies), replies


async def test_a_connection_closed_mid_stream_ends_the_streamed_turn_failed(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A streamed `rosey.llm.chat` whose provider connection is closed after the first
    piece ends with a final ChatResponse that is a failure, and the turn is failed in
    the log with its reservation released."""
    plugin = await start(rate_limits=LIMITS, timeout=PROVIDER_TIMEOUT * 5)
    fake_llm.chunk_delay = 0.3
    inbox = client.new_inbox()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await chunks.put(msg.data)  # type: ignore[attr-defined]

    subscription = await client.subscribe(inbox, cb=collect)
    body = {"channel": "lobby", "user": "carol", "message": "tell me a story", "stream": True}
    await client.publish("rosey.llm.chat", orjson.dumps(body), reply=inbox)
    first = await asyncio.wait_for(chunks.get(), timeout=5)
    assert first
    await fake_llm.stop()
    final: dict[str, object] | None = None
    for _ in range(100):
        data = await asyncio.wait_for(chunks.get(), timeout=10)
        decoded = orjson.loads(data)
        if "chunk" not in decoded:
            final = decoded
            break
    await subscription.unsubscribe()
    assert final is not None
    assert final["success"] is False
    assert isinstance(final["error"], str)
    assert "stream" in final["error"].lower(), final
    assert await turn_outcomes(client) == (1, 0, 1)
    assert open_turns(plugin, "carol") == {}
