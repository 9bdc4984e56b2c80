"""The providers driven directly against a real loopback LLM server (no NATS).

Each wire format (Ollama JSON + NDJSON, OpenAI JSON + SSE, OpenRouter), the
headers sent, retries with Retry-After, errors mapped to the documented tree
with clear texts (error objects inside a 200 included), streams that die
mid-way and what they had used, stream lines that end only at LF, the
throttled state after a 429, and the API key kept out of every message and log
record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from llm_es.config import (
    Config,
    OllamaConfig,
    OpenAIConfig,
    OpenRouterConfig,
    ProvidersConfig,
    Secret,
)
from llm_es.errors import (
    ConfigError,
    PartialUsage,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamBroken,
    ProviderTimeout,
    ProviderUnavailable,
)
from llm_es.providers import (
    CompletionResult,
    HTTPProvider,
    LLMProvider,
    OllamaProvider,
    OpenAIProvider,
    OpenRouterProvider,
    RetryPolicy,
    build_provider,
)
from llm_es.providers.framing import MAX_LINE_BYTES
from tests.support.fake_llm import FakeLLMServer, Messages

API_KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
REPLY = "The quick brown fox jumps."
WORDS = ["The ", "quick ", "brown ", "fox ", "jumps."]
FAST_RETRIES = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)
USER_HELLO: list[Any] = [{"role": "user", "content": "hello there"}]

ProviderFactory = Callable[..., HTTPProvider]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    server = FakeLLMServer(reply=REPLY, models=("llama3.2", "gpt-4o-mini"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make(llm: FakeLLMServer) -> AsyncIterator[Callable[..., HTTPProvider]]:
    """make(kind, **config fields) -> a provider pointed at `llm`, closed at teardown."""
    made: list[HTTPProvider] = []

    def _make(
        kind: str, *, retry_policy: RetryPolicy | None = FAST_RETRIES, **fields: Any
    ) -> HTTPProvider:
        provider: HTTPProvider
        if kind == "ollama":
            fields = {"base_url": llm.base_url, "default_model": "llama3.2", **fields}
            provider = OllamaProvider(OllamaConfig(**fields), retry_policy=retry_policy)
        elif kind == "openai":
            fields = {
                "base_url": f"{llm.base_url}/v1",
                "api_key": Secret(API_KEY),
                "default_model": "gpt-4o-mini",
                **fields,
            }
            provider = OpenAIProvider(OpenAIConfig(**fields), retry_policy=retry_policy)
        else:
            fields = {
                "base_url": f"{llm.base_url}/v1",
                "api_key": Secret(API_KEY),
                "default_model": "gpt-4o-mini",
                **fields,
            }
            provider = OpenRouterProvider(OpenRouterConfig(**fields), retry_policy=retry_policy)
        made.append(provider)
        return provider

    try:
        yield _make
    finally:
        for provider in made:
            await provider.aclose()


async def collect(
    stream: AsyncGenerator[str | CompletionResult, None],
) -> list[str | CompletionResult]:
    """Every item of a provider stream, closing it however it ends."""
    async with contextlib.aclosing(stream) as items:
        return [item async for item in items]


def pieces_and_final(items: list[str | CompletionResult]) -> tuple[list[str], CompletionResult]:
    """Split a finished stream into its text pieces and its one final result (asserted last)."""
    *pieces, final = items
    assert isinstance(final, CompletionResult)
    assert all(isinstance(piece, str) for piece in pieces)
    return [str(piece) for piece in pieces], final


ALL_KINDS = pytest.mark.parametrize("kind", ["ollama", "openai", "openrouter"])
OPENAI_KINDS = pytest.mark.parametrize("kind", ["openai", "openrouter"])
LABELS = {"ollama": "Ollama", "openai": "OpenAI", "openrouter": "OpenRouter"}
MODELS = {"ollama": "llama3.2", "openai": "gpt-4o-mini", "openrouter": "gpt-4o-mini"}


def sse(*events: dict[str, Any]) -> bytes:
    """Server-sent events, one `data:` per event, as OpenAI streams them."""
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)


def content_chunk(text: str) -> dict[str, Any]:
    """An OpenAI stream chunk carrying one piece of the answer."""
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return {"model": "gpt-4o-mini", "choices": [choice]}


# --- Ollama wire format --------------------------------------------------------------------------


async def test_ollama_chat_sends_options_and_reports_real_usage(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """/api/chat without streaming: temperature and num_predict in options, usage from
    prompt_eval_count/eval_count."""
    llm.usage = (17, 5)
    provider = make("ollama", temperature=0.3)
    result = await provider.chat(USER_HELLO, max_tokens=64)
    assert result == CompletionResult(
        content=REPLY, model="llama3.2", prompt_tokens=17, completion_tokens=5, finish_reason="stop"
    )
    (sent,) = llm.chat_requests
    assert sent.path == "/api/chat"
    assert sent.body is not None
    assert sent.body["stream"] is False
    assert sent.body["options"] == {"temperature": 0.3, "num_predict": 64}
    assert sent.body["messages"] == USER_HELLO


async def test_ollama_complete_uses_generate_with_the_system_prompt(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """complete() posts the prompt and system to /api/generate and reads `response`."""
    provider = make("ollama")
    result = await provider.complete("say hi", system="be brief", temperature=0.0)
    assert result.content == REPLY
    assert (result.prompt_tokens, result.completion_tokens) == (4, 5)
    (sent,) = llm.chat_requests
    assert sent.path == "/api/generate"
    assert sent.body is not None
    assert (sent.body["prompt"], sent.body["system"]) == ("say hi", "be brief")
    assert sent.body["options"] == {"temperature": 0.0}


async def test_ollama_streams_chat_and_generate_as_ndjson(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """Both NDJSON streams yield the pieces in order, then one result with the final usage."""
    llm.usage = (9, 5)
    provider = make("ollama")
    for stream in (
        provider.stream(USER_HELLO, max_tokens=32),
        provider.stream_complete("say hi", system="be brief"),
    ):
        pieces, final = pieces_and_final(await collect(stream))
        assert pieces == WORDS
        assert final.content == REPLY
        assert (final.prompt_tokens, final.completion_tokens) == (9, 5)
        assert final.finish_reason == "stop"
    assert [r.path for r in llm.chat_requests] == ["/api/chat", "/api/generate"]
    assert all(r.body is not None and r.body["stream"] is True for r in llm.chat_requests)


async def test_ollama_lists_models_and_reports_availability(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """/api/tags gives the model list and availability; a stopped server is unavailable."""
    provider = make("ollama")
    assert await provider.is_available()
    assert await provider.list_models() == ["llama3.2:latest", "gpt-4o-mini:latest"]
    await llm.stop()
    assert not await provider.is_available()


async def test_ollama_unknown_model_is_a_bad_request_with_the_servers_text(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A 404 for a model never pulled: ProviderBadRequest naming it, and no retry."""
    provider = make("ollama")
    with pytest.raises(ProviderBadRequest) as caught:
        await provider.chat(USER_HELLO, model="mistral")
    assert str(caught.value) == (
        "Ollama API error: 404 Not Found: model 'mistral' not found, try pulling it first"
    )
    assert caught.value.status == 404
    assert llm.chat_count == 1


# --- OpenAI and OpenRouter wire format -----------------------------------------------------------


async def test_openai_chat_sends_auth_and_organization_and_reads_usage(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """/chat/completions JSON: Bearer key, OpenAI-Organization, temperature, max_tokens, usage."""
    llm.usage = (12, 5)
    provider = make("openai", organization="org-rosey", temperature=1.1)
    result = await provider.chat(USER_HELLO, max_tokens=100)
    assert result == CompletionResult(
        content=REPLY,
        model="gpt-4o-mini",
        prompt_tokens=12,
        completion_tokens=5,
        finish_reason="stop",
    )
    (sent,) = llm.chat_requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["openai-organization"] == "org-rosey"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": USER_HELLO,
        "temperature": 1.1,
        "max_tokens": 100,
    }


async def test_openai_without_key_or_organization_sends_neither_header(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A keyless OpenAI-compatible server (vLLM, LM Studio) gets no Authorization header."""
    provider = make("openai", api_key=Secret(""))
    await provider.chat(USER_HELLO)
    (sent,) = llm.chat_requests
    assert "authorization" not in sent.headers
    assert "openai-organization" not in sent.headers


async def test_openai_complete_is_a_chat_of_system_and_user_messages(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """complete() maps to /chat/completions with the system prompt first."""
    provider = make("openai")
    result = await provider.complete("summarize this", system="you summarize")
    assert result.content == REPLY
    (sent,) = llm.chat_requests
    assert sent.body is not None
    assert sent.body["messages"] == [
        {"role": "system", "content": "you summarize"},
        {"role": "user", "content": "summarize this"},
    ]


@OPENAI_KINDS
async def test_openai_sse_stream_yields_pieces_then_the_real_usage(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """SSE with include_usage: pieces in order (null usage on earlier chunks ignored), then
    one result carrying the usage of the final chunk and the finish reason."""
    llm.usage = (21, 5)
    provider = make(kind)
    pieces, final = pieces_and_final(await collect(provider.stream(USER_HELLO, max_tokens=50)))
    assert pieces == WORDS
    assert final.content == REPLY
    assert (final.prompt_tokens, final.completion_tokens) == (21, 5)
    assert (final.model, final.finish_reason) == ("gpt-4o-mini", "stop")
    (sent,) = llm.chat_requests
    assert sent.body is not None
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["max_tokens"] == 50


@ALL_KINDS
async def test_a_finished_stream_leaves_its_connection_open_for_reuse(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A stream is read to its very end, so its keep-alive connection stays in the pool
    (a response closed half-read would make httpx drop the connection)."""
    llm.chunk_delay = 0.01  # the end of the body arrives after the final chunk
    provider = make(kind)
    for _ in range(2):
        await collect(provider.stream(USER_HELLO))
        for _ in range(5):  # let a dropped connection's server task finish
            await asyncio.sleep(0.01)
        assert llm.open_connections == 1


@OPENAI_KINDS
async def test_openai_wire_lists_models_and_reports_availability(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """/models (with the key) gives the model ids and availability."""
    provider = make(kind)
    assert await provider.is_available()
    assert await provider.list_models() == ["llama3.2", "gpt-4o-mini"]
    assert llm.requests[-1].path == "/v1/models"
    assert llm.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    await llm.stop()
    assert not await provider.is_available()


async def test_openrouter_sends_ranking_headers_and_records_cost(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """HTTP-Referer and X-Title go with every call; usage.cost lands in the result, streamed
    or not."""
    llm.openrouter_cost = 0.00042
    provider = make("openrouter", site_url="https://rosey.example", site_name="Rosey-Robot")
    result = await provider.chat(USER_HELLO)
    assert result.cost == pytest.approx(0.00042)
    _, final = pieces_and_final(await collect(provider.stream(USER_HELLO)))
    assert final.cost == pytest.approx(0.00042)
    for sent in llm.chat_requests:
        assert sent.headers["http-referer"] == "https://rosey.example"
        assert sent.headers["x-title"] == "Rosey-Robot"
        assert sent.headers["authorization"] == f"Bearer {API_KEY}"
        assert sent.body is not None
        assert sent.body["usage"] == {"include": True}


async def test_openrouter_non_ascii_title_is_sent_percent_encoded(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A site name outside ASCII cannot break the client: it goes out %-encoded."""
    provider = make("openrouter", site_name="Rosé Bot")
    await provider.chat(USER_HELLO)
    assert llm.chat_requests[0].headers["x-title"] == "Ros%C3%A9 Bot"
    assert "http-referer" not in llm.chat_requests[0].headers


async def test_openai_without_cost_leaves_it_none(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """No usage.cost in the answer: cost is None (OpenAI never sends one)."""
    result = await make("openai").chat(USER_HELLO)
    assert result.cost is None


@OPENAI_KINDS
async def test_missing_usage_is_reported_as_unknown_not_zero(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A server that sends no usage gives None token counts, so callers estimate."""
    llm.omit_usage = True
    provider = make(kind)
    result = await provider.chat(USER_HELLO)
    _, final = pieces_and_final(await collect(provider.stream(USER_HELLO)))
    for answer in (result, final):
        assert (answer.prompt_tokens, answer.completion_tokens) == (None, None)
        assert answer.content == REPLY


# --- retries -------------------------------------------------------------------------------------


@ALL_KINDS
@pytest.mark.parametrize("status", [429, 503])
async def test_retries_429_and_5xx_honouring_retry_after(
    kind: str,
    status: int,
    llm: FakeLLMServer,
    make: ProviderFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two failures with Retry-After, then success: three requests, the wait asked for used."""
    llm.fail_status, llm.fail_times, llm.retry_after = status, 2, 0.05
    caplog.set_level(logging.WARNING, logger="llm_es")
    result = await make(kind).chat(USER_HELLO)
    assert result.content == REPLY
    assert llm.chat_count == 3
    retries = [r.getMessage() for r in caplog.records if "provider_retry" in r.getMessage()]
    assert len(retries) == 2
    assert all("delay_s=0.05" in line and f"provider={kind}" in line for line in retries)


@ALL_KINDS
async def test_a_stream_is_retried_before_its_first_piece(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A 503 before the stream starts is retried like a plain call."""
    llm.fail_status, llm.fail_times = 503, 1
    pieces, final = pieces_and_final(await collect(make(kind).stream(USER_HELLO)))
    assert "".join(pieces) == final.content == REPLY
    assert llm.chat_count == 2


@ALL_KINDS
async def test_rate_limit_after_the_retries_is_provider_rate_limited(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """429 on every attempt: max_retries + 1 requests, then ProviderRateLimited with the wait."""
    llm.fail_status, llm.retry_after = 429, 0.01
    with pytest.raises(ProviderRateLimited) as caught:
        await make(kind).chat(USER_HELLO)
    label = LABELS[kind]
    assert str(caught.value) == (
        f"{label} API error: 429 Too Many Requests: fake provider failure (HTTP 429)"
        " (retry after 0.01s)"
    )
    assert (caught.value.status, caught.value.retry_after) == (429, 0.01)
    assert caught.value.provider == kind
    assert llm.chat_count == FAST_RETRIES.max_retries + 1


async def test_a_retry_after_beyond_the_cap_fails_at_once(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A server asking for a longer wait than max_retry_after gets no retry: the caller
    hears at once, with the wait it asked for."""
    llm.fail_status, llm.retry_after = 429, 120
    with pytest.raises(ProviderRateLimited) as caught:
        await make("openai").chat(USER_HELLO)
    assert caught.value.retry_after == 120
    assert "(retry after 120s)" in str(caught.value)
    assert llm.chat_count == 1


async def test_max_retries_zero_tries_once(llm: FakeLLMServer, make: ProviderFactory) -> None:
    """max_retries 0 (from config) means one attempt, even for a retryable 503."""
    llm.fail_status = 503
    provider = make("openai", max_retries=0, retry_policy=None)
    assert provider.retry_policy.max_retries == 0
    with pytest.raises(ProviderBadResponse):
        await provider.chat(USER_HELLO)
    assert llm.chat_count == 1


@ALL_KINDS
async def test_server_errors_after_the_retries_name_the_status(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """500 on every attempt: ProviderBadResponse '<Label> API error: 500 ...' after retries."""
    llm.fail_status = 500
    with pytest.raises(ProviderBadResponse) as caught:
        await make(kind).chat(USER_HELLO)
    assert str(caught.value) == (
        f"{LABELS[kind]} API error: 500 Internal Server Error: fake provider failure (HTTP 500)"
    )
    assert caught.value.status == 500
    assert llm.chat_count == 3


@ALL_KINDS
@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ProviderBadRequest),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
        (404, ProviderBadRequest),
        (422, ProviderBadRequest),
    ],
)
async def test_other_4xx_are_never_retried(
    kind: str,
    status: int,
    error_class: type[ProviderError],
    llm: FakeLLMServer,
    make: ProviderFactory,
) -> None:
    """4xx other than 429 fail on the first answer, streamed or not, with their own class."""
    llm.fail_status = status
    provider = make(kind)
    with pytest.raises(error_class) as caught:
        await provider.chat(USER_HELLO)
    with pytest.raises(error_class):
        await collect(provider.stream(USER_HELLO))
    assert caught.value.status == status
    assert str(caught.value).startswith(f"{LABELS[kind]} API error: {status} ")
    assert llm.chat_count == 2


@OPENAI_KINDS
async def test_auth_errors_read_plainly_and_leave_the_servers_text_out(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """401 is exactly '<Label> API error: 401 Unauthorized' (servers echo key fragments)."""
    llm.fail_status = 401
    with pytest.raises(ProviderAuthError) as caught:
        await make(kind).chat(USER_HELLO)
    assert str(caught.value) == f"{LABELS[kind]} API error: 401 Unauthorized"


# --- timeouts and dead servers -------------------------------------------------------------------


@ALL_KINDS
async def test_a_slow_model_times_out_without_retry(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """No answer within the configured timeout: ProviderTimeout naming it, one request only."""
    llm.delay = 2.0
    with pytest.raises(ProviderTimeout) as caught:
        await make(kind, timeout=0.2).chat(USER_HELLO)
    assert str(caught.value) == f"{LABELS[kind]} did not answer within 0.2s"
    assert llm.chat_count == 1


@ALL_KINDS
async def test_an_unreachable_server_is_retried_then_unavailable(
    kind: str, llm: FakeLLMServer, make: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: retried max_retries times, then ProviderUnavailable with the URL."""
    await llm.stop()
    caplog.set_level(logging.WARNING, logger="llm_es")
    provider = make(kind)
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(USER_HELLO)
    suffix = "" if kind == "ollama" else "/v1"
    assert str(caught.value) == f"{LABELS[kind]} is not reachable at {llm.base_url}{suffix}"
    assert sum("provider_retry" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(USER_HELLO))


async def test_url_credentials_never_reach_the_message(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """User-info and query of a base URL are left out of the text that names the server."""
    await llm.stop()
    url = f"http://admin:hunter2@127.0.0.1:{llm.port}/v1?key=hunter3"
    with pytest.raises(ProviderUnavailable) as caught:
        await make("openai", base_url=url).chat(USER_HELLO)
    assert str(caught.value) == f"OpenAI is not reachable at http://127.0.0.1:{llm.port}/v1"


# --- streams that die mid-way ------------------------------------------------------------------


@ALL_KINDS
async def test_a_stream_that_dies_mid_way_raises_and_is_not_retried(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """The server vanishes after the first piece: ProviderStreamBroken, one request, no final
    result (the partial text is not an answer)."""
    llm.chunk_delay = 0.2
    provider = make(kind)
    received: list[str | CompletionResult] = []

    async def stop_server_after_the_first_piece() -> None:
        async with contextlib.aclosing(provider.stream(USER_HELLO)) as items:
            async for item in items:
                received.append(item)
                await llm.stop()

    with pytest.raises(ProviderStreamBroken) as caught:
        await stop_server_after_the_first_piece()
    assert received == ["The "]
    assert str(caught.value) == (f"{LABELS[kind]} stream broke off before the answer was complete")
    assert llm.chat_count == 1
    assert caught.value.prompt_consumed
    assert caught.value.usage == PartialUsage(model=MODELS[kind], completion_chars=len("The "))


@ALL_KINDS
async def test_a_stream_stalling_mid_way_times_out(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """Pieces stop coming for longer than the timeout: ProviderTimeout, still one request."""
    llm.chunk_delay = 1.0
    received: list[str | CompletionResult] = []

    async def read_all() -> None:
        async with contextlib.aclosing(make(kind, timeout=0.3).stream(USER_HELLO)) as items:
            async for item in items:
                received.append(item)

    with pytest.raises(ProviderTimeout):
        await read_all()
    assert all(isinstance(item, str) for item in received)
    assert llm.chat_count == 1


@OPENAI_KINDS
async def test_a_stream_failing_after_its_usage_carries_the_reported_figures(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """Usage reported before an error event: the error carries those figures (and cost),
    with the length of the text received."""
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "cost": 0.002}
    error = {"code": 502, "message": "upstream model crashed"}
    llm.raw_answer = sse(
        content_chunk("Partial "),
        content_chunk("answer"),
        {"model": "gpt-4o-mini", "choices": [], "usage": usage},
        {"error": error},
    )
    with pytest.raises(ProviderStreamBroken) as caught:
        await collect(make(kind).stream(USER_HELLO))
    assert str(caught.value) == f"{LABELS[kind]} stream failed: upstream model crashed"
    assert caught.value.usage == PartialUsage(
        model="gpt-4o-mini",
        prompt_tokens=12,
        completion_tokens=3,
        completion_chars=len("Partial answer"),
        cost=0.002,
    )
    assert llm.chat_count == 1


@ALL_KINDS
async def test_a_failure_before_the_stream_starts_consumed_no_prompt(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A status error (after the retries) or no connection: nothing was read by the
    provider, so the error owes nothing (`prompt_consumed` false, no usage)."""
    provider = make(kind)
    llm.fail_status = 500
    with pytest.raises(ProviderBadResponse) as refused:
        await collect(provider.stream(USER_HELLO))
    await llm.stop()
    with pytest.raises(ProviderUnavailable) as unreachable:
        await collect(provider.stream(USER_HELLO))
    for error in (refused.value, unreachable.value):
        assert (error.prompt_consumed, error.usage) == (False, None)


async def test_leaving_a_stream_early_closes_it(llm: FakeLLMServer, make: ProviderFactory) -> None:
    """A consumer that stops after one piece closes the HTTP response at once."""
    llm.chunk_delay = 0.5
    provider = make("openai")
    async with contextlib.aclosing(provider.stream(USER_HELLO)) as items:
        async for _ in items:
            break
    assert llm.chat_count == 1
    assert (await provider.chat(USER_HELLO)).content == REPLY


# --- stream lines -------------------------------------------------------------------------------

LINE_BOUNDARIES = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e"
"""Where str.splitlines (and httpx's aiter_lines) ends a line, though SSE and NDJSON do not."""


@ALL_KINDS
@pytest.mark.parametrize("write_size", [None, 5], ids=["chunk-per-line", "5-byte-writes"])
async def test_unicode_line_boundaries_inside_an_answer_arrive_whole(
    kind: str, write_size: int | None, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """An answer holding U+2028, U+2029, U+0085 (sent raw inside the JSON string) or the
    control characters str.splitlines also breaks at streams whole; so it does when the
    server writes 5 bytes at a time, cutting lines and UTF-8 characters in the middle."""
    reply = " ".join(f"<{char}>" for char in LINE_BOUNDARIES) + " fin\u00e9 \u2026 \U0001f600"
    llm.reply = reply
    llm.write_size = write_size
    pieces, final = pieces_and_final(await collect(make(kind).stream(USER_HELLO)))
    assert "".join(pieces) == final.content == reply
    assert final.finish_reason == "stop"


@OPENAI_KINDS
async def test_sse_lines_may_end_in_crlf(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """CR LF ends an SSE line as LF does; the CR is not part of the data."""
    finish = {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    body = sse(content_chunk("one "), content_chunk("two"), finish) + b"data: [DONE]\n\n"
    llm.raw_answer = body.replace(b"\n", b"\r\n")
    pieces, final = pieces_and_final(await collect(make(kind).stream(USER_HELLO)))
    assert pieces == ["one ", "two"]
    assert (final.content, final.finish_reason) == ("one two", "stop")


@ALL_KINDS
async def test_a_line_longer_than_the_bound_breaks_the_stream(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A line still without its end past MAX_LINE_BYTES is buffered no further: the
    stream breaks with a message naming the bound, and is not retried."""
    llm.raw_answer = b"x" * (MAX_LINE_BYTES + 1)
    with pytest.raises(ProviderStreamBroken) as caught:
        await collect(make(kind).stream(USER_HELLO))
    assert str(caught.value) == f"{LABELS[kind]} stream sent a line longer than 1,048,576 bytes"
    assert caught.value.prompt_consumed
    assert llm.chat_count == 1


@pytest.mark.parametrize(
    ("kind", "call", "body", "text"),
    [
        ("ollama", "chat", b"{not json", "Ollama returned invalid JSON"),
        ("ollama", "chat", b"[1, 2]", "Ollama returned an unexpected body"),
        (
            "ollama",
            "chat",
            b'{"message": {"role": "assistant"}}',
            "Ollama returned no message content",
        ),
        ("ollama", "complete", b'{"done": true}', "Ollama returned no response text"),
        ("openai", "chat", b'{"choices": []}', "OpenAI returned no message content"),
        ("openrouter", "complete", b'{"choices": [{}]}', "OpenRouter returned no message content"),
    ],
)
async def test_a_200_without_a_readable_answer_is_a_bad_response(
    kind: str, call: str, body: bytes, text: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """A 200 body that is not JSON, not an object, or lacks the answer's text (chat's message
    content, generate's response) is ProviderBadResponse naming the problem, not retried."""
    llm.raw_answer = body
    provider = make(kind)
    answer = provider.chat(USER_HELLO) if call == "chat" else provider.complete("say hi")
    with pytest.raises(ProviderBadResponse) as caught:
        await answer
    assert str(caught.value) == text
    assert caught.value.status is None
    assert llm.chat_count == 1


# --- error objects in a 200 answer ------------------------------------------------------------


@OPENAI_KINDS
@pytest.mark.parametrize(
    ("code", "error_class", "text", "attempts"),
    [
        (429, ProviderRateLimited, "429 Too Many Requests", 3),
        (502, ProviderBadResponse, "502 Bad Gateway", 3),
        (400, ProviderBadRequest, "400 Bad Request", 1),
        (402, ProviderBadRequest, "402 Payment Required", 1),
    ],
)
async def test_an_error_object_in_a_200_answer_counts_as_its_code(
    kind: str,
    code: int,
    error_class: type[ProviderError],
    text: str,
    attempts: int,
    llm: FakeLLMServer,
    make: ProviderFactory,
) -> None:
    """`{"error": {"code": N, ...}}` sent with a 200 (OpenRouter's way) fails as HTTP status N
    would: 429 and 5xx retried, others not; the provider's own message kept."""
    llm.fail_status, llm.fail_in_body = code, True
    with pytest.raises(error_class) as caught:
        await make(kind).chat(USER_HELLO)
    assert str(caught.value) == (
        f"{LABELS[kind]} API error: {text}: fake provider failure (HTTP {code})"
    )
    assert caught.value.status == code
    assert not caught.value.prompt_consumed
    assert llm.chat_count == attempts


@OPENAI_KINDS
async def test_a_200_carrying_a_429_then_an_answer_succeeds_after_one_retry(
    kind: str, llm: FakeLLMServer, make: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A rate-limit error object in a 200 goes through the retry policy like an HTTP 429."""
    llm.fail_status, llm.fail_times, llm.fail_in_body = 429, 1, True
    caplog.set_level(logging.WARNING, logger="llm_es")
    result = await make(kind).chat(USER_HELLO)
    assert result.content == REPLY
    assert llm.chat_count == 2
    retries = [r.getMessage() for r in caplog.records if "provider_retry" in r.getMessage()]
    assert len(retries) == 1
    assert "429 Too Many Requests" in retries[0]


async def test_an_error_object_without_a_code_is_a_bad_request(
    llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """Ollama's `{"error": "..."}` and an OpenAI-style error naming no status fail at once as
    ProviderBadRequest with the provider's text, the key scrubbed from it."""
    llm.fail_status, llm.fail_in_body = 503, True
    with pytest.raises(ProviderBadRequest) as ollama:
        await make("ollama").complete("say hi")
    assert str(ollama.value) == "Ollama error: fake provider failure (HTTP 503)"
    assert ollama.value.status is None
    llm.fail_status = None
    llm.raw_answer = orjson.dumps({"error": {"message": f"key {API_KEY} has no model access"}})
    with pytest.raises(ProviderBadRequest) as openai:
        await make("openai").chat(USER_HELLO)
    assert str(openai.value) == "OpenAI error: key *** has no model access"
    assert llm.chat_count == 2


@ALL_KINDS
async def test_an_error_object_in_a_stream_breaks_it_after_the_prompt_was_consumed(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """An error line or event once the stream started: ProviderStreamBroken with the
    provider's text, not retried, and owing the prompt."""
    llm.fail_status, llm.fail_in_body = 429, True
    with pytest.raises(ProviderStreamBroken) as caught:
        await collect(make(kind).stream(USER_HELLO))
    assert str(caught.value) == f"{LABELS[kind]} stream failed: fake provider failure (HTTP 429)"
    assert caught.value.usage == PartialUsage(model=MODELS[kind])
    assert llm.chat_count == 1


# --- throttling ----------------------------------------------------------------------------------


@ALL_KINDS
async def test_a_429_keeps_the_provider_throttled_until_an_answer(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """After a 429 asking for a long wait the provider reports itself throttled; the next
    answer clears it."""
    provider = make(kind)
    assert not provider.throttled()
    llm.fail_status, llm.retry_after = 429, 120
    with pytest.raises(ProviderRateLimited):
        await provider.chat(USER_HELLO)
    assert provider.throttled()
    llm.fail_status = llm.retry_after = None
    await collect(provider.stream(USER_HELLO))
    assert not provider.throttled()


@ALL_KINDS
async def test_throttling_ends_when_the_retry_after_passes(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """Throttled for the Retry-After of the last 429, on the monotonic clock, then not."""
    llm.fail_status, llm.retry_after = 429, 0.05
    provider = make(kind)
    with pytest.raises(ProviderRateLimited):
        await provider.chat(USER_HELLO)
    assert provider.throttled()
    for _ in range(100):
        if not provider.throttled():
            break
        await asyncio.sleep(0.01)
    assert not provider.throttled()


@OPENAI_KINDS
async def test_a_429_without_retry_after_or_in_a_200_body_throttles_too(
    kind: str, llm: FakeLLMServer, make: ProviderFactory
) -> None:
    """No Retry-After: throttled for a minute (still so once the call has failed); an error
    object coded 429, sent with a 200 or mid-stream, counts like the status."""
    provider = make(kind, retry_policy=RetryPolicy(max_retries=0))
    llm.fail_status = 429
    with pytest.raises(ProviderRateLimited):
        await provider.chat(USER_HELLO)
    assert provider.throttled()
    in_a_200: list[Callable[[], Any]] = [
        lambda: provider.chat(USER_HELLO),
        lambda: collect(provider.stream(USER_HELLO)),
    ]
    for call in in_a_200:
        llm.fail_status = None
        await provider.chat(USER_HELLO)
        assert not provider.throttled()
        llm.fail_status, llm.fail_in_body = 429, True
        with pytest.raises(ProviderError):
            await call()
        assert provider.throttled()


# --- secrets -------------------------------------------------------------------------------------


def _leaks(text: str) -> bool:
    return API_KEY in text or API_KEY[8:20] in text


@OPENAI_KINDS
async def test_the_api_key_never_reaches_errors_or_logs(
    kind: str, llm: FakeLLMServer, make: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Across auth, rate-limit, server errors that echo the key, timeouts, dead servers and
    broken streams, the key is in no exception text, repr, cause, or log record (DEBUG
    included, so httpx and httpcore are covered too)."""
    caplog.set_level(logging.DEBUG)
    provider = make(kind, timeout=0.3)
    errors: list[BaseException] = []

    def echo_key(messages: Messages) -> str:
        raise RuntimeError(f"invalid key {API_KEY}")

    async def fail(action: Callable[[], Any]) -> None:
        with pytest.raises(ProviderError) as caught:
            await action()
        errors.append(caught.value)

    llm.fail_status = 401
    await fail(lambda: provider.chat(USER_HELLO))
    llm.fail_status, llm.retry_after = 429, 0.01
    await fail(lambda: provider.chat(USER_HELLO))
    llm.fail_status = llm.retry_after = None
    llm.reply = echo_key
    await fail(lambda: provider.chat(USER_HELLO))
    await fail(lambda: collect(provider.stream(USER_HELLO)))
    assert "***" in str(errors[-1])
    llm.reply, llm.delay = REPLY, 1.0
    await fail(lambda: provider.chat(USER_HELLO))
    llm.delay, llm.chunk_delay = 0.0, 0.2

    async def die_mid_stream() -> None:
        async with contextlib.aclosing(provider.stream(USER_HELLO)) as items:
            async for _ in items:
                await llm.stop()

    await fail(die_mid_stream)
    await fail(lambda: provider.chat(USER_HELLO))
    kinds = [type(error) for error in errors]
    assert kinds == [
        ProviderAuthError,
        ProviderRateLimited,
        ProviderBadResponse,
        ProviderBadResponse,
        ProviderTimeout,
        ProviderStreamBroken,
        ProviderUnavailable,
    ]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert not _leaks(str(chain)), chain
            assert not _leaks(repr(chain)), chain
            chain = chain.__cause__ or chain.__context__
    assert caplog.records, "DEBUG capture should see httpx/httpcore records"
    for record in caplog.records:
        assert not _leaks(record.getMessage()), record.getMessage()
        assert not _leaks(repr(record.args)), record.args
    assert not _leaks(repr(provider.retry_policy))


def test_a_key_that_is_not_printable_ascii_is_refused_without_echoing_it() -> None:
    """httpx would raise later with the key inside the exception: refuse it up front."""
    bad = "sk-ünïcode-key\n"
    with pytest.raises(ConfigError) as caught:
        OpenAIProvider(OpenAIConfig(api_key=Secret(bad)))
    assert str(caught.value) == "config key 'providers.openai.api_key': must be printable ASCII"
    assert bad.strip() not in repr(caught.value)


# --- factory -------------------------------------------------------------------------------------


async def test_build_provider_makes_each_configured_provider(llm: FakeLLMServer) -> None:
    """build_provider(name, config) returns the provider with that config's settings."""
    config = Config(
        providers=ProvidersConfig(
            ollama=OllamaConfig(base_url=llm.base_url, max_retries=1),
            openai=OpenAIConfig(base_url=f"{llm.base_url}/v1", default_model="gpt-4o-mini"),
            openrouter=OpenRouterConfig(base_url=f"{llm.base_url}/v1", max_retries=3),
        )
    )
    built: list[LLMProvider] = []
    try:
        for name, cls in (
            ("ollama", OllamaProvider),
            ("openai", OpenAIProvider),
            ("openrouter", OpenRouterProvider),
        ):
            provider = build_provider(name, config)
            built.append(provider)
            assert isinstance(provider, cls)
            assert provider.name == name
            assert await provider.is_available()
        assert [p.retry_policy.max_retries for p in built if isinstance(p, HTTPProvider)] == [
            1,
            2,
            3,
        ]
        assert built[1].default_model == "gpt-4o-mini"
    finally:
        for provider in built:
            await provider.aclose()
    with pytest.raises(ValueError, match="unknown provider 'anthropic'"):
        build_provider("anthropic", config)
