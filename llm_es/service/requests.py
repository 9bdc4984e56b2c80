"""The request bodies of every NATS surface, as msgspec Structs decoded straight from the bytes.

The seed's request classes (DESIGN.md "Seed schemas") with what llm-es accepts
beyond them, the llm-es-only `memory.forget`, the `!chat` command payload in both
shapes and the deprecated `llm.request`. Each field's type and range is declared
here and checked by msgspec (`decoding.decode_request`); `check` adds what the
runtime config decides. A field that is left out or null is unset: where the seed
has a default (`temperature` 0.7, `limit` 5, ...), the endpoint applies it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from llm_es.config import Config
from llm_es.domain.messages import ChatMessage
from llm_es.errors import ValidationError
from llm_es.service.decoding import (
    Name,
    Payload,
    Text,
    check_name,
    check_text,
    decode_request,
    required,
)
from llm_es.store.log import SUBJECT_PREFIX

MAX_COMPLETION_MESSAGES = 200
MAX_SUMMARIZE_CHARACTERS_FACTOR = 8
"""`summarize` accepts texts up to this many times `max_message_length`."""
LEGACY_ACTIONS = ("chat", "complete", "reset")
SummaryStyle = Literal["concise", "detailed", "bullets"]
"""The styles of `llm_es.domain.summarizer.SUMMARY_STYLES`, as a type msgspec checks."""
NonBlank = Annotated[str, Meta(pattern=r"\S")]
RequestId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"\S")]
"""A caller's id for one request: the same id again (same user) is a retry, not a new one."""

_REPLY_SUBJECT = re.compile(r"[^\s*>.]+(\.[^\s*>.]+)*")

# ---------------------------------------------------------------- rosey.llm.*


class ChatRequest(Payload, frozen=True):
    """`rosey.llm.chat`: the seed's ChatRequest, plus `provider` and `stream`."""

    channel: Name
    user: Name
    message: Text
    persona: str | None = None
    provider: str | None = None
    stream: bool | None = None
    request_id: RequestId | None = None

    def check(self, config: Config) -> None:
        super().check(config)
        if self.persona is not None and self.persona not in config.personas:
            known = ", ".join(config.personas)
            raise ValidationError(f"Field 'persona' must be one of: {known}", "persona")


class CompletionRequest(Payload, frozen=True):
    """`rosey.llm.complete`: the seed's CompletionRequest, plus `user` (whom to book it to)."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_COMPLETION_MESSAGES)]
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    provider: str | None = None
    user: Name | None = None
    request_id: RequestId | None = None

    def check(self, config: Config) -> None:
        super().check(config)
        for index, message in enumerate(self.messages):
            check_text(f"messages[{index}].content", message["content"], config, blank=True)


class SummarizeRequest(Payload, frozen=True):
    """`rosey.llm.summarize`: the seed's SummarizeRequest (`max_length` in words), plus `user`."""

    text: NonBlank
    max_length: Annotated[int, Meta(ge=10, le=4000)] | None = None
    style: SummaryStyle | None = None
    user: Name | None = None
    request_id: RequestId | None = None

    def check(self, config: Config) -> None:
        super().check(config)
        most = config.service.max_message_length * MAX_SUMMARIZE_CHARACTERS_FACTOR
        if len(self.text) > most:
            raise ValidationError(
                f"Field 'text' is too long: {len(self.text)} characters (limit {most})", "text"
            )


class MemoryAddRequest(Payload, frozen=True):
    """`rosey.llm.memory.add`: the seed's MemoryAddRequest."""

    channel: Name
    content: Text
    category: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"\S")] | None = None
    user_id: Name | None = None
    importance: Annotated[int, Meta(ge=1, le=5)] | None = None
    request_id: RequestId | None = None


class MemoryRecallRequest(Payload, frozen=True):
    """`rosey.llm.memory.recall`: the seed's MemoryRecallRequest."""

    channel: Name
    query: Text
    user_id: Name | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] | None = None


class MemoryForgetRequest(Payload, frozen=True):
    """`rosey.llm.memory.forget` (llm-es only); the domain says whether the id is valid."""

    channel: Name
    memory_id: NonBlank
    user_id: Name | None = None


class PersonaGetRequest(Payload, frozen=True):
    """`rosey.llm.persona.get`."""

    channel: Name


class PersonaSetRequest(Payload, frozen=True):
    """`rosey.llm.persona.set`; an unknown persona is the domain's answer, not a bad request."""

    channel: Name
    persona: Name


class UsageRequest(Payload, frozen=True):
    """`rosey.llm.usage`; no `user`: everyone's totals."""

    user: Name | None = None


# ---------------------------------------------------------------- !chat and llm.request


class ChatCommandPayload(Payload, frozen=True):
    """`rosey.command.chat*` in either shape (DESIGN.md), each taking either form of `args`:

    current `{"channel", "user", "args": str, "reply_to"?}`;
    older   `{"command", "args": [str, ...], "channel_id", "username"}` (`command` unread).
    """

    channel: str | None = None
    user: str | None = None
    args: str | list[str] | None = None
    reply_to: str | None = None
    channel_id: str | None = None
    username: str | None = None
    request_id: RequestId | None = None


# A Struct, not a frozen dataclass: that one cost 0.6 us to build, a quarter of the parse.
class CommandRequest(msgspec.Struct, frozen=True):
    """A `!chat` command relayed by the bot, in the one shape the surface reads."""

    channel: str
    user: str
    args: str
    reply_to: str | None
    request_id: str | None = None


def parse_command(data: bytes, config: Config) -> CommandRequest:
    """A command payload of either shape; the older one is told by its `channel_id`/`username`."""
    payload = decode_request(data, ChatCommandPayload, config)
    if payload.channel_id is not None or payload.username is not None:
        channel = required("channel_id", payload.channel_id)
        user = required("username", payload.username)
        check_name("channel_id", channel, config)
        check_name("username", user, config)
    else:
        channel, user = required("channel", payload.channel), required("user", payload.user)
        check_name("channel", channel, config)
        check_name("user", user, config)
    args = payload.args if isinstance(payload.args, str) else " ".join(payload.args or ())
    check_text("args", args, config, blank=True)
    reply_to = payload.reply_to
    if reply_to is not None:
        check_reply_subject("reply_to", reply_to, config)
    return CommandRequest(channel, user, args, reply_to, payload.request_id)


class LegacyRequest(Payload, frozen=True):
    """`llm.request`: `chat` needs `channel_id` and `message`, `complete` needs `message`,
    `reset` needs `channel_id`; `username` is optional."""

    action: Any = None
    """Any JSON, so a wrong one is answered in the seed's words ("Unknown action: 7")."""
    channel_id: str | None = None
    message: str | None = None
    username: str | None = None

    def check(self, config: Config) -> None:
        expected = ", ".join(LEGACY_ACTIONS)
        if self.action is None:
            raise ValidationError(f"Missing field 'action' (one of {expected})", "action")
        if self.action not in LEGACY_ACTIONS:
            raise ValidationError(
                f"Unknown action: {self.action!r} (expected one of {expected})", "action"
            )
        if self.action != "complete" or self.channel_id:
            check_name("channel_id", required("channel_id", self.channel_id), config)
        if self.username is not None:
            check_name("username", self.username, config)
        if self.action != "reset":
            check_text("message", required("message", self.message), config)


# ---------------------------------------------------------------- reply subjects

MAX_REPLY_SUBJECT_CHARS = 1024
"""Longest `reply_to` used: a longer one could pass the server's control-line limit."""
INBOX_PREFIX = "_INBOX"
"""Reply subjects under `_INBOX.>` (every NATS client's default inbox) are always accepted."""
_SHOWN_SUBJECT_CHARACTERS = 100


def is_safe_reply_subject(subject: str, config: Config) -> bool:
    """Whether the plugin may publish an answer to `subject`, which the caller chose.

    Only inboxes (`_INBOX.>`) and subjects under one of `service.reply_prefixes`:
    anything else would let a caller make the plugin publish on its say-so, on
    a subject others trust (`rosey.event.llm.*`, a fake observability event).
    Wildcards and blanks are not subjects, and the event log's own subjects are
    refused even under a configured prefix: an answer there would be taken as
    an event. Subjects over 1024 characters are refused too: with the
    answer's headers they could pass the server's control-line limit.
    """
    if len(subject) > MAX_REPLY_SUBJECT_CHARS or not _REPLY_SUBJECT.fullmatch(subject):
        return False
    if subject == SUBJECT_PREFIX or subject.startswith(f"{SUBJECT_PREFIX}."):
        return False
    return any(
        subject.startswith(f"{prefix}.")
        for prefix in (INBOX_PREFIX, *config.service.reply_prefixes)
    )


def check_reply_subject(field: str, subject: str, config: Config) -> str:
    """`subject` if the plugin may answer there (`is_safe_reply_subject`), else ValidationError."""
    if is_safe_reply_subject(subject, config):
        return subject
    shown = subject if len(subject) <= _SHOWN_SUBJECT_CHARACTERS else subject[:97] + "..."
    allowed = ", ".join(f"{prefix}.>" for prefix in (INBOX_PREFIX, *config.service.reply_prefixes))
    raise ValidationError(
        f"Field '{field}' names a subject answers may not go to: {shown!r}"
        f" (allowed: {allowed}; more in config service.reply_prefixes)",
        field,
    )


def allowed_reply_subject(value: object, config: Config) -> str | None:
    """`value` as a usable `reply_to`, or None (not a string, or not allowed)."""
    if isinstance(value, str) and is_safe_reply_subject(value, config):
        return value
    return None
