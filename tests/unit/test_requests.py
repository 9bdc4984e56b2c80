"""Tests of llm_es.service.requests and .decoding: request bytes become typed Structs, or one
ValidationError whose text names the field, says what it takes and never repeats a value."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import orjson
import pytest

from llm_es.config import Config
from llm_es.domain.summarizer import SUMMARY_STYLES
from llm_es.errors import ValidationError
from llm_es.service.decoding import Payload, decode_request, loose_object
from llm_es.service.requests import (
    ChatRequest,
    CommandRequest,
    CompletionRequest,
    LegacyRequest,
    MemoryAddRequest,
    MemoryForgetRequest,
    MemoryRecallRequest,
    PersonaGetRequest,
    PersonaSetRequest,
    SummarizeRequest,
    SummaryStyle,
    UsageRequest,
    is_safe_reply_subject,
    parse_command,
)

CONFIG = Config()
SMALL = dataclasses.replace(
    CONFIG,
    service=dataclasses.replace(CONFIG.service, max_name_length=5, max_message_length=10),
)
SECRET = "sk-live-0123456789abcdef"
WHO = {"channel": "c", "user": "u"}


def refusal(kind: type[Payload], body: Any, config: Config = CONFIG) -> ValidationError:
    """The ValidationError decoding `body` (JSON-encoded unless bytes) as `kind` raises."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(ValidationError) as caught:
        decode_request(data, kind, config)
    return caught.value


# Each seed request class as `asdict(...)` sends it: every optional field present as null.
ALL_NULLS: list[tuple[type[Payload], dict[str, Any]]] = [
    (ChatRequest, {"channel": "c", "user": "u", "message": "m", "persona": None}),
    (
        CompletionRequest,
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": None,
            "max_tokens": None,
            "provider": None,
        },
    ),
    (SummarizeRequest, {"text": "t", "max_length": None, "style": None}),
    (
        MemoryAddRequest,
        {"channel": "c", "content": "x", "category": None, "user_id": None, "importance": None},
    ),
    (MemoryRecallRequest, {"channel": "c", "query": "x", "user_id": None, "limit": None}),
    (MemoryForgetRequest, {"channel": "c", "memory_id": "deadbeef", "user_id": None}),
    (PersonaGetRequest, {"channel": "c"}),
    (PersonaSetRequest, {"channel": "c", "persona": "concise"}),
    (UsageRequest, {"user": None}),
]


@pytest.mark.parametrize(("kind", "body"), ALL_NULLS, ids=[k.__name__ for k, _ in ALL_NULLS])
def test_null_optionals_and_unknown_fields_are_accepted(
    kind: type[Payload], body: dict[str, Any]
) -> None:
    """Every optional field may be null (unset), and fields the class lacks are ignored."""
    decoded = decode_request(orjson.dumps({**body, "sent_by": "another-plugin"}), kind, CONFIG)
    assert isinstance(decoded, kind)
    for name, value in body.items():
        if value is None:
            assert getattr(decoded, name) is None


def test_a_chat_request_decodes_to_its_fields() -> None:
    """ChatRequest keeps the seed's fields and the extras llm-es accepts."""
    data = b'{"channel":"lobby","user":"alice","message":"hi","provider":"openai","stream":true}'
    assert decode_request(data, ChatRequest, CONFIG) == ChatRequest(
        channel="lobby", user="alice", message="hi", provider="openai", stream=True
    )


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"{not json", "Invalid JSON: JSON is malformed: object keys must be strings (byte 1)"),
        (b"", "Invalid JSON: Input data was truncated"),
        (b"[" * 5000 + b"]" * 5000, "Invalid JSON: nested too deeply"),
        # A wrong field before a syntax error: the body is still answered as malformed.
        (b'{"channel": 7, "user": "u", ', "Invalid JSON: Input data was truncated"),
        (b"[1, 2]", "Payload must be a JSON object, got an array"),
        (b"null", "Payload must be a JSON object, got null"),
        ({"user": "u", "message": "m"}, "Missing field 'channel'"),
        ({"channel": None, "user": "u", "message": "m"}, "Missing field 'channel'"),
        (
            {"channel": "c", "user": 5, "message": "m"},
            "Field 'user' must be a string, got a number",
        ),
        (
            {"channel": "c", "user": [], "message": "m"},
            "Field 'user' must be a string, got an array",
        ),
        ({"channel": " ", "user": "u", "message": "m"}, "Field 'channel' must not be empty"),
        ({"channel": "c", "user": "u", "message": "\t"}, "Field 'message' must not be empty"),
        (
            {"channel": "c", "user": "u", "message": "m", "stream": "yes"},
            "Field 'stream' must be true or false, got a string",
        ),
        (
            {"channel": "c", "user": "u", "message": "m", "persona": "pirate"},
            "Field 'persona' must be one of: default, concise, technical, creative",
        ),
    ],
)
def test_chat_request_refusals(body: Any, text: str) -> None:
    """Bad chat requests are refused with the texts the surfaces have always answered."""
    assert str(refusal(ChatRequest, body)) == text


def test_limits_come_from_the_runtime_config() -> None:
    """Names over `max_name_length` and messages over `max_message_length` are refused."""
    long_name = {"channel": "c" * 6, "user": "u", "message": "m"}
    assert str(refusal(ChatRequest, long_name, SMALL)) == (
        "Field 'channel' is too long: 6 characters (limit 5)"
    )
    long_text = {"channel": "c", "user": "u", "message": "m" * 11}
    assert (
        str(refusal(ChatRequest, long_text, SMALL)) == "Message too long: 11 characters (limit 10)"
    )
    at_limits = {"channel": "c" * 5, "user": "u", "message": "m" * 10}
    assert decode_request(orjson.dumps(at_limits), ChatRequest, SMALL).message == "m" * 10
    optional = {"channel": "c", "query": "q", "user_id": "u" * 6}
    assert refusal(MemoryRecallRequest, optional, SMALL).field == "user_id"


@pytest.mark.parametrize(
    ("kind", "body", "text"),
    [
        (
            CompletionRequest,
            {"messages": []},
            "Field 'messages' must be a list of 1 to 200 objects {role, content}",
        ),
        (
            CompletionRequest,
            {"messages": [{"role": "robot", "content": "x"}]},
            "Field 'messages[0].role' must be one of: assistant, system, user",
        ),
        (
            CompletionRequest,
            {"messages": [{"role": "user"}]},
            "Missing field 'messages[0].content'",
        ),
        (
            CompletionRequest,
            {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "Field 'temperature' must be a number between 0 and 2",
        ),
        (
            CompletionRequest,
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5},
            "Field 'max_tokens' must be an integer between 1 and 1000000, got a number",
        ),
        (SummarizeRequest, {"text": " "}, "Field 'text' must be a non-empty string"),
        (
            SummarizeRequest,
            {"text": "t", "style": "poem"},
            "Field 'style' must be one of: bullets, concise, detailed",
        ),
        (
            MemoryAddRequest,
            {"channel": "c", "content": "x", "importance": True},
            "Field 'importance' must be an integer between 1 and 5, got a boolean",
        ),
        (
            MemoryAddRequest,
            {"channel": "c", "content": "x", "category": "y" * 65},
            "Field 'category' must be a non-empty string of at most 64 characters",
        ),
        (MemoryForgetRequest, {"channel": "c"}, "Missing field 'memory_id'"),
        (PersonaGetRequest, {}, "Missing field 'channel'"),
        (UsageRequest, {"user": 5}, "Field 'user' must be a string, got a number"),
    ],
)
def test_service_request_refusals(kind: type[Payload], body: Any, text: str) -> None:
    """Each refusal names the field (nested ones by path) and says what it takes."""
    assert str(refusal(kind, body)) == text


def test_values_are_never_repeated() -> None:
    """A refused value appears in no error text: only its kind does (it may be a secret)."""
    cases: list[tuple[type[Payload], dict[str, Any]]] = [
        (SummarizeRequest, {"text": "t", "style": SECRET}),
        (CompletionRequest, {"messages": [{"role": SECRET, "content": "x"}]}),
        (ChatRequest, {**WHO, "message": "m", "persona": SECRET}),
        (ChatRequest, {**WHO, "message": SECRET}),  # too long for SMALL
        (MemoryAddRequest, {"channel": "c", "content": "x", "importance": SECRET}),
    ]
    for kind, body in cases:
        assert SECRET not in str(refusal(kind, body, SMALL))


def test_summary_styles_are_the_summarizers() -> None:
    """The type msgspec checks `style` against lists exactly the summarizer's styles."""
    assert get_args(SummaryStyle) == SUMMARY_STYLES


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"channel": "lobby", "user": "alice", "args": "hi", "reply_to": "_INBOX.a"},
            CommandRequest("lobby", "alice", "hi", "_INBOX.a"),
        ),
        (
            {"command": "chat", "args": ["hi", "there"], "channel_id": "lobby", "username": "al"},
            CommandRequest("lobby", "al", "hi there", None),
        ),
        ({"channel": "c", "user": "u"}, CommandRequest("c", "u", "", None)),
    ],
)
def test_commands_in_either_shape(body: dict[str, Any], expected: CommandRequest) -> None:
    """Both payload shapes give one CommandRequest."""
    assert parse_command(orjson.dumps(body), CONFIG) == expected


REPLY_PREFIXED = dataclasses.replace(
    CONFIG, service=dataclasses.replace(CONFIG.service, reply_prefixes=("rosey.reply",))
)


@pytest.mark.parametrize(
    ("subject", "config", "allowed"),
    [
        ("_INBOX.abc.1", CONFIG, True),
        ("_INBOX", CONFIG, False),
        ("rosey.event.llm.usage_threshold", CONFIG, False),
        ("bot.replies", CONFIG, False),
        ("rosey.reply.lobby", CONFIG, False),
        ("rosey.reply.lobby", REPLY_PREFIXED, True),
        ("rosey.reply", REPLY_PREFIXED, False),
        ("rosey.replyx.lobby", REPLY_PREFIXED, False),
        ("_INBOX.*", CONFIG, False),
        ("_INBOX.>", CONFIG, False),
        ("_INBOX.a b", CONFIG, False),
        ("$JS.API.STREAM.DELETE.LLM_EVENTS", CONFIG, False),
    ],
)
def test_reply_subjects_are_inboxes_or_under_a_configured_prefix(
    subject: str, config: Config, allowed: bool
) -> None:
    """Only `_INBOX.>` and `service.reply_prefixes` (whole tokens) may receive an answer."""
    assert is_safe_reply_subject(subject, config) is allowed


def test_the_log_is_refused_even_under_a_configured_prefix() -> None:
    """A prefix of `llm` still never lets an answer land in the event log `llm.ev.>`."""
    config = dataclasses.replace(
        CONFIG, service=dataclasses.replace(CONFIG.service, reply_prefixes=("llm",))
    )
    assert is_safe_reply_subject("llm.answers.x", config)
    assert not is_safe_reply_subject("llm.ev.c.u.TurnAdmitted", config)


def test_a_command_with_a_refused_reply_to_is_a_validation_error() -> None:
    """`reply_to` aimed at an event subject refuses the whole command, naming the rule."""
    body = {**WHO, "args": "hi", "reply_to": "rosey.event.llm.usage_threshold"}
    with pytest.raises(ValidationError) as caught:
        parse_command(orjson.dumps(body), CONFIG)
    assert str(caught.value) == (
        "Field 'reply_to' names a subject answers may not go to:"
        " 'rosey.event.llm.usage_threshold' (allowed: _INBOX.>; more in config"
        " service.reply_prefixes)"
    )
    assert caught.value.field == "reply_to"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({**WHO, "args": 12}, "Field 'args' must be a string or a list of strings, got a number"),
        ({**WHO, "args": ["hi", 2]}, "Field 'args' must be a string or a list of strings"),
        ({"command": "chat", "args": [], "channel_id": "c"}, "Missing field 'username'"),
        ({**WHO, "args": "x" * 8001}, "Message too long: 8001 characters (limit 8000)"),
    ],
)
def test_command_refusals(body: dict[str, Any], text: str) -> None:
    """A union (`args`) is named whole, whatever part of it was wrong."""
    with pytest.raises(ValidationError) as caught:
        parse_command(orjson.dumps(body), CONFIG)
    assert str(caught.value) == text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"channel_id": "c"}, "Missing field 'action' (one of chat, complete, reset)"),
        ({"action": 7}, "Unknown action: 7 (expected one of chat, complete, reset)"),
        ({"action": "reset"}, "Missing field 'channel_id'"),
        ({"action": "complete"}, "Missing field 'message'"),
        (
            {"action": "chat", "channel_id": "c", "message": " "},
            "Field 'message' must not be empty",
        ),
    ],
)
def test_legacy_refusals(body: dict[str, Any], text: str) -> None:
    """`llm.request` needs what its action needs, in the seed's words."""
    assert str(refusal(LegacyRequest, body)) == text


def test_legacy_complete_needs_no_channel() -> None:
    """A completion takes no channel: an empty `channel_id` is no error there."""
    data = orjson.dumps({"action": "complete", "channel_id": "", "message": "haiku"})
    assert decode_request(data, LegacyRequest, CONFIG).message == "haiku"


def test_loose_object_reads_what_it_can() -> None:
    """An error answer echoes from the untyped object; anything else reads as empty."""
    assert loose_object(b'{"action": 7}') == {"action": 7}
    assert loose_object(b"[1]") == {}
    assert loose_object(b"{nope") == {}
