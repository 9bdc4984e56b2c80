"""Texts the bot says in the channel, following the seed plugin word for word."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llm_es.domain.views import MemoryView

CONTEXT_RESET = "Conversation context reset"

HELP = (
    "LLM chat commands:\n"
    "• !chat <message> - chat with the assistant\n"
    "• !chat reset - clear this channel's conversation context\n"
    "• !chat persona [name] - list personas or switch this channel's persona\n"
    "• !chat remember <fact> - remember a fact for this channel\n"
    "• !chat recall <query> - search remembered facts\n"
    "• !chat forget <id> - forget a remembered fact\n"
    "• !chat help - show this help"
)


def persona_list(names: Iterable[str], current: str) -> str:
    return f"Available personas: {', '.join(names)}. Current: {current}. Use: !chat persona <name>"


def persona_changed(name: str) -> str:
    return f"Persona changed to: {name}"


def unknown_persona(name: str, names: Iterable[str]) -> str:
    return f"Unknown persona '{name}'. Available: {', '.join(names)}"


def remembered(content: str, memory_id: str) -> str:
    return f"Remembered: {content} (ID: {memory_id})"


def memory_line(content: str, memory_id: str) -> str:
    """A memory as `!chat recall` lists it, and as `MemoryResponse.memories` carries it."""
    return f"{content} (ID: {memory_id})"


def recalled(query: str, memories: Sequence[MemoryView]) -> str:
    lines = "\n".join(f"• {memory_line(m['content'], m['id'])}" for m in memories)
    return f"Memories matching '{query}':\n{lines}"


def nothing_recalled(query: str) -> str:
    return f"No memories found for: {query}"


def forgot(memory_id: str) -> str:
    return f"Forgot memory: {memory_id}"


def memory_not_found(memory_id: str) -> str:
    return f"Memory not found: {memory_id}"


def answer_not_stored(reason: str) -> str:
    """The model answered, but the event log refused to store the answer (its limits)."""
    return f"The answer could not be stored in the event log ({reason}); ask an operator."


def channel_busy(limit: int) -> str:
    """A turn refused because its channel already runs `limit` turns here."""
    return f"This channel already has {limit} replies in progress; try again when one has finished."


def user_busy(limit: int) -> str:
    """A request without a channel refused because its user already runs `limit` turns here."""
    return f"You already have {limit} requests in progress; try again when one has finished."
