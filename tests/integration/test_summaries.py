"""Long conversations stay coherent: old messages are summarized and the summary is prompted."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from llm_es.domain.events import ContextSummarized, TokensSpent
from llm_es.domain.prompt import quoted
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, log_events, wait_until

SUMMARY = "Alice said she owns a cat called Tom and likes tea."


def reply_for(messages: list[dict[str, Any]]) -> str:
    if "running summary" in messages[0]["content"]:
        return SUMMARY
    return "Noted."


async def summaries(client: NATS) -> list[ContextSummarized]:
    return [e for _, e in await log_events(client) if isinstance(e, ContextSummarized)]


async def test_history_past_the_threshold_is_summarized_and_prompted(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """Past `summarize_after_messages`, older messages become a summary that the next
    prompt carries instead of them; the summary's provider call records its own tokens."""
    fake_llm.reply = reply_for
    await start(max_context_messages=2, summarize_after_messages=4)
    for text in ("I own a cat called Tom", "I like tea", "What a day"):
        assert (await command(client, text))["success"]

    async def summarized() -> bool:
        return bool(await summaries(client))

    await wait_until(summarized, within=10)
    (summary,) = await summaries(client)
    assert summary.summary == SUMMARY
    assert summary.message_count == 4
    summary_request = next(
        r.body
        for r in fake_llm.chat_requests
        if r.body and reply_for(r.body["messages"]) == SUMMARY
    )
    transcript = summary_request["messages"][1]["content"]
    assert 'alice: "I own a cat called Tom"' in transcript
    assert "What a day" not in transcript  # the last window stays verbatim
    spent = [e for _, e in await log_events(client) if isinstance(e, TokensSpent)]
    assert [e.purpose for e in spent].count("context_summary") == 1
    assert next(e for e in spent if e.purpose == "context_summary").user is None

    await command(client, "What is my cat called?")
    last = fake_llm.chat_requests[-1].body
    assert last is not None
    assert SUMMARY not in last["messages"][0]["content"]  # data, not instructions
    assert f"summary: {quoted(SUMMARY)}" in last["messages"][1]["content"]
    contents = [m["content"] for m in last["messages"][2:]]
    assert contents == ["alice: What a day", "Noted.", "alice: What is my cat called?"]


async def test_summaries_can_be_switched_off(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """With summarize_after_messages null, old messages just leave the window."""
    await start(max_context_messages=2, summarize_after_messages=None)
    for n in range(4):
        await command(client, f"message {n}")
    assert await summaries(client) == []
    last = fake_llm.chat_requests[-1].body
    assert last is not None
    assert len(last["messages"]) == 4  # system + one exchange + the new message


async def test_reset_clears_the_summary(
    start: PluginStarter, client: NATS, fake_llm: FakeLLMServer
) -> None:
    """After a reset neither the summary nor old messages reach the prompt."""
    fake_llm.reply = reply_for
    await start(max_context_messages=2, summarize_after_messages=2)
    for text in ("one", "two"):
        await command(client, text)

    async def summarized() -> bool:
        return bool(await summaries(client))

    await wait_until(summarized, within=10)
    await command(client, "reset")
    await command(client, "fresh")
    last = fake_llm.chat_requests[-1].body
    assert last is not None
    assert "summary:" not in str(last["messages"])
    assert len(last["messages"]) == 2
