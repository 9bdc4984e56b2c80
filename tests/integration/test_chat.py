"""`!chat` end to end through NATS: turns, context, channels, reset, personas."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from llm_es.app import Plugin
from llm_es.domain.events import TokensSpent, TurnAdmitted, TurnCompleted
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, event_types, log_events


async def test_chat_turn_answers_and_records_events(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """A chat message gets the model's answer; the log holds Admitted, TokensSpent, Completed."""
    answer = await command(client, "Hello, how are you?")
    assert answer["success"] is True
    assert answer["result"]["message"] == "Hello from the fake model."
    events = [e for _, e in await log_events(client)]
    assert [e.TYPE for e in events] == ["TurnAdmitted", "TokensSpent", "TurnCompleted"]
    admitted, spent, completed = events
    assert isinstance(admitted, TurnAdmitted)
    assert admitted.message == "Hello, how are you?"
    assert isinstance(spent, TokensSpent)
    assert not spent.estimated
    assert spent.completion_tokens == 5  # the fake counts the reply's words
    assert isinstance(completed, TurnCompleted)
    assert completed.turn_id == admitted.turn_id
    assert answer["result"]["tokens_used"] == spent.prompt_tokens + spent.completion_tokens


async def test_context_carries_across_turns_per_channel(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """The second turn in a channel sends the first exchange; another channel starts fresh."""
    await command(client, "My name is Alice", channel="one")
    await command(client, "What is my name?", channel="one")
    await command(client, "Hi there", channel="two")
    sent = [r.body["messages"] for r in fake_llm.chat_requests if r.body]
    second = [m["content"] for m in sent[1]]
    assert second[1:] == [
        "alice: My name is Alice",
        "Hello from the fake model.",
        "alice: What is my name?",
    ]
    third = [m["content"] for m in sent[2]]
    assert third[1:] == ["alice: Hi there"]


async def test_reset_clears_the_channel_context(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """After `!chat reset` the next turn carries no earlier messages."""
    await command(client, "Remember this turn")
    answer = await command(client, "reset")
    assert answer == {"success": True, "result": {"message": "Conversation context reset"}}
    await command(client, "Fresh start")
    last = fake_llm.chat_requests[-1].body
    assert last is not None
    assert [m["role"] for m in last["messages"]] == ["system", "user"]
    assert "ContextReset" in await event_types(client)


async def test_persona_list_switch_and_unknown(
    plugin: Plugin, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Persona commands list, switch per channel, and refuse unknown names."""
    listed = await command(client, "persona")
    assert listed["result"]["message"] == (
        "Available personas: default, concise, technical, creative. Current: default. "
        "Use: !chat persona <name>"
    )
    switched = await command(client, "persona concise")
    assert switched["result"]["message"] == "Persona changed to: concise"
    assert (await command(client, "persona"))["result"]["message"].endswith(
        "Current: concise. Use: !chat persona <name>"
    )
    other = await command(client, "persona", channel="elsewhere")
    assert "Current: default." in other["result"]["message"]
    unknown = await command(client, "persona pirate")
    assert unknown == {
        "success": False,
        "error": "Unknown persona 'pirate'. Available: default, concise, technical, creative",
    }
    await command(client, "Hi")
    system = fake_llm.chat_requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    assert "briefly" in system


async def test_help_and_empty_args(plugin: Plugin, client: NATS) -> None:
    """`!chat`, `!chat help` answer with the command list and append nothing."""
    for args in ("", "help", "  "):
        answer = await command(client, args)
        assert answer["success"] is True
        assert "!chat remember <fact>" in answer["result"]["message"]
    assert await event_types(client) == []
