"""The `rosey.llm.*` reply bodies, each with exactly its seed class's fields, and their headers.

Other plugins read a body with `Class(**json)`, which refuses any other keyword
(DESIGN.md "Seed schemas"), so every body has all of its class's fields and no
more; what llm-es knows beyond them travels in headers (`Llm-Turn-Id`,
`Llm-Model`, and the micro framework's error headers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_es import headers
from llm_es.domain import replies
from llm_es.service.outcome import Outcome


@dataclass(frozen=True, slots=True)
class Reply:
    """A response: the seed-shaped body, and what llm-es says beyond it in headers."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# Error bodies, each with exactly its seed schema's fields (ChatResponse, CompletionResponse,
# SummaryResponse, MemoryResponse, PersonaResponse, StatusResponse, UsageResponse).
CHAT_ERROR: dict[str, Any] = {
    "success": False,
    "content": None,
    "error": None,
    "tokens_used": 0,
    "provider": None,
}
COMPLETION_ERROR = CHAT_ERROR
SUMMARY_ERROR: dict[str, Any] = {"success": False, "summary": None, "error": None}
MEMORY_ERROR: dict[str, Any] = {
    "success": False,
    "memories": None,
    "count": 0,
    "memory_id": None,
    "error": None,
}
PERSONA_ERROR: dict[str, Any] = {
    "success": False,
    "persona": None,
    "available": None,
    "error": None,
}
STATUS_ERROR: dict[str, Any] = {
    "healthy": False,
    "provider": "",
    "model": "",
    "requests_today": 0,
    "tokens_today": 0,
    "rate_limited": False,
    "uptime_seconds": 0,
}
USAGE_ERROR: dict[str, Any] = {
    "user": None,
    "requests_today": 0,
    "tokens_today": 0,
    "rate_limits_remaining": {},
}


def error_reply(shape: dict[str, Any], error: str, code: str) -> Reply:
    """`shape` with the error in-band (where the schema has `error`) and in the micro headers."""
    body = dict(shape)
    if "error" in body:
        body["error"] = error
    return Reply(
        body,
        {headers.SERVICE_ERROR: headers.header_safe(error), headers.SERVICE_ERROR_CODE: code},
    )


def turn_headers(outcome: Outcome) -> dict[str, str]:
    """`Llm-Turn-Id` and `Llm-Model` of a turn's reply, where known."""
    found: dict[str, str] = {}
    if turn_id := outcome.data.get("turn_id"):
        found[headers.LLM_TURN_ID] = turn_id
    if model := outcome.data.get("model"):
        found[headers.LLM_MODEL] = headers.header_safe(model)
    return found


def completion_reply(outcome: Outcome, default_provider: str) -> Reply:
    """ChatResponse / CompletionResponse from a turn's outcome."""
    if not outcome.success:
        body = {
            **CHAT_ERROR,
            "error": outcome.message,
            "provider": outcome.data.get("provider", default_provider),
        }
    else:
        body = {
            "success": True,
            "content": outcome.message,
            "error": None,
            "tokens_used": outcome.data.get("tokens_used", 0),
            "provider": outcome.data.get("provider"),
        }
    return Reply(body, turn_headers(outcome))


def summary_reply(outcome: Outcome) -> Reply:
    """SummaryResponse from a summary's outcome."""
    if not outcome.success:
        return Reply({**SUMMARY_ERROR, "error": outcome.message}, turn_headers(outcome))
    return Reply(
        {"success": True, "summary": outcome.message, "error": None}, turn_headers(outcome)
    )


def memory_reply(outcome: Outcome) -> Reply:
    """MemoryResponse from a memory command's outcome; memories as `!chat recall` lists them."""
    found = outcome.data.get("memories")
    memories = (
        None if found is None else [replies.memory_line(m["content"], m["id"]) for m in found]
    )
    if outcome.data.get("memory_id") is not None:
        count = 1
    else:
        count = outcome.data.get("count", len(memories or ()))
    return Reply(
        {
            "success": outcome.success,
            "memories": memories,
            "count": count if outcome.success else 0,
            "memory_id": outcome.data.get("memory_id"),
            "error": None if outcome.success else outcome.message,
        }
    )


def persona_reply(outcome: Outcome, persona: str, available: list[str]) -> Reply:
    """PersonaResponse: the channel's persona now, whether or not the switch happened."""
    return Reply(
        {
            "success": outcome.success,
            "persona": persona,
            "available": available,
            "error": None if outcome.success else outcome.message,
        }
    )
