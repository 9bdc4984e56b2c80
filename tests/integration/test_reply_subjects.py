"""Where answers may go: only `_INBOX.>` or a configured `service.reply_prefixes` subject.

A caller names the reply subject (`reply_to` in a `!chat` payload, or the NATS
reply subject of its message); any other subject is refused before anything
runs, so a caller cannot make llm-es publish on a subject others trust.
"""

from __future__ import annotations

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llm_es.app import Plugin
from llm_es.domain.events import TurnAdmitted
from tests.integration.conftest import PluginStarter
from tests.support.fake_llm import DEFAULT_REPLY
from tests.support.harness import REQUEST_TIMEOUT, command, event_types, log_events, raw_request

SUBJECT = "rosey.command.chat"
FAKE_EVENT = "rosey.event.llm.usage_threshold"
REFUSED = (
    "Field 'reply_to' names a subject answers may not go to: 'rosey.event.llm.usage_threshold'"
    " (allowed: _INBOX.>; more in config service.reply_prefixes)"
)


def payload(args: str, **fields: str) -> bytes:
    return orjson.dumps({"channel": "lobby", "user": "alice", "args": args, **fields})


async def test_reply_to_an_event_subject_publishes_no_fake_event(
    plugin: Plugin, client: NATS
) -> None:
    """`reply_to: rosey.event.llm.usage_threshold` gets nothing published there, appends nothing.

    Before, llm-es answered there, and every subscriber of the observability
    events took the answer for a usage_threshold event.
    """
    events = await client.subscribe("rosey.event.llm.>")
    try:
        await client.publish(SUBJECT, payload("hello", reply_to=FAKE_EVENT))
        await client.publish(f"{SUBJECT}.remember", payload("x", reply_to=FAKE_EVENT))
        # Answers leave the plugin in order on one connection: once this one is back,
        # any answer to the two above would already have been delivered.
        assert (await command(client, "help"))["success"] is True
        await client.flush()
        assert events.pending_msgs == 0
    finally:
        await events.unsubscribe()
    assert await event_types(client) == []


async def test_a_refused_reply_to_is_told_to_the_requester(plugin: Plugin, client: NATS) -> None:
    """With a usable NATS reply subject, the refusal of `reply_to` is answered there."""
    answer = await raw_request(client, SUBJECT, payload("hello", reply_to=FAKE_EVENT))
    assert answer == {"success": False, "error": REFUSED}
    assert await event_types(client) == []


async def test_a_reply_subject_outside_the_inbox_is_refused(plugin: Plugin, client: NATS) -> None:
    """A NATS reply subject follows the same rule: the command is refused, and its error goes
    to the payload's `reply_to` when that one is allowed."""
    inbox = client.new_inbox()
    answers = await client.subscribe(inbox)
    try:
        await client.publish(SUBJECT, payload("hello", reply_to=inbox), reply=FAKE_EVENT)
        msg = await answers.next_msg(timeout=REQUEST_TIMEOUT)
    finally:
        await answers.unsubscribe()
    assert orjson.loads(msg.data) == {
        "success": False,
        "error": "Field 'reply subject' names a subject answers may not go to:"
        " 'rosey.event.llm.usage_threshold' (allowed: _INBOX.>; more in config"
        " service.reply_prefixes)",
    }
    assert await event_types(client) == []


async def test_a_configured_reply_prefix_is_answered(start: PluginStarter, client: NATS) -> None:
    """`service.reply_prefixes: ["rosey.reply"]` lets a bot take answers on `rosey.reply.>`."""
    await start(reply_prefixes=("rosey.reply",))
    answers = await client.subscribe("rosey.reply.lobby")
    try:
        await client.publish(SUBJECT, payload("hello", reply_to="rosey.reply.lobby"))
        msg = await answers.next_msg(timeout=REQUEST_TIMEOUT)
    finally:
        await answers.unsubscribe()
    assert orjson.loads(msg.data)["result"]["message"] == DEFAULT_REPLY


async def test_a_service_request_with_a_foreign_reply_subject_runs_nothing(
    plugin: Plugin, client: NATS
) -> None:
    """`rosey.llm.chat` with reply subject `rosey.event.llm.response`: no turn, no answer there.

    The same endpoint then serves a well-formed request: only its turn is in the log.
    """
    bodies: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        bodies.append(orjson.loads(msg.data))

    events = await client.subscribe("rosey.event.llm.>", cb=collect)

    def chat(message: str) -> bytes:
        return orjson.dumps({"channel": "lobby", "user": "alice", "message": message})

    try:
        await client.publish("rosey.llm.chat", chat("forged"), reply="rosey.event.llm.response")
        answer = await raw_request(client, "rosey.llm.chat", chat("honest"))
        assert answer["success"] is True
        await client.flush()
    finally:
        await events.unsubscribe()
    assert not [body for body in bodies if "success" in body]
    admitted = [e.message for _, e in await log_events(client) if isinstance(e, TurnAdmitted)]
    assert admitted == ["honest"]
