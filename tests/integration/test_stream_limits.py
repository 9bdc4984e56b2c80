"""An operator's limits on LLM_EVENTS (message size, bytes with discard-new) met head on:
a clear error to the caller, a WARNING line for the operator, nothing dropped silently,
and the plugin answers the next request that fits."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from llm_es.app import Plugin
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TokensSpent, TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.domain.views import usage_key
from llm_es.store.log import STREAM_NAME
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import DEFAULT_REPLY, FakeLLMServer
from tests.support.harness import command, log_events

LIMITS = RateLimitsConfig(
    requests_per_minute=None, requests_per_hour=None, requests_per_day=None, tokens_per_day=None
)
MAX_EVENT_BYTES = 1500


async def limit_stream(client: NATS, **limits: object) -> None:
    """Set limits on the running log, as an operator would (`nats stream edit`)."""
    js = client.jetstream()
    info = await js.stream_info(STREAM_NAME)
    await js.update_stream(dataclasses.replace(info.config, **limits))


async def assert_every_admitted_turn_ended(client: NATS, plugin: Plugin, user: str) -> None:
    events = [event for _, event in await log_events(client)]
    admitted = {e.turn_id for e in events if isinstance(e, TurnAdmitted)}
    ended = {e.turn_id for e in events if isinstance(e, TurnCompleted | TurnFailed)}
    assert admitted == ended
    assert plugin.views is not None
    usage = plugin.views.get(usage_key(user))
    assert usage is None or usage["open_turns"] == {}


def warnings_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and text in record.getMessage()
    ]


async def test_an_event_over_the_streams_message_size_is_a_clear_error(
    start: PluginStarter, client: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """A chat whose events pass the stream's max_msg_size is answered with the server's
    reason, logged as a WARNING, and leaves no open turn; a short chat then works."""
    plugin = await start(rate_limits=LIMITS)
    await limit_stream(client, max_msg_size=MAX_EVENT_BYTES)
    refused = await command(client, "x" * (MAX_EVENT_BYTES + 500), user="ann")
    assert refused["success"] is False
    assert "message size exceeds maximum allowed" in refused["error"]
    assert warnings_naming(caplog, "message size exceeds maximum allowed")
    await assert_every_admitted_turn_ended(client, plugin, "ann")

    answered = await command(client, "hi", user="ann")
    assert answered["success"] is True, answered
    assert answered["result"]["message"] == DEFAULT_REPLY


async def test_an_answer_over_the_streams_message_size_closes_the_turn_and_books_it(
    start: PluginStarter,
    client: NATS,
    fake_llm: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A model answer too large for max_msg_size: the caller is told it could not be
    stored, the turn ends TurnFailed(not_stored) with the provider's tokens booked, and
    the user holds no reservation."""
    plugin = await start(rate_limits=LIMITS)
    await limit_stream(client, max_msg_size=MAX_EVENT_BYTES)
    fake_llm.reply = "y" * (MAX_EVENT_BYTES * 2)
    refused = await command(client, "tell me everything", user="cid")
    assert refused["success"] is False
    assert refused["error"].startswith("The answer could not be stored in the event log")
    assert "message size exceeds maximum allowed" in refused["error"]
    assert warnings_naming(caplog, "turn_not_stored")
    events = [event for _, event in await log_events(client)]
    failed = [e for e in events if isinstance(e, TurnFailed)]
    assert [e.error_type for e in failed] == ["not_stored"]
    assert [e.turn_id for e in events if isinstance(e, TokensSpent)] == [failed[0].turn_id]
    await assert_every_admitted_turn_ended(client, plugin, "cid")


async def test_a_full_stream_that_discards_new_events_refuses_clearly(
    start: PluginStarter, client: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """With max_bytes and discard=new, once the log is full every change is refused with
    'maximum bytes exceeded' (no event is silently dropped) and the operator sees it."""
    await start(rate_limits=LIMITS)
    js = client.jetstream()
    used = (await js.stream_info(STREAM_NAME)).state.bytes
    await limit_stream(client, max_bytes=used + 4000, discard=api.DiscardPolicy.NEW)
    answers = [await command(client, f"hello {n}", user="ben") for n in range(20)]
    refused = [a for a in answers if not a["success"]]
    assert refused, "the stream never filled up"
    assert all("maximum bytes exceeded" in a["error"] for a in refused)
    remembered = await command(
        client, "the sky is blue", user="ben", subject="rosey.command.chat.remember"
    )
    assert remembered["success"] is False
    assert "maximum bytes exceeded" in remembered["error"]
    assert warnings_naming(caplog, "maximum bytes exceeded")
    # Every answer that said success is in the log. (The turn admitted just before the
    # log filled cannot be closed until an operator makes room; recovery closes it then.)
    completed = [e for _, e in await log_events(client) if isinstance(e, TurnCompleted)]
    assert len(completed) == sum(a["success"] for a in answers)
