"""Parsing of `!chat` arguments into one command each (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CommandName = Literal["help", "reset", "persona", "remember", "recall", "forget", "chat"]

SUBCOMMANDS: tuple[CommandName, ...] = ("remember", "recall", "forget")


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """One parsed `!chat` invocation: the subcommand and the rest of the text."""

    name: CommandName
    argument: str


def parse_chat_args(args: str) -> ChatCommand:
    """Map the text after `!chat` to a command.

    Keywords only count where the form fits (`reset` alone, `persona` with at
    most one word, `forget` with one word), so "reset the router?" is a chat
    message, not a reset.
    """
    text = args.strip()
    if not text:
        return ChatCommand("help", "")
    head, *tail = text.split(maxsplit=1)  # any whitespace separates, not only " "
    keyword = head.lower()
    rest = tail[0] if tail else ""
    if keyword == "help" and not rest:
        return ChatCommand("help", "")
    if keyword == "reset" and not rest:
        return ChatCommand("reset", "")
    if keyword == "persona" and len(rest.split()) <= 1:
        return ChatCommand("persona", rest)
    if keyword in ("remember", "recall"):
        return ChatCommand(keyword, rest)  # type: ignore[arg-type]
    if keyword == "forget" and len(rest.split()) <= 1:
        return ChatCommand("forget", rest)
    return ChatCommand("chat", text)
