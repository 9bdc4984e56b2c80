"""Provider selection end to end: OpenAI as the default, fallback when a provider is down."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.config import Config, OpenAIConfig, Secret
from llm_es.domain.events import TokensSpent, TurnCompleted
from llm_es.store.codec import encode_event
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, make_config

API_KEY = "sk-test-do-not-leak-0123456789"


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeLLMServer]:
    server = FakeLLMServer(reply="Answer from the OpenAI-compatible server.", models=("gpt-4",))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def with_openai(config: Config, base_url: str, **changes: object) -> Config:
    openai = OpenAIConfig(api_key=Secret(API_KEY), base_url=base_url, default_model="gpt-4")
    providers = dataclasses.replace(config.providers, openai=openai)
    return dataclasses.replace(config, providers=providers, **changes)  # type: ignore[arg-type]


async def test_openai_as_default_provider_answers_with_real_usage(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, openai_server: FakeLLMServer
) -> None:
    """default_provider openai: the turn goes to /v1/chat/completions with the bearer key,
    and the recorded usage is the server's."""
    config = with_openai(
        make_config(fake_llm.base_url), f"{openai_server.base_url}/v1", default_provider="openai"
    )
    await start(config)
    answer = await command(client, "Hello")
    assert answer["result"]["message"] == "Answer from the OpenAI-compatible server."
    assert answer["result"]["provider"] == "openai"
    request = openai_server.chat_requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    events = [e for _, e in await log_events(client)]
    spent = next(e for e in events if isinstance(e, TokensSpent))
    assert (spent.provider, spent.model, spent.estimated) == ("openai", "gpt-4", False)
    assert all(API_KEY.encode() not in encode_event(e) for e in events)
    assert API_KEY not in orjson.dumps(answer).decode()


async def test_fallback_answers_when_the_default_is_down_and_records_it(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, openai_server: FakeLLMServer
) -> None:
    """Ollama unreachable: the fallback answers and the turn records who was passed over."""
    down = fake_llm.base_url
    await fake_llm.stop()
    config = with_openai(
        make_config(down, timeout=2.0),
        f"{openai_server.base_url}/v1",
        fallback_providers=("openai",),
    )
    await start(config)
    answer = await command(client, "Anyone home?")
    assert answer["success"] is True
    assert answer["result"]["provider"] == "openai"
    completed = next(e for _, e in await log_events(client) if isinstance(e, TurnCompleted))
    assert completed.provider == "openai"
    assert completed.fallback_from == ("ollama",)


async def test_no_fallback_for_errors_another_provider_cannot_fix(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer, openai_server: FakeLLMServer
) -> None:
    """A 400 from the default is the request's fault: it is reported, not retried elsewhere."""
    fake_llm.fail_status = 400
    config = with_openai(
        make_config(fake_llm.base_url),
        f"{openai_server.base_url}/v1",
        fallback_providers=("openai",),
    )
    await start(config)
    answer = await command(client, "Hello")
    assert answer["success"] is False
    assert answer["error"].startswith("Ollama API error: 400")
    assert openai_server.chat_requests == []
