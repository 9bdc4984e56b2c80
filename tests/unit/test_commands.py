"""Tests of llm_es.domain.commands: which `!chat` texts are commands and which are chat messages."""

from __future__ import annotations

import pytest

from llm_es.domain.commands import ChatCommand, parse_chat_args


@pytest.mark.parametrize("args", ["", "   ", "\t\n", "help", "HELP", "  Help  "])
def test_empty_or_help_is_help(args: str) -> None:
    """No text, or `help` alone, asks for the help text."""
    assert parse_chat_args(args) == ChatCommand("help", "")


@pytest.mark.parametrize("args", ["reset", "RESET", "Reset", "  reset  ", "reset\n"])
def test_reset_alone_resets(args: str) -> None:
    """`reset` on its own, in any case, resets the context."""
    assert parse_chat_args(args) == ChatCommand("reset", "")


@pytest.mark.parametrize("args", ["reset the router?", "Reset my password please", "help me"])
def test_keyword_followed_by_a_sentence_is_a_chat_message(args: str) -> None:
    """A keyword with a sentence after it ("reset the router?") is a chat message, kept whole."""
    assert parse_chat_args(args) == ChatCommand("chat", args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("persona", ChatCommand("persona", "")),
        ("PERSONA", ChatCommand("persona", "")),
        ("persona concise", ChatCommand("persona", "concise")),
        ("Persona   Technical ", ChatCommand("persona", "Technical")),
        ("persona\tcreative", ChatCommand("persona", "creative")),
        ("persona is a nice word", ChatCommand("chat", "persona is a nice word")),
        ("persona two words", ChatCommand("chat", "persona two words")),
    ],
)
def test_persona_takes_at_most_one_word(args: str, expected: ChatCommand) -> None:
    """`persona` lists (0 words) or switches (1 word); with more words it is a chat message."""
    assert parse_chat_args(args) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("forget deadbeef", ChatCommand("forget", "deadbeef")),
        ("FORGET DEADBEEF", ChatCommand("forget", "DEADBEEF")),
        ("forget", ChatCommand("forget", "")),
        ("forget about it", ChatCommand("chat", "forget about it")),
        ("forget deadbeef now", ChatCommand("chat", "forget deadbeef now")),
    ],
)
def test_forget_takes_one_word(args: str, expected: ChatCommand) -> None:
    """`forget <id>` forgets; `forget` with two or more words is a chat message."""
    assert parse_chat_args(args) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("remember The deadline is Friday", ChatCommand("remember", "The deadline is Friday")),
        ("REMEMBER  spaced   out ", ChatCommand("remember", "spaced   out")),
        ("remember", ChatCommand("remember", "")),
        ("recall deadline", ChatCommand("recall", "deadline")),
        ("Recall what Alice likes", ChatCommand("recall", "what Alice likes")),
        ("recall\nmultiline", ChatCommand("recall", "multiline")),
    ],
)
def test_remember_and_recall_take_the_rest_of_the_text(args: str, expected: ChatCommand) -> None:
    """`remember` / `recall` keep everything after the keyword (inner spacing too)."""
    assert parse_chat_args(args) == expected


@pytest.mark.parametrize(
    "args",
    ["hello there", "What is Python?", "resetting things", "rememberance", "  padded message  "],
)
def test_anything_else_is_a_chat_message(args: str) -> None:
    """Text that is not a command form goes to the model, trimmed."""
    assert parse_chat_args(args) == ChatCommand("chat", args.strip())
