"""Validation of JSON payloads from NATS into typed requests (wire dicts stop here).

Every error is a ValidationError whose text names the field and is safe to
send back as `{"success": false, "error": ...}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from llm_es.config import ServiceConfig
from llm_es.errors import ValidationError
from llm_es.store.log import SUBJECT_PREFIX

_REPLY_SUBJECT = re.compile(r"[^\s*>.]+(\.[^\s*>.]+)*")


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A `!chat` command relayed by the bot."""

    channel: str
    user: str
    args: str
    reply_to: str | None


def decode_object(data: bytes) -> dict[str, Any]:
    """The payload as a JSON object, or a ValidationError saying why not."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"Invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError(f"Payload must be a JSON object, got {_json_kind(body)}")
    return body


def is_safe_reply_subject(subject: str) -> bool:
    """Whether the plugin may publish an answer to `subject`.

    Wildcards and blanks are not subjects. `$...` subjects are the JetStream,
    KV and system APIs, and the event log's own subjects would take the answer
    as an event: publishing there on a caller's say-so would let any payload
    write into the log or the views.
    """
    if not _REPLY_SUBJECT.fullmatch(subject) or subject.startswith("$"):
        return False
    return subject != SUBJECT_PREFIX and not subject.startswith(f"{SUBJECT_PREFIX}.")


def reply_subject(body: dict[str, Any]) -> str | None:
    """A usable `reply_to` from a payload, or None (invalid or unsafe ones are ignored)."""
    value = body.get("reply_to")
    if isinstance(value, str) and is_safe_reply_subject(value):
        return value
    return None


def name_field(body: dict[str, Any], field: str, limits: ServiceConfig) -> str:
    """A channel or user name: a non-empty string within the configured length."""
    if field not in body or body[field] is None:
        raise ValidationError(f"Missing field '{field}'", field)
    value = body[field]
    if not isinstance(value, str):
        raise ValidationError(f"Field '{field}' must be a string, got {_json_kind(value)}", field)
    if not value.strip():
        raise ValidationError(f"Field '{field}' must not be empty", field)
    if len(value) > limits.max_name_length:
        raise ValidationError(
            f"Field '{field}' is too long: {len(value)} characters "
            f"(limit {limits.max_name_length})",
            field,
        )
    return value


def text_field(
    body: dict[str, Any], field: str, limits: ServiceConfig, *, required: bool = True
) -> str:
    """A message-like string within `max_message_length`."""
    if field not in body or body[field] is None:
        if required:
            raise ValidationError(f"Missing field '{field}'", field)
        return ""
    value = body[field]
    if not isinstance(value, str):
        raise ValidationError(f"Field '{field}' must be a string, got {_json_kind(value)}", field)
    check_length(value, field, limits)
    return value


def check_length(value: str, field: str, limits: ServiceConfig) -> None:
    if len(value) > limits.max_message_length:
        raise ValidationError(
            f"Message too long: {len(value)} characters (limit {limits.max_message_length})",
            field,
        )


def parse_command(data: bytes, limits: ServiceConfig) -> CommandRequest:
    """Both payload shapes of `rosey.command.chat*` (DESIGN.md).

    Current: `{"channel", "user", "args": str, "reply_to"?}`.
    Older:   `{"command", "args": [str, ...], "channel_id", "username"}`.
    """
    body = decode_object(data)
    older = "channel_id" in body or "username" in body
    channel_field, user_field = ("channel_id", "username") if older else ("channel", "user")
    channel = name_field(body, channel_field, limits)
    user = name_field(body, user_field, limits)
    raw_args = body.get("args", "")
    if raw_args is None:
        raw_args = ""
    if isinstance(raw_args, list):
        if not all(isinstance(a, str) for a in raw_args):
            raise ValidationError("Field 'args' must be a string or a list of strings", "args")
        args = " ".join(raw_args)
    elif isinstance(raw_args, str):
        args = raw_args
    else:
        raise ValidationError(
            f"Field 'args' must be a string or a list of strings, got {_json_kind(raw_args)}",
            "args",
        )
    check_length(args, "args", limits)
    return CommandRequest(channel=channel, user=user, args=args, reply_to=reply_subject(body))


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---------------------------------------------------------------- service request fields


def optional_name(body: dict[str, Any], field: str, limits: ServiceConfig) -> str | None:
    """A channel or user name that may be absent or null."""
    if body.get(field) is None:
        return None
    return name_field(body, field, limits)


def required_text(body: dict[str, Any], field: str, limits: ServiceConfig) -> str:
    """A non-blank string within `max_message_length`."""
    value = text_field(body, field, limits)
    if not value.strip():
        raise ValidationError(f"Field '{field}' must not be empty", field)
    return value


def int_field(
    body: dict[str, Any], field: str, *, default: int | None, low: int, high: int
) -> int | None:
    """An integer in [low, high]; `default` when absent or null."""
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"Field '{field}' must be an integer, got {_json_kind(value)}", field)
    if not low <= value <= high:
        raise ValidationError(f"Field '{field}' must be between {low} and {high}", field)
    return value


def number_field(
    body: dict[str, Any], field: str, *, default: float | None, low: float, high: float
) -> float | None:
    """A number in [low, high]; `default` when absent or null."""
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"Field '{field}' must be a number, got {_json_kind(value)}", field)
    if not low <= value <= high:
        raise ValidationError(f"Field '{field}' must be between {low:g} and {high:g}", field)
    return float(value)


def bool_field(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationError(f"Field '{field}' must be true or false", field)
    return value


def choice_field(
    body: dict[str, Any], field: str, choices: tuple[str, ...], default: str | None
) -> str | None:
    """One of `choices`; `default` when absent or null."""
    value = body.get(field)
    if value is None:
        return default
    if value not in choices:
        raise ValidationError(f"Field '{field}' must be one of: {', '.join(choices)}", field)
    return str(value)


def short_text_field(body: dict[str, Any], field: str, default: str, max_length: int = 64) -> str:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"Field '{field}' must be a non-empty string of at most {max_length} characters", field
        )
    return value.strip()


ROLES = ("system", "user", "assistant")
MAX_COMPLETION_MESSAGES = 200


def messages_field(body: dict[str, Any], limits: ServiceConfig) -> list[dict[str, str]]:
    """`messages` of a completion: 1..200 `{role, content}` objects."""
    value = body.get("messages")
    if value is None:
        raise ValidationError("Missing field 'messages'", "messages")
    if not isinstance(value, list) or not value:
        raise ValidationError("Field 'messages' must be a non-empty array", "messages")
    if len(value) > MAX_COMPLETION_MESSAGES:
        raise ValidationError(
            f"Field 'messages' has {len(value)} items (limit {MAX_COMPLETION_MESSAGES})", "messages"
        )
    messages: list[dict[str, str]] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ValidationError(f"Field '{where}' must be an object", "messages")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise ValidationError(
                f"Field '{where}.role' must be one of: {', '.join(ROLES)}", "messages"
            )
        if not isinstance(content, str):
            raise ValidationError(f"Field '{where}.content' must be a string", "messages")
        check_length(content, f"{where}.content", limits)
        messages.append({"role": str(role), "content": content})
    return messages
