"""What a failed turn owes: the tokens of a provider call that broke after the provider
had taken the prompt are booked (`TokensSpent`, then `TurnFailed`, in one append); a call
that failed before the provider answered books none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import (
    Config,
    OllamaConfig,
    OpenAIConfig,
    OpenRouterConfig,
    ProvidersConfig,
    Secret,
)
from llm_es.domain.events import (
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
)
from llm_es.domain.limits import estimate_tokens
from llm_es.domain.views import usage_key
from llm_es.service.chat import ChatService
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, make_config


def service_of(plugin: Plugin) -> ChatService:
    assert plugin.service is not None
    return plugin.service


def prompt_estimate(fake_llm: FakeLLMServer) -> int:
    """The token estimate of the prompt the provider received (its characters / 3)."""
    body = fake_llm.chat_requests[-1].body
    assert body is not None
    return estimate_tokens(sum(len(m["content"]) for m in body["messages"]))


async def turn_events(client: NATS) -> list[Event]:
    return [event for _, event in await log_events(client)]


def assert_turn_closed(plugin: Plugin, user: str, tokens: int) -> None:
    """The user's usage view counts `tokens` and holds no open turn (no reservation left)."""
    assert plugin.views is not None
    usage = plugin.views.get(usage_key(user))
    assert usage is not None
    assert (usage["tokens_today"], usage["open_turns"]) == (tokens, {})


async def test_a_stream_cut_after_content_books_estimated_tokens_then_the_failure(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The model's server goes away after the first piece: TokensSpent (estimated from the
    prompt and the text received) precedes TurnFailed for the turn, and the reservation is
    settled."""
    fake_llm.reply = "one two three four five six"
    fake_llm.chunk_delay = 0.3
    received: list[str] = []

    async def stop_after_the_first_piece(piece: str) -> None:
        received.append(piece)
        await fake_llm.stop()

    outcome = await service_of(plugin).chat(
        channel="lobby", user="alice", message="Count to six", on_chunk=stop_after_the_first_piece
    )
    assert not outcome.success
    assert outcome.message == "Ollama stream broke off before the answer was complete"
    assert received == ["one "]
    events = await turn_events(client)
    assert [e.TYPE for e in events] == ["TurnAdmitted", "TokensSpent", "TurnFailed"]
    admitted, spent, failed = events
    assert isinstance(admitted, TurnAdmitted)
    assert spent == TokensSpent(
        id=spent.id,
        at=spent.at,
        turn_id=admitted.turn_id,
        channel="lobby",
        user="alice",
        purpose="chat",
        provider="ollama",
        model="llama3.2",
        prompt_tokens=prompt_estimate(fake_llm),
        completion_tokens=estimate_tokens(len("one ")),
        estimated=True,
    )
    assert isinstance(failed, TurnFailed)
    assert (failed.turn_id, failed.error_type) == (admitted.turn_id, "provider_error")
    assert failed.at == spent.at
    assert_turn_closed(plugin, "alice", spent.prompt_tokens + spent.completion_tokens)


async def test_failures_before_the_provider_answered_book_no_tokens(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A refused request (streamed or not) and a timeout before any header: TurnFailed
    alone, nothing spent, no reservation left."""
    plugin = await start(timeout=0.5)
    fake_llm.fail_status = 400
    refused = await command(client, "hello")
    assert refused["error"].startswith("Ollama API error: 400 Bad Request")

    async def ignore(piece: str) -> None:
        raise AssertionError(f"no piece expected, got {piece!r}")

    streamed = await service_of(plugin).chat(
        channel="lobby", user="alice", message="hello", on_chunk=ignore
    )
    assert streamed.message.startswith("Ollama API error: 400 Bad Request")
    fake_llm.fail_status, fake_llm.delay = None, 2.0
    slow = await command(client, "hello")
    assert slow["error"] == "Ollama did not answer within 0.5s"
    assert [e.TYPE for e in await turn_events(client)] == ["TurnAdmitted", "TurnFailed"] * 3
    assert_turn_closed(plugin, "alice", 0)


async def test_usage_reported_before_a_mid_stream_error_is_booked_as_reported(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """OpenRouter reports usage, then an error event: the turn books those figures (and
    cost), not an estimate, before its TurnFailed."""
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "cost": 0.002}
    events: list[dict[str, Any]] = [
        {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Partial"}}]},
        {"model": "gpt-4o-mini", "choices": [], "usage": usage},
        {"error": {"code": 502, "message": "upstream model crashed"}},
    ]
    fake_llm.raw_answer = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    plugin = await start(
        Config(
            default_provider="openrouter",
            providers=ProvidersConfig(
                openrouter=OpenRouterConfig(
                    base_url=f"{fake_llm.base_url}/v1",
                    api_key=Secret("sk-or-test"),
                    default_model="gpt-4o-mini",
                )
            ),
        )
    )
    received: list[str] = []

    async def keep(piece: str) -> None:
        received.append(piece)

    outcome = await service_of(plugin).chat(
        channel="lobby", user="alice", message="hi", on_chunk=keep
    )
    assert outcome.message == "OpenRouter stream failed: upstream model crashed"
    assert received == ["Partial"]
    _, spent, failed = await turn_events(client)
    assert isinstance(spent, TokensSpent)
    assert (spent.provider, spent.model, spent.prompt_tokens, spent.completion_tokens) == (
        "openrouter",
        "gpt-4o-mini",
        12,
        3,
    )
    assert (spent.estimated, spent.cost) == (False, 0.002)
    assert isinstance(failed, TurnFailed)
    assert failed.turn_id == spent.turn_id
    assert_turn_closed(plugin, "alice", 15)


async def test_a_turn_deadline_mid_stream_books_what_had_arrived(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Pieces keep coming, but slower than the turn's deadline (0.5 s: one attempt of a
    0.5 s timeout): the timeout books the prompt and the text passed on so far."""
    plugin = await start(
        Config(
            providers=ProvidersConfig(
                ollama=OllamaConfig(
                    base_url=fake_llm.base_url,
                    timeout=0.5,
                    max_retries=0,
                    default_model="llama3.2",
                )
            )
        )
    )
    assert service_of(plugin).turn_deadline_seconds() == 0.5
    fake_llm.reply = " ".join(["word"] * 20)
    fake_llm.chunk_delay = 0.15
    received: list[str] = []

    async def keep(piece: str) -> None:
        received.append(piece)

    outcome = await service_of(plugin).chat(
        channel="lobby", user="alice", message="ramble", on_chunk=keep
    )
    assert outcome.message == "ollama did not answer within the turn's deadline"
    assert 0 < len(received) < 20
    _, spent, failed = await turn_events(client)
    assert isinstance(spent, TokensSpent)
    assert spent.estimated
    assert spent.prompt_tokens == prompt_estimate(fake_llm)
    assert spent.completion_tokens == estimate_tokens(len("".join(received)))
    assert isinstance(failed, TurnFailed)
    assert failed.error_type == "timeout"
    assert_turn_closed(plugin, "alice", spent.prompt_tokens + spent.completion_tokens)


async def test_a_provider_passed_over_after_taking_the_prompt_is_booked_too(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Ollama starts its stream, then says nothing past its timeout; the fallback answers.
    Both calls are booked: Ollama's estimated spend, then the fallback's real one, then
    the completion naming Ollama as passed over."""
    fallback = FakeLLMServer(reply="Answer from the fallback.", models=("gpt-4",))
    await fallback.start()
    try:
        config = make_config(fake_llm.base_url, timeout=0.5)
        openai = OpenAIConfig(
            api_key=Secret("sk-test"), base_url=f"{fallback.base_url}/v1", default_model="gpt-4"
        )
        plugin = await start(
            dataclasses.replace(
                config,
                providers=dataclasses.replace(config.providers, openai=openai),
                fallback_providers=("openai",),
            )
        )
        fake_llm.first_chunk_delay = 3.0
        received: list[str] = []

        async def keep(piece: str) -> None:
            received.append(piece)

        outcome = await service_of(plugin).chat(
            channel="lobby", user="alice", message="hello", on_chunk=keep
        )
        assert outcome.success
        assert "".join(received) == "Answer from the fallback."
        _, owed, spent, completed = await turn_events(client)
        assert isinstance(owed, TokensSpent)
        assert isinstance(spent, TokensSpent)
        assert isinstance(completed, TurnCompleted)
        assert (owed.provider, owed.estimated, owed.completion_tokens) == ("ollama", True, 0)
        assert owed.prompt_tokens == prompt_estimate(fake_llm)
        assert (spent.provider, spent.estimated) == ("openai", False)
        assert completed.fallback_from == ("ollama",)
        total = sum(e.prompt_tokens + e.completion_tokens for e in (owed, spent))
        assert outcome.data["tokens_used"] == total
        assert_turn_closed(plugin, "alice", total)
    finally:
        await fallback.stop()
