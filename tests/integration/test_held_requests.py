"""Provider requests opened during admission, their last byte held until released.

Driven against the real loopback LLM server: a held request is not a request
the server can answer until it is released; a withdrawn one never reaches it;
nothing about a held call (retry, error) happens before its release; and a
turn whose prompt changed while it was admitted asks with the new prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from llm_es.app import Plugin
from llm_es.config import OllamaConfig, OpenAIConfig, Secret
from llm_es.errors import ProviderUnavailable
from llm_es.held_call import HeldCall
from llm_es.limits import TurnRequest
from llm_es.providers import (
    ChatMessage,
    CompletionResult,
    HTTPProvider,
    OllamaProvider,
    OpenAIProvider,
    RetryPolicy,
)
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import wait_until

REPLY = "The quick brown fox jumps."
HELLO: list[ChatMessage] = [{"role": "user", "content": "hello there"}]
FAST_RETRIES = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02)
HELD_FOR_SECONDS = 0.2
"""How long a test keeps a request held before looking at what the server received."""

KINDS = pytest.mark.parametrize("kind", ["ollama", "openai"])
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(reply=REPLY, models=("llama3.2", "gpt-4o-mini")) as server:
        yield server


def make_provider(kind: str, base_url: str) -> HTTPProvider:
    if kind == "ollama":
        return OllamaProvider(
            OllamaConfig(base_url=base_url, default_model="llama3.2"), retry_policy=FAST_RETRIES
        )
    return OpenAIProvider(
        OpenAIConfig(
            base_url=f"{base_url}/v1", api_key=Secret("sk-test"), default_model="gpt-4o-mini"
        ),
        retry_policy=FAST_RETRIES,
    )


@contextlib.asynccontextmanager
async def provider_for(kind: str, base_url: str) -> AsyncIterator[HTTPProvider]:
    provider = make_provider(kind, base_url)
    try:
        yield provider
    finally:
        await provider.aclose()


async def answer_of(call: Awaitable[Any]) -> str:
    """The text of a finished call: a CompletionResult's content."""
    result = await call
    assert isinstance(result, CompletionResult)
    return result.content


async def held_answer(
    provider: HTTPProvider, release: asyncio.Future[None], *, streamed: bool
) -> str:
    """The whole answer of a call held on `release` (streamed: the pieces joined)."""
    if not streamed:
        return await answer_of(provider.chat(HELLO, max_tokens=32, release=release))
    pieces: list[str] = []
    async with contextlib.aclosing(provider.stream(HELLO, max_tokens=32, release=release)) as items:
        async for item in items:
            if isinstance(item, str):
                pieces.append(item)
    return "".join(pieces)


@KINDS
@STREAMED
async def test_a_held_request_reaches_the_server_only_when_released(
    llm: FakeLLMServer, kind: str, streamed: bool
) -> None:
    """While held, the server has a connection but no complete request to answer;
    once released it gets exactly one, and the caller the whole answer."""
    async with provider_for(kind, llm.base_url) as provider:
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = asyncio.create_task(held_answer(provider, release, streamed=streamed))
        await wait_until(lambda: llm.open_connections == 1)
        await asyncio.sleep(HELD_FOR_SECONDS)
        assert llm.chat_requests == []
        assert not call.done()
        release.set_result(None)
        async with asyncio.timeout(10):
            assert await call == REPLY
        assert len(llm.chat_requests) == 1
        assert (llm.chat_requests[0].body or {}).get("messages") == HELLO


@KINDS
@STREAMED
async def test_a_withdrawn_request_never_reaches_the_server(
    llm: FakeLLMServer, kind: str, streamed: bool
) -> None:
    """Cancelling a held call closes its connection with the request incomplete: the
    server never answers it, and the provider's next call works as usual."""
    async with provider_for(kind, llm.base_url) as provider:
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = asyncio.create_task(held_answer(provider, release, streamed=streamed))
        await wait_until(lambda: llm.open_connections == 1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await wait_until(lambda: llm.open_connections == 0)
        assert llm.chat_requests == []
        assert llm.handler_errors == []
        async with asyncio.timeout(10):
            assert await answer_of(provider.chat(HELLO)) == REPLY
        assert len(llm.chat_requests) == 1


@KINDS
async def test_a_held_call_that_fails_waits_for_its_release_before_raising(
    llm: FakeLLMServer, kind: str
) -> None:
    """A provider that cannot be reached is neither retried nor reported before the
    release: until then the turn may still be refused and must leave no trace."""
    url = llm.base_url
    await llm.stop()
    async with provider_for(kind, url) as provider:
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = asyncio.create_task(provider.chat(HELLO, release=release))
        await asyncio.sleep(HELD_FOR_SECONDS)
        assert not call.done()
        release.set_result(None)
        with pytest.raises(ProviderUnavailable):
            async with asyncio.timeout(10):
                await call


async def test_held_call_withdraws_when_the_prompt_changed(llm: FakeLLMServer) -> None:
    """`matches` holds only for the same prompt and completion cap; a withdrawn call's
    server never sees the request."""
    async with provider_for("ollama", llm.base_url) as provider:
        held = HeldCall(provider, HELLO, max_tokens=32, temperature=None, streamed=False)
        assert held.matches(list(HELLO), 32)
        assert not held.matches(list(HELLO), 16)
        assert not held.matches([{"role": "user", "content": "something else"}], 32)
        await wait_until(lambda: llm.open_connections == 1)
        await held.withdraw()
        await held.withdraw()  # idempotent
        await wait_until(lambda: llm.open_connections == 0)
        assert llm.chat_requests == []


@STREAMED
async def test_a_turn_whose_prompt_changed_during_admission_asks_with_the_new_prompt(
    start: PluginStarter, fake_llm: FakeLLMServer, streamed: bool
) -> None:
    """The request opened with the prompt seen before admission is withdrawn when the
    views moved meanwhile: the provider gets exactly one request, the new prompt's."""
    plugin: Plugin = await start()
    service = plugin.service
    assert service is not None
    before: list[ChatMessage] = [{"role": "user", "content": "as seen before admission"}]
    after: list[ChatMessage] = [{"role": "user", "content": "as seen once admitted"}]
    chunks: list[str] = []

    async def on_chunk(piece: str) -> None:
        chunks.append(piece)

    request = TurnRequest(
        turn_id=uuid.uuid4().hex,
        channel="lobby",
        user="alice",
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message="hello",
        instance=service.instance_id,
    )
    outcome = await service._turn(
        request,
        service.provider_chain(),
        before,
        max_tokens=64,
        on_chunk=on_chunk if streamed else None,
        rebuild_prompt=lambda: after,
    )
    assert outcome.success, outcome
    assert [(r.body or {}).get("messages") for r in fake_llm.chat_requests] == [after]
    assert "".join(chunks) == (fake_llm.reply if streamed else "")
    await wait_until(lambda: fake_llm.open_connections <= 1)
    assert fake_llm.handler_errors == []


async def test_chat_works_with_early_opening_turned_off(
    start: PluginStarter, fake_llm: FakeLLMServer
) -> None:
    """`service.open_provider_early = false` asks the provider only after admission."""
    plugin: Plugin = await start(open_provider_early=False)
    assert plugin.service is not None
    outcome = await plugin.service.chat(channel="lobby", user="alice", message="hi")
    assert outcome.success, outcome
    assert len(fake_llm.chat_requests) == 1
