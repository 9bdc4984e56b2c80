"""Bad and odd input on the command subjects: clear errors, nothing appended, handlers alive."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnAdmitted
from llm_es.domain.tokens import decode_name
from llm_es.domain.views import BUCKET, context_key, usage_key
from llm_es.store.log import STREAM_NAME, SUBJECT_PREFIX
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import DEFAULT_REPLY, FakeLLMServer
from tests.support.harness import (
    REQUEST_TIMEOUT,
    command,
    event_types,
    log_events,
    raw_request,
    stored_view,
    wait_persisted,
)

SUBJECT = "rosey.command.chat"
UNLIMITED = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)
LONG_NAME = "n" * 129  # default max_name_length is 128


async def log_subjects(client: NATS) -> list[str]:
    """The subject of every event in the log, in order, up to the last sequence now."""
    js = client.jetstream()
    last = (await js.stream_info(STREAM_NAME)).state.last_seq
    subjects: list[str] = []
    if last == 0:
        return subjects
    sub = await js.subscribe(f"{SUBJECT_PREFIX}.>", stream=STREAM_NAME, ordered_consumer=True)
    try:
        for _ in range(last):
            msg = await sub.next_msg(timeout=REQUEST_TIMEOUT)
            subjects.append(msg.subject)
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return subjects


def good(**fields: Any) -> dict[str, Any]:
    """A valid current-shape payload with `fields` replaced (None values are dropped)."""
    payload: dict[str, Any] = {"channel": "lobby", "user": "alice", "args": "hello"}
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not None}


def without(field: str) -> dict[str, Any]:
    payload = good()
    del payload[field]
    return payload


def older(**fields: Any) -> dict[str, Any]:
    """A valid older-shape payload with `fields` replaced (None values are dropped)."""
    payload: dict[str, Any] = {
        "command": "chat",
        "args": ["hello", "there"],
        "channel_id": "lobby",
        "username": "alice",
    }
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not None}


# (id, subject suffix, payload, fragment the error must contain)
BAD_INPUT: list[tuple[str, str, bytes | dict[str, Any], str]] = [
    ("invalid json", "", b'{"channel": "lobby",', "Invalid JSON"),
    ("empty payload", "", b"", "Invalid JSON"),
    ("not utf-8", "", b'{"channel": "\xff\xfe", "user": "a", "args": "hi"}', "Invalid JSON"),
    ("lone surrogate", "", b'{"channel": "\\ud800", "user": "a", "args": "hi"}', "Invalid JSON"),
    ("deep nesting", "", b"[" * 5000 + b"]" * 5000, "Invalid JSON"),
    ("json list", "", b'["lobby", "alice", "hello"]', "must be a JSON object, got an array"),
    ("json string", "", b'"hello"', "must be a JSON object, got a string"),
    ("json number", "", b"42", "must be a JSON object, got a number"),
    ("json null", "", b"null", "must be a JSON object, got null"),
    ("json bool", "", b"true", "must be a JSON object, got a boolean"),
    ("missing channel", "", without("channel"), "Missing field 'channel'"),
    ("missing user", "", without("user"), "Missing field 'user'"),
    ("channel number", "", good(channel=7), "'channel' must be a string, got a number"),
    ("channel list", "", good(channel=["lobby"]), "'channel' must be a string, got an array"),
    ("channel object", "", good(channel={"id": 1}), "'channel' must be a string, got an object"),
    ("channel bool", "", good(channel=True), "'channel' must be a string, got a boolean"),
    ("channel null", "", {**good(), "channel": None}, "'channel'"),
    ("user number", "", good(user=3.5), "'user' must be a string, got a number"),
    ("user list", "", good(user=[]), "'user' must be a string, got an array"),
    ("user bool", "", good(user=False), "'user' must be a string, got a boolean"),
    ("user null", "", {**good(), "user": None}, "'user'"),
    ("empty channel", "", good(channel=""), "'channel' must not be empty"),
    ("blank channel", "", good(channel="  \t"), "'channel' must not be empty"),
    ("empty user", "", good(user=""), "'user' must not be empty"),
    ("long channel", "", good(channel=LONG_NAME), "'channel' is too long"),
    ("long user", "", good(user=LONG_NAME), "'user' is too long"),
    ("args number", "", good(args=12), "'args' must be a string or a list of strings"),
    ("args object", "", good(args={"text": "hi"}), "'args' must be a string or a list"),
    ("args bool", "", good(args=True), "'args' must be a string or a list of strings"),
    ("args list of numbers", "", good(args=["hi", 2]), "'args' must be a string or a list"),
    ("args nested list", "", good(args=[["hi"]]), "'args' must be a string or a list"),
    ("unknown persona", "", good(args="persona pirate"), "Unknown persona 'pirate'"),
    ("older missing username", "", older(username=None), "Missing field 'username'"),
    ("older channel_id number", "", older(channel_id=5), "'channel_id' must be a string"),
    ("older args numbers", "", older(args=[1, 2]), "'args' must be a string or a list"),
    ("remember invalid json", ".remember", b"{nope", "Invalid JSON"),
    ("remember missing user", ".remember", without("user"), "Missing field 'user'"),
    ("recall args object", ".recall", good(args={}), "'args' must be a string or a list"),
    ("forget bad id", ".forget", good(args="zzz"), "Invalid memory ID: 'zzz'"),
    ("forget channel list", ".forget", good(channel=[1], args="deadbeef"), "'channel'"),
]


def encoded(payload: bytes | dict[str, Any]) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


async def assert_still_serving(
    client: NATS, *, channel: str = "after", user: str = "alice"
) -> None:
    """A valid help command and a chat turn both still get answers."""
    helped = await command(client, "help", channel=channel, user=user)
    assert helped["success"] is True
    assert "!chat remember <fact>" in helped["result"]["message"]
    chatted = await command(client, "are you still there?", channel=channel, user=user)
    assert chatted["success"] is True, chatted
    assert chatted["result"]["message"] == DEFAULT_REPLY


@pytest.mark.parametrize(
    ("suffix", "payload", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
async def test_bad_command_is_refused_and_appends_nothing(
    start: PluginStarter,
    client: NATS,
    suffix: str,
    payload: bytes | dict[str, Any],
    fragment: str,
) -> None:
    """Malformed payloads get {"success": false, "error": <names the field>}; log untouched."""
    await start(rate_limits=UNLIMITED)
    await command(client, "warm up the log", channel="before")
    before = await event_types(client)
    answer = await raw_request(client, SUBJECT + suffix, encoded(payload))
    assert set(answer) == {"success", "error"}, answer
    assert answer["success"] is False
    assert isinstance(answer["error"], str)
    assert fragment in answer["error"], answer
    assert await event_types(client) == before
    await assert_still_serving(client)


async def test_message_length_limit(start: PluginStarter, client: NATS) -> None:
    """Text over `max_message_length` is refused on every subject and shape; at it, accepted."""
    await start(rate_limits=UNLIMITED, max_message_length=50)
    over = "x" * 51
    cases = [
        (SUBJECT, good(args=over)),
        (SUBJECT, good(args=f"remember {'y' * 45}")),
        (f"{SUBJECT}.remember", good(args=over)),
        (f"{SUBJECT}.recall", good(args=over)),
        (SUBJECT, older(args=["x" * 30, "x" * 30])),
    ]
    for subject, payload in cases:
        answer = await raw_request(client, subject, orjson.dumps(payload))
        assert answer["success"] is False, (subject, payload)
        assert "too long" in answer["error"]
        assert "limit 50" in answer["error"]
    assert await event_types(client) == []
    at_limit = await command(client, "z" * 50)
    assert at_limit["success"] is True, at_limit
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [e.message for e in admitted] == ["z" * 50]


async def test_default_message_limit_is_8000(plugin: Plugin, client: NATS) -> None:
    """With the default config a message of 8001 characters is refused, 8000 accepted."""
    refused = await command(client, "a" * 8001)
    assert refused["success"] is False
    assert "limit 8000" in refused["error"]
    accepted = await command(client, "a" * 8000)
    assert accepted["success"] is True


ODD_NAMES: list[tuple[str, str]] = [
    # (channel, user)
    ("a.b", "u.v"),
    ("a", "u"),
    ("with space", "first last"),
    ("*", "*"),
    (">", ">"),
    ("=", "="),
    ("_", "_"),
    ("=5F", "=5F"),  # what `_` encodes to: must stay a different name
    ("a.*.>", "x.>"),
    ("日本語", "ユーザー"),
    ("🎉 party", "🙂"),
    ("tab\tand\nnewline", "quote\"'back\\slash"),
    ("c" * 128, "u" * 128),
    ("🎉" * 128, "🙂" * 128),  # longest allowed name with the longest encoding
]


async def test_odd_names_chat_with_isolated_context(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Odd channel/user names chat normally; each channel sees only its own history."""
    await start(rate_limits=UNLIMITED)
    for n, (channel, user) in enumerate(ODD_NAMES):
        answer = await command(client, f"first message {n}", channel=channel, user=user)
        assert answer["success"] is True, (channel, user, answer)
    for n, (channel, user) in enumerate(ODD_NAMES):
        answer = await command(client, f"second message {n}", channel=channel, user=user)
        assert answer["success"] is True, (channel, user, answer)
        sent = fake_llm.chat_requests[-1].body
        assert sent is not None
        assert [m["content"] for m in sent["messages"][1:]] == [
            f"{user}: first message {n}",
            DEFAULT_REPLY,
            f"{user}: second message {n}",
        ], (channel, user)


async def test_odd_names_round_trip_through_subjects_and_keys(
    start: PluginStarter, client: NATS
) -> None:
    """Every log subject and view key decodes back to the exact channel and user names."""
    await start(rate_limits=UNLIMITED)
    for channel, user in ODD_NAMES:
        assert (await command(client, "hi", channel=channel, user=user))["success"] is True
        remembered = await command(client, "remember odd names work", channel=channel, user=user)
        assert remembered["success"] is True
    pairs: set[tuple[str | None, str | None]] = set()
    events = [event for _, event in await log_events(client)]
    subjects = await log_subjects(client)
    assert len(subjects) == len(events)
    for subject, event in zip(subjects, events, strict=True):
        prefix, ev, channel_token, user_token, type_name = subject.split(".")
        assert (prefix, ev, type_name) == ("llm", "ev", event.TYPE)
        decoded = (decode_name(channel_token), decode_name(user_token))
        assert decoded == (event.channel_name, event.user_name)
        pairs.add(decoded)
    assert pairs == set(ODD_NAMES)
    await wait_persisted(client)  # the views reach KV in batches, after the replies
    kv_state = await client.jetstream().stream_info(
        f"KV_{BUCKET}", subjects_filter=f"$KV.{BUCKET}.messages.>"
    )
    context_keys = [subject.split(".", 2)[2] for subject in kv_state.state.subjects or {}]
    assert {decode_name(key.split(".")[1]) for key in context_keys} == {
        channel for channel, _ in ODD_NAMES
    }
    for channel, _ in ODD_NAMES:
        view = await stored_view(client, context_key(channel))
        assert view is not None
        assert view["channel"] == channel


async def test_wildcard_channel_recalls_only_its_own(start: PluginStarter, client: NATS) -> None:
    """Channels `*` and `>` are names like any other: no memories of other channels leak in."""
    await start(rate_limits=UNLIMITED)
    await command(client, "remember the lobby secret is pineapple", channel="lobby")
    await command(client, "remember the a.b secret is mango", channel="a.b")
    for channel in ("*", ">", "a", "a.*"):
        answer = await command(client, "recall secret", channel=channel)
        assert answer["result"]["message"] == "No memories found for: secret", channel
    own = await command(client, "recall secret", channel="a.b")
    assert "mango" in own["result"]["message"]
    assert "pineapple" not in own["result"]["message"]


async def test_older_payload_shape(plugin: Plugin, client: NATS, fake_llm: FakeLLMServer) -> None:
    """`{"command","args":[...],"channel_id","username"}` works: args join with spaces."""
    answer = await raw_request(client, SUBJECT, orjson.dumps(older()))
    assert answer["success"] is True, answer
    assert answer["result"]["message"] == DEFAULT_REPLY
    sent = fake_llm.chat_requests[-1].body
    assert sent is not None
    assert sent["messages"][-1]["content"] == "alice: hello there"
    remembered = await raw_request(
        client, SUBJECT, orjson.dumps(older(args=["remember", "the", "sky", "is", "blue"]))
    )
    assert remembered["result"]["message"].startswith("Remembered: the sky is blue (ID: ")
    helped = await raw_request(client, SUBJECT, orjson.dumps(older(args=[])))
    assert "!chat remember <fact>" in helped["result"]["message"]
    admitted = [e for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert [(e.channel, e.user, e.message) for e in admitted] == [("lobby", "alice", "hello there")]


async def published_answer(client: NATS, payload: dict[str, Any], subject: str = SUBJECT) -> Any:
    """Publish (no NATS reply subject) with `reply_to` set to a fresh inbox; return the answer."""
    inbox = client.new_inbox()
    sub = await client.subscribe(inbox)
    try:
        await client.publish(subject, orjson.dumps({**payload, "reply_to": inbox}))
        msg = await sub.next_msg(timeout=REQUEST_TIMEOUT)
        return orjson.loads(msg.data)
    finally:
        await sub.unsubscribe()


async def test_reply_to_without_reply_subject(plugin: Plugin, client: NATS) -> None:
    """Without a NATS reply subject, answers and errors go to the payload's `reply_to`."""
    answer = await published_answer(client, good(args="hello"))
    assert answer["success"] is True
    assert answer["result"]["message"] == DEFAULT_REPLY
    remembered = await published_answer(
        client, good(args="keys are under the mat"), subject=f"{SUBJECT}.remember"
    )
    assert remembered["result"]["message"].startswith("Remembered: keys are under the mat")
    before = await event_types(client)
    refused = await published_answer(client, good(channel=42))
    assert refused == {
        "success": False,
        "error": "Field 'channel' must be a string, got a number",
    }
    assert await event_types(client) == before


@pytest.mark.parametrize(
    "target",
    [
        "llm.ev.lobby.alice.TurnAdmitted",
        "llm.ev",
        "$KV.llm_data.usage.alice",
        "$JS.API.STREAM.DELETE.LLM_EVENTS",
        "bad.*.wildcard",
        "with space",
    ],
)
async def test_unsafe_reply_subjects_are_never_published_to(
    plugin: Plugin, client: NATS, target: str
) -> None:
    """A `reply_to` or NATS reply subject aimed at the log or a `$` API gets no answer there.

    Otherwise any payload could append to the event log (and lock its user out
    of admission) or overwrite views. The answer is dropped; the plugin goes on.
    """
    await command(client, "hello")  # alice has a usage view worth protecting
    before = await event_types(client)
    protected = [usage_key("alice"), context_key("lobby")]
    views_before = [await stored_view(client, key) for key in protected]
    assert None not in views_before
    seen = await client.subscribe("llm.ev.>")
    api = await client.subscribe("$KV.>")
    try:
        payload = good(args="help", reply_to=target)
        await client.publish(SUBJECT, orjson.dumps(payload))
        if " " not in target and "*" not in target:
            await client.publish(SUBJECT, orjson.dumps(good(args="help")), reply=target)
        # Answers leave the plugin in order on one connection: once this one is
        # back, any answer to the two above would already have been delivered.
        assert (await command(client, "help"))["success"] is True
        await client.flush()
        assert seen.pending_msgs == 0
        assert api.pending_msgs == 0
    finally:
        await seen.unsubscribe()
        await api.unsubscribe()
    assert await event_types(client) == before
    assert [await stored_view(client, key) for key in protected] == views_before
    again = await command(client, "still allowed to chat?")
    assert again["success"] is True, again


async def test_flood_of_bad_requests_then_a_good_one(start: PluginStarter, client: NATS) -> None:
    """Fifty concurrent bad requests are each answered with an error; then a good one works."""
    await start(rate_limits=UNLIMITED)
    payloads = [encoded(case[2]) for case in BAD_INPUT if case[1] == ""]
    floods = [payloads[n % len(payloads)] for n in range(50)]
    answers = await asyncio.gather(*(raw_request(client, SUBJECT, data) for data in floods))
    assert len(answers) == 50
    for answer in answers:
        assert answer["success"] is False
        assert answer["error"]
    # `persona pirate` is in the mix: refused, and like the rest it appends nothing.
    assert await event_types(client) == []
    await assert_still_serving(client)
