"""Generated hostile payloads on every subscribed subject: a well-formed answer, nothing else.

Hypothesis throws payloads at `rosey.command.chat*`, `rosey.llm.*` and
`llm.request`: raw bytes (invalid UTF-8 included), arbitrary and deeply nested
JSON, the subject's own fields filled with wrong types, huge numbers, 1 MB
strings, names with NATS wildcards, separators and line breaks (header
injection attempts), and request headers of their own. For every one the
plugin answers within the timeout with a JSON object of the subject's shape,
never a stack trace; an answer that is a refusal leaves the log as it was; and
after all of them the plugin still serves a chat turn.

Hypothesis runs synchronous test functions, so the plugin, its nats-server and
the fake model run on an event loop in a thread of their own (`LiveStack`).
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import nats
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import RateLimitsConfig
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.log import STREAM_NAME
from tests.support.fake_llm import DEFAULT_REPLY, FakeLLMServer
from tests.support.harness import make_config, start_plugin, stop_plugin

T = TypeVar("T")

# The 1 MB payloads make Hypothesis warn that a failing example is long to print.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

ANSWER_TIMEOUT = 15.0
"""Seconds an answer may take: a generated chat turn goes to the fake model."""
EXAMPLES_PER_SUBJECT = 100
LARGEST_PAYLOAD = 1_000_000
"""nats-server's default max_payload is 1 MiB: nats-py refuses to send more, so it never
reaches the plugin."""
UNLIMITED = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)

COMMAND_REPLY_KEYS = ({"success", "result"}, {"success", "error"})
"""A `!chat` command answers `{"success": true, "result": {...}}` or
`{"success": false, "error": "..."}`."""

# Each subject with the fields its request carries and the exact keys of its answer
# (the seed's dataclasses: `Class(**json)` fails on any other key).
CHAT = {"success", "content", "error", "tokens_used", "provider"}
MEMORY = {"success", "memories", "count", "memory_id", "error"}
PERSONA = {"success", "persona", "available", "error"}
SERVICE_SUBJECTS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "rosey.llm.chat": (
        {"channel": "lobby", "user": "alice", "message": "hi", "persona": None, "request_id": "r"},
        CHAT,
    ),
    "rosey.llm.complete": (
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.7,
            "max_tokens": 50,
            "provider": None,
        },
        CHAT,
    ),
    "rosey.llm.summarize": (
        {"text": "a long story " * 5, "max_length": 200, "style": "concise"},
        {"success", "summary", "error"},
    ),
    "rosey.llm.memory.add": (
        {"channel": "lobby", "content": "sky is blue", "category": "fact", "importance": 2},
        MEMORY,
    ),
    "rosey.llm.memory.recall": ({"channel": "lobby", "query": "sky", "limit": 5}, MEMORY),
    "rosey.llm.persona.get": ({"channel": "lobby"}, PERSONA),
    "rosey.llm.persona.set": ({"channel": "lobby", "persona": "concise"}, PERSONA),
    "rosey.llm.usage": (
        {"user": "alice"},
        {"user", "requests_today", "tokens_today", "rate_limits_remaining"},
    ),
    "rosey.llm.status": (
        {},
        {
            "healthy",
            "provider",
            "model",
            "requests_today",
            "tokens_today",
            "rate_limited",
            "uptime_seconds",
        },
    ),
}
COMMAND = {"channel": "lobby", "user": "alice", "args": "hello", "request_id": "r1"}
OLDER_COMMAND = {"command": "chat", "args": ["hello"], "channel_id": "lobby", "username": "bob"}
COMMAND_ARGS = {
    "rosey.command.chat": "hello",
    "rosey.command.chat.remember": "the sky is blue",
    "rosey.command.chat.recall": "sky",
    "rosey.command.chat.forget": "deadbeef",
}
LEGACY = {"action": "chat", "channel_id": "lobby", "message": "hi", "username": "alice"}


class LiveStack:
    """nats-server, fake model, plugin and a client on an event loop in their own thread."""

    def __init__(self, store: pathlib.Path) -> None:
        self._store = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server = EmbeddedNatsServer(store / "nats", port=0)
        self.fake_llm = FakeLLMServer(reply=DEFAULT_REPLY)
        self.plugin: Plugin | None = None
        self._plugin_nc: NATS | None = None
        self.client: NATS | None = None
        self.cases = 0
        """Generated payloads answered (printed at the end; run with -s to see it)."""
        self.accepted = 0
        """Of them, those answered with success."""

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        await self.server.start()
        await self.fake_llm.start()
        config = make_config(
            self.fake_llm.base_url, rate_limits=UNLIMITED, summarize_after_messages=None
        )
        self.plugin, self._plugin_nc = await start_plugin(self.server.url, config)
        self.client = await nats.connect(self.server.url, max_reconnect_attempts=2)

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    async def _stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.plugin is not None and self._plugin_nc is not None:
            await stop_plugin(self.plugin, self._plugin_nc)
        await self.fake_llm.stop()
        await self.server.stop()

    async def last_seq(self) -> int:
        assert self.client is not None
        info = await self.client.jetstream().stream_info(STREAM_NAME)
        return info.state.last_seq

    async def ask(
        self, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> tuple[int, Any, int]:
        """The log's last sequence before, the decoded answer, the last sequence after."""
        assert self.client is not None
        assume(len(data) <= LARGEST_PAYLOAD)
        before = await self.last_seq()
        reply = await self.client.request(subject, data, timeout=ANSWER_TIMEOUT, headers=headers)
        for value in (reply.headers or {}).values():
            assert "Traceback" not in value, value
            assert 'File "' not in value, value
        text = reply.data.decode()
        assert "Traceback" not in text, text
        assert 'File "' not in text, text
        answer = orjson.loads(reply.data)
        self.cases += 1
        self.accepted += isinstance(answer, dict) and answer.get("success") is True
        # The plugin's end-of-turn appends are confirmed before it answers.
        return before, answer, await self.last_seq()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    live = LiveStack(tmp_path_factory.mktemp("fuzz"))
    live.start()
    try:
        yield live
    finally:
        live.stop()
        print(f"\nfuzz: {live.cases} generated payloads answered, {live.accepted} accepted")


# ---------------------------------------------------------------- strategies

tricky_names = st.text(
    alphabet=st.sampled_from(list("ab.*> \t\r\n\x00$_-:é中🙂\\\"'{}")), min_size=0, max_size=24
)
"""Names with NATS wildcards and separators, line breaks (header injection), NULs."""
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | tricky_names
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)
huge_strings = st.sampled_from([1_000, 20_000, 200_000, 900_000]).map(lambda size: "y" * size)
plausible = st.sampled_from(
    ["lobby", "alice", "hello there", "remember the sky is blue", "concise", "fact", "chat"]
)
field_values = plausible | json_values | huge_strings


def shaped(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """A JSON object with some of the subject's own fields (any values) and maybe extras."""
    return st.builds(
        lambda chosen, extra: orjson.dumps({**extra, **chosen}),
        st.dictionaries(st.sampled_from(fields), field_values, max_size=len(fields))
        if fields
        else st.just({}),
        st.dictionaries(st.text(max_size=10), json_scalars, max_size=2),
    )


_DROP = object()
"""Marks a field `mutated` leaves out."""


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid request with one or two fields replaced (or dropped), or with odd but
    valid-looking names: the path past validation, into the log's subject tokens."""
    keys = sorted(valid) or ["x"]
    replaced = st.builds(
        lambda changes: orjson.dumps(
            {k: v for k, v in {**valid, **changes}.items() if v is not _DROP}
        ),
        st.dictionaries(
            st.sampled_from(keys), field_values | tricky_names | st.just(_DROP), max_size=2
        ),
    )
    return replaced | replaced


def huge_number(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """A field set to a number no 64-bit integer or double holds (written as raw JSON)."""
    return st.builds(
        lambda field, digits, negative: (
            b'{"' + field.encode() + b'":' + (b"-" if negative else b"") + b"9" * digits + b"}"
        ),
        st.sampled_from(fields or ("x",)),
        st.integers(min_value=20, max_value=5_000),
        st.booleans(),
    )


def payloads(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    fields = tuple(valid)
    deep = st.integers(min_value=1, max_value=3_000).map(lambda n: b"[" * n + b"]" * n)
    return (
        st.binary(max_size=200)
        | json_values.map(orjson.dumps)
        | deep
        | huge_number(fields)
        | shaped(fields)
        | mutated(valid)
        | mutated(valid)
    )


request_headers = st.none() | st.dictionaries(
    st.sampled_from(["Nats-Msg-Id", "Llm-Turn-Id", "X-Request", "Nats-Expected-Stream"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
    max_size=3,
)

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_SUBJECT,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_refusal_appended_nothing(before: int, answer: dict[str, Any], after: int) -> None:
    """A refused request (success false) left the log as it was."""
    if answer.get("success") is False:
        assert after == before, f"a refusal appended events: {answer}"


# ---------------------------------------------------------------- tests


@pytest.mark.timeout(600)
@pytest.mark.parametrize("subject", sorted(COMMAND_ARGS))
def test_commands_answer_every_generated_payload(stack: LiveStack, subject: str) -> None:
    """A `!chat` command subject answers each generated payload with `success` and a
    result or an error, and a refused one appends nothing."""
    args = COMMAND_ARGS[subject]
    current, older = {**COMMAND, "args": args}, {**OLDER_COMMAND, "args": args.split()}

    @FUZZ_SETTINGS
    @given(payloads(current) | payloads(older), request_headers)
    def check(data: bytes, headers: dict[str, str] | None) -> None:
        before, answer, after = stack.run(stack.ask(subject, data, headers))
        assert isinstance(answer, dict)
        assert set(answer) in COMMAND_REPLY_KEYS, answer
        assert isinstance(answer["success"], bool)
        if answer["success"] is False:
            assert isinstance(answer["error"], str)
            assert answer["error"].strip()
        check_refusal_appended_nothing(before, answer, after)

    check()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("subject", sorted(SERVICE_SUBJECTS))
def test_service_answers_every_generated_payload_with_the_seed_shape(
    stack: LiveStack, subject: str
) -> None:
    """A `rosey.llm.*` subject answers each generated payload with exactly its seed
    response's fields, and a refused one appends nothing."""
    fields, keys = SERVICE_SUBJECTS[subject]

    @FUZZ_SETTINGS
    @given(payloads(fields), request_headers)
    def check(data: bytes, headers: dict[str, str] | None) -> None:
        before, answer, after = stack.run(stack.ask(subject, data, headers))
        assert isinstance(answer, dict)
        assert set(answer) == keys, answer
        if answer.get("success") is False:
            assert isinstance(answer["error"], str)
            assert answer["error"].strip()
        check_refusal_appended_nothing(before, answer, after)

    check()


@pytest.mark.timeout(600)
def test_legacy_requests_answer_every_generated_payload(stack: LiveStack) -> None:
    """`llm.request` answers each generated payload on its reply subject with a JSON
    object, and a refused one appends nothing."""

    @FUZZ_SETTINGS
    @given(payloads(LEGACY), request_headers)
    def check(data: bytes, headers: dict[str, str] | None) -> None:
        before, answer, after = stack.run(stack.ask("llm.request", data, headers))
        assert isinstance(answer, dict), answer
        if answer.get("success") is False or "error" in answer:
            assert after == before, f"a refusal appended events: {answer}"

    check()


def test_the_plugin_still_serves_after_the_generated_payloads(stack: LiveStack) -> None:
    """After every generated payload (the tests above share this plugin) a plain chat
    turn is still answered by the model."""
    payload = orjson.dumps({"channel": "after", "user": "alice", "args": "still there?"})
    _, answer, _ = stack.run(stack.ask("rosey.command.chat", payload, None))
    assert answer["success"] is True, answer
    assert answer["result"]["message"] == DEFAULT_REPLY
