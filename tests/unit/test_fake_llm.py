"""Wire formats and knobs of the fake LLM provider, checked with httpx over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fake_llm import DEFAULT_REPLY, LOOPBACK_HOST, FakeLLMServer

pytestmark = pytest.mark.timeout(15)

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there fake model"},
]
PROMPT_WORDS = 6
REPLY_WORDS = len(DEFAULT_REPLY.split())


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Collect what reaches the event loop's exception handler; none of it is allowed."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    yield reported
    loop.set_exception_handler(None)
    assert reported == []


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server
        assert server.handler_errors == []


@pytest.fixture
async def client(fake_llm: FakeLLMServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake_llm.base_url, timeout=5, trust_env=False) as client:
        yield client


async def _read_lines(response: httpx.Response) -> list[str]:
    return [line async for line in response.aiter_lines() if line]


async def _sse_payloads(response: httpx.Response) -> list[str]:
    lines = await _read_lines(response)
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


async def _read_raw_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length response from a raw connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.strip().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ")[1]), headers, body


# -- Ollama -------------------------------------------------------------------


async def test_ollama_chat_without_stream_answers_one_json_object(
    client: httpx.AsyncClient,
) -> None:
    """stream=false gets one object with the reply, done_reason and word-count usage."""
    response = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": MESSAGES, "stream": False}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["model"] == "llama3.2"
    assert answer["message"] == {"role": "assistant", "content": DEFAULT_REPLY}
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["prompt_eval_count"] == PROMPT_WORDS
    assert answer["eval_count"] == REPLY_WORDS
    assert answer["created_at"].endswith("Z")


async def test_ollama_chat_streams_ndjson_by_default(client: httpx.AsyncClient) -> None:
    """Without "stream" the answer is NDJSON: one piece per word, then a done line."""
    async with client.stream(
        "POST", "/api/chat", json={"model": "llama3.2", "messages": MESSAGES}
    ) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [orjson.loads(line) for line in await _read_lines(response)]

    *pieces, final = lines
    assert len(pieces) == REPLY_WORDS
    assert all(piece["done"] is False for piece in pieces)
    assert "".join(piece["message"]["content"] for piece in pieces) == DEFAULT_REPLY
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == PROMPT_WORDS
    assert final["eval_count"] == REPLY_WORDS
    assert final["total_duration"] >= 0


async def test_ollama_generate_answers_json_and_streams(client: httpx.AsyncClient) -> None:
    """/api/generate answers with "response", as one object or as NDJSON pieces."""
    request = {"model": "llama3.2", "prompt": "say hi", "system": "be brief"}

    single = (await client.post("/api/generate", json={**request, "stream": False})).json()
    async with client.stream("POST", "/api/generate", json=request) as response:
        lines = [orjson.loads(line) for line in await _read_lines(response)]

    assert single["response"] == DEFAULT_REPLY
    assert single["done"] is True
    assert single["prompt_eval_count"] == 4
    assert single["eval_count"] == REPLY_WORDS
    *pieces, final = lines
    assert "".join(piece["response"] for piece in pieces) == DEFAULT_REPLY
    assert final["done"] is True
    assert final["response"] == ""
    assert final["eval_count"] == REPLY_WORDS


async def test_ollama_tags_version_and_banner(client: httpx.AsyncClient) -> None:
    """/api/tags lists the models with ":latest", beside /api/version and the / banner."""
    tags = (await client.get("/api/tags")).json()
    version = (await client.get("/api/version")).json()
    banner = await client.get("/")
    banner_head = await client.head("/")

    assert [model["name"] for model in tags["models"]] == ["llama3.2:latest"]
    assert tags["models"][0]["model"] == "llama3.2:latest"
    assert isinstance(version["version"], str)
    assert banner.text == "Ollama is running"
    assert banner_head.status_code == 200
    assert banner_head.content == b""


async def test_ollama_rejects_missing_and_unknown_models(client: httpx.AsyncClient) -> None:
    """No model is a 400, an unpulled one a 404; a ":latest" tag matches the bare name."""
    missing = await client.post("/api/chat", json={"messages": MESSAGES, "stream": False})
    unknown = await client.post(
        "/api/chat", json={"model": "mistral", "messages": MESSAGES, "stream": False}
    )
    tagged = await client.post(
        "/api/chat", json={"model": "llama3.2:latest", "messages": MESSAGES, "stream": False}
    )

    assert missing.status_code == 400
    assert missing.json() == {"error": "model is required"}
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "model 'mistral' not found, try pulling it first"}
    assert tagged.status_code == 200


# -- OpenAI / OpenRouter -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
async def test_openai_chat_answers_a_chat_completion(client: httpx.AsyncClient, path: str) -> None:
    """A non-streamed request gets chat.completion JSON with message, finish_reason, usage."""
    response = await client.post(path, json={"model": "gpt-test", "messages": MESSAGES})

    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "gpt-test"
    assert completion["id"].startswith("chatcmpl-")
    (choice,) = completion["choices"]
    assert choice["message"] == {"role": "assistant", "content": DEFAULT_REPLY}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {
        "prompt_tokens": PROMPT_WORDS,
        "completion_tokens": REPLY_WORDS,
        "total_tokens": PROMPT_WORDS + REPLY_WORDS,
    }


async def test_openai_stream_sends_sse_chunks_then_usage_then_done(
    client: httpx.AsyncClient,
) -> None:
    """stream=true with include_usage: role delta, a delta per word, stop, usage, [DONE]."""
    request = {
        "model": "gpt-test",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"] == "text/event-stream"
        payloads = await _sse_payloads(response)

    *data, done_marker = payloads
    assert done_marker == "[DONE]"
    first, *words, finish, usage_chunk = [orjson.loads(payload) for payload in data]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(words) == REPLY_WORDS
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in words) == DEFAULT_REPLY
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == REPLY_WORDS
    assert usage_chunk["usage"]["prompt_tokens"] == PROMPT_WORDS
    assert len({chunk["id"] for chunk in [first, *words, finish, usage_chunk]}) == 1


async def test_openai_stream_without_include_usage_has_no_usage(
    client: httpx.AsyncClient,
) -> None:
    """Without stream_options.include_usage no chunk carries usage."""
    request = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=request) as response:
        payloads = await _sse_payloads(response)

    chunks = [orjson.loads(payload) for payload in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
async def test_openai_models_lists_the_configured_models(path: str) -> None:
    """The models endpoints list every configured model id."""
    async with (
        FakeLLMServer(models=["openai/gpt-4o-mini", "meta/llama"]) as server,
        httpx.AsyncClient(base_url=server.base_url, trust_env=False) as client,
    ):
        listing = (await client.get(path)).json()

    assert listing["object"] == "list"
    assert [model["id"] for model in listing["data"]] == ["openai/gpt-4o-mini", "meta/llama"]


async def test_openrouter_cost_is_reported_in_usage(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """Setting openrouter_cost adds OpenRouter's "cost" field to usage."""
    fake_llm.openrouter_cost = 0.00042

    completion = (await client.post("/v1/chat/completions", json={"messages": MESSAGES})).json()

    assert completion["usage"]["cost"] == 0.00042


async def test_bad_json_is_a_400_in_each_dialect(client: httpx.AsyncClient) -> None:
    """A body that is not a JSON object gets 400 in the endpoint's own error shape."""
    headers = {"content-type": "application/json"}
    openai = await client.post("/v1/chat/completions", content=b"{nope", headers=headers)
    ollama = await client.post("/api/chat", content=b"[1, 2]", headers=headers)

    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert ollama.status_code == 400
    assert isinstance(ollama.json()["error"], str)


async def test_unknown_paths_and_wrong_methods_are_refused(client: httpx.AsyncClient) -> None:
    """Unknown paths get 404, known paths with the wrong method 405."""
    unknown = await client.get("/api/pull")
    wrong_method = await client.get("/api/chat")

    assert unknown.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


# -- knobs -----------------------------------------------------------------------


async def test_reply_function_sees_the_request_messages(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """A callable reply is called with the request's messages."""
    fake_llm.reply = lambda messages: f"you said: {messages[-1]['content']}"

    answer = (
        await client.post(
            "/api/chat", json={"model": "llama3.2", "messages": MESSAGES, "stream": False}
        )
    ).json()

    assert answer["message"]["content"] == "you said: hello there fake model"


async def test_failing_reply_function_is_a_500_and_is_kept(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """A reply function that raises gets the client a 500 and lands in handler_errors."""

    def broken_reply(messages: list[dict[str, Any]]) -> str:
        raise LookupError("no reply scripted")

    fake_llm.reply = broken_reply

    response = await client.post("/v1/chat/completions", json={"messages": MESSAGES})

    assert response.status_code == 500
    assert "no reply scripted" in response.json()["error"]["message"]
    assert [type(error) for error in fake_llm.handler_errors] == [LookupError]
    fake_llm.handler_errors.clear()


async def test_usage_override_and_omission(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """`usage` replaces the word counts; `omit_usage` drops token counts in both dialects."""
    ollama_request = {"model": "llama3.2", "messages": MESSAGES, "stream": False}
    openai_request = {"messages": MESSAGES}

    fake_llm.usage = (100, 7)
    overridden = (await client.post("/api/chat", json=ollama_request)).json()
    fake_llm.omit_usage = True
    ollama_bare = (await client.post("/api/chat", json=ollama_request)).json()
    openai_bare = (await client.post("/v1/chat/completions", json=openai_request)).json()

    assert (overridden["prompt_eval_count"], overridden["eval_count"]) == (100, 7)
    assert "prompt_eval_count" not in ollama_bare
    assert "eval_count" not in ollama_bare
    assert ollama_bare["done"] is True
    assert "usage" not in openai_bare


async def test_fail_status_answers_provider_shaped_errors(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """fail_status fails every chat request: Ollama {"error": str}, OpenAI {"error": {...}}."""
    fake_llm.fail_status = 429

    ollama = await client.post("/api/chat", json={"model": "llama3.2", "messages": MESSAGES})
    openai = await client.post("/v1/chat/completions", json={"messages": MESSAGES})
    tags = await client.get("/api/tags")

    assert ollama.status_code == 429
    assert isinstance(ollama.json()["error"], str)
    assert openai.status_code == 429
    error = openai.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == 429
    assert error["type"] == "rate_limit_error"
    assert tags.status_code == 200
    assert fake_llm.fail_status == 429


async def test_fail_times_fails_only_the_next_requests(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """With fail_times=2 two requests fail (with Retry-After), then answers resume."""
    fake_llm.fail_status = 503
    fake_llm.fail_times = 2
    fake_llm.retry_after = 1.5
    request = {"model": "llama3.2", "messages": MESSAGES, "stream": False}

    responses = [await client.post("/api/chat", json=request) for _ in range(3)]

    assert [response.status_code for response in responses] == [503, 503, 200]
    assert responses[0].headers["retry-after"] == "1.5"
    assert "retry-after" not in responses[2].headers
    assert fake_llm.fail_status is None
    assert fake_llm.fail_times is None


async def test_fail_in_body_sends_the_error_object_with_a_200(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """fail_in_body: the same error object, but with status 200: as the whole body, or as the
    first NDJSON line or SSE event of a stream."""
    fake_llm.fail_status, fake_llm.fail_in_body = 429, True
    plain = await client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert plain.status_code == 200
    assert plain.json()["error"]["code"] == 429
    streamed = {"messages": MESSAGES, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
        assert response.status_code == 200
        payloads = await _sse_payloads(response)
    assert [orjson.loads(p)["error"]["code"] for p in payloads] == [429]
    ollama_request = {"model": "llama3.2", "messages": MESSAGES}
    async with client.stream("POST", "/api/chat", json=ollama_request) as response:
        assert response.status_code == 200
        lines = await _read_lines(response)
    assert [orjson.loads(line) for line in lines] == [{"error": "fake provider failure (HTTP 429)"}]


async def test_raw_answer_is_sent_as_it_is(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """raw_answer: a 200 with exactly those bytes, JSON or streamed in the stream's type."""
    fake_llm.raw_answer = b'{"not": "an answer"}'
    plain = await client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert (plain.status_code, plain.content) == (200, b'{"not": "an answer"}')
    request = {"model": "llama3.2", "messages": MESSAGES}
    async with client.stream("POST", "/api/chat", json=request) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        body = await response.aread()
    assert body == b'{"not": "an answer"}'


async def test_write_size_cuts_the_stream_into_writes_of_that_many_bytes(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """write_size=5: the same streamed bytes, arriving in chunks of at most 5 bytes."""
    fake_llm.reply = "caf\u00e9 \u2026 done"
    request = {"model": "llama3.2", "messages": MESSAGES}
    async with client.stream("POST", "/api/chat", json=request) as response:
        whole = await response.aread()
    fake_llm.write_size = 5
    async with client.stream("POST", "/api/chat", json=request) as response:
        pieces = [piece async for piece in response.aiter_raw()]
    assert max(map(len, pieces)) <= 5
    cut = b"".join(pieces)
    # Only the timestamps and durations differ between the two answers.
    assert len(cut.splitlines()) == len(whole.splitlines())
    assert [orjson.loads(line)["message"] for line in cut.splitlines()] == [
        orjson.loads(line)["message"] for line in whole.splitlines()
    ]


async def test_hold_keeps_a_chat_waiting_until_released(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """A chat request waits on `hold`; chat_started and chat_count show it arrived."""
    fake_llm.hold = asyncio.Event()
    request = {"model": "llama3.2", "messages": MESSAGES, "stream": False}

    pending = asyncio.create_task(client.post("/api/chat", json=request))
    await asyncio.wait_for(fake_llm.chat_started.wait(), 5)
    await asyncio.sleep(0.05)
    held_while_unset = not pending.done()
    fake_llm.hold.set()
    response = await pending

    assert held_while_unset
    assert fake_llm.chat_count == 1
    assert response.status_code == 200


async def test_delay_postpones_the_answer(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """A chat answer comes no sooner than `delay` seconds after the request."""
    fake_llm.delay = 0.2
    loop = asyncio.get_running_loop()

    started = loop.time()
    response = await client.post("/v1/chat/completions", json={"messages": MESSAGES})
    waited = loop.time() - started

    assert response.status_code == 200
    assert waited >= 0.19


async def test_requests_are_recorded_with_headers_and_body(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """Every request is recorded in order; chat_requests keeps only the chat endpoints."""
    await client.get("/v1/models")
    await client.post(
        "/v1/chat/completions?trace=1",
        json={"model": "gpt-test", "messages": MESSAGES},
        headers={
            "Authorization": "Bearer sk-test",
            "OpenAI-Organization": "org-test",
            "HTTP-Referer": "https://example.test",
            "X-Title": "llm-es tests",
        },
    )

    assert [(request.method, request.path) for request in fake_llm.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]
    assert fake_llm.requests[0].body is None
    (chat,) = fake_llm.chat_requests
    assert chat.body == {"model": "gpt-test", "messages": MESSAGES}
    assert chat.headers["authorization"] == "Bearer sk-test"
    assert chat.headers["openai-organization"] == "org-test"
    assert chat.headers["http-referer"] == "https://example.test"
    assert chat.headers["x-title"] == "llm-es tests"


# -- HTTP/1.1 and lifecycle ---------------------------------------------------------


async def test_pipelined_keep_alive_requests_are_answered_in_order(
    fake_llm: FakeLLMServer,
) -> None:
    """Two requests sent at once on one connection get two answers, then Connection: close."""
    reader, writer = await asyncio.open_connection(LOOPBACK_HOST, fake_llm.port)
    try:
        writer.write(
            b"GET /api/version HTTP/1.1\r\nHost: fake\r\n\r\n"
            b"GET /v1/models HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        first_status, first_headers, first_body = await _read_raw_response(reader)
        second_status, second_headers, second_body = await _read_raw_response(reader)
        rest = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()

    assert (first_status, second_status) == (200, 200)
    assert "connection" not in first_headers
    assert "version" in orjson.loads(first_body)
    assert second_headers["connection"] == "close"
    assert orjson.loads(second_body)["object"] == "list"
    assert rest == b""


async def test_malformed_request_line_is_a_400_and_closes(fake_llm: FakeLLMServer) -> None:
    """A request line that is not HTTP/1.x gets 400 and the connection is closed."""
    reader, writer = await asyncio.open_connection(LOOPBACK_HOST, fake_llm.port)
    try:
        writer.write(b"NONSENSE\r\n\r\n")
        await writer.drain()
        status, headers, _ = await _read_raw_response(reader)
        rest = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()

    assert status == 400
    assert headers["connection"] == "close"
    assert rest == b""
    assert fake_llm.requests == []


async def test_client_leaving_mid_stream_does_not_break_the_server(
    fake_llm: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    """A client that hangs up mid-stream ends that connection quietly; others go on."""
    fake_llm.reply = "one two three four five six seven eight"
    fake_llm.chunk_delay = 0.02
    request = {"model": "llama3.2", "messages": MESSAGES}

    async with client.stream("POST", "/api/chat", json=request) as response:
        async for _ in response.aiter_lines():
            break
    for _ in range(250):
        if fake_llm.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    still_open = fake_llm.open_connections
    tags = await client.get("/api/tags")

    assert still_open == 0
    assert tags.status_code == 200


async def test_stop_cancels_held_chats_and_closes_connections() -> None:
    """stop() ends a chat waiting on `hold`, refuses new connections, and can run twice."""
    server = FakeLLMServer()
    await server.start()
    server.hold = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5, trust_env=False) as client:
        held = asyncio.create_task(
            client.post("/api/chat", json={"model": "llama3.2", "messages": MESSAGES})
        )
        await asyncio.wait_for(server.chat_started.wait(), 5)

        await asyncio.wait_for(server.stop(), 5)
        await server.stop()

        with pytest.raises(httpx.TransportError):
            await held
        with pytest.raises(httpx.ConnectError):
            await client.get("/api/tags")
    assert server.open_connections == 0
    assert server.handler_errors == []


async def test_restart_listens_on_the_same_port() -> None:
    """After stop(), start() binds the same port again, so clients keep their base URL."""
    server = FakeLLMServer()
    first_url = await server.start()
    await server.stop()
    try:
        second_url = await server.start()
        async with httpx.AsyncClient(base_url=second_url, trust_env=False) as client:
            response = await client.get("/api/version")
    finally:
        await server.stop()

    assert second_url == first_url
    assert response.status_code == 200


async def test_base_url_before_start_is_an_error() -> None:
    """Asking for the address of a server that never started raises RuntimeError."""
    server = FakeLLMServer()

    with pytest.raises(RuntimeError, match="start"):
        _ = server.base_url
