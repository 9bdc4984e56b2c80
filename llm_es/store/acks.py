"""Publishing to a JetStream stream and reading its ack: one message, or an atomic batch.

The ack is returned as JetStream sent it (it may carry an `error`); the event
log and the eventsourcing module each read it their own way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS

from llm_es import headers
from llm_es.errors import OperationalError

APPEND_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message for JetStream to store: subject, payload and headers."""

    subject: str
    payload: bytes
    headers: dict[str, str]


async def request_ack(
    nc: NATS,
    message: OutgoingMessage,
    *,
    wait_seconds: float = APPEND_TIMEOUT_SECONDS,
    stream: str,
) -> dict[str, Any]:
    """Publish one message and return JetStream's ack, which may carry an `error`.

    An error ack has `seq` 0. Raises OperationalError when no stream listens on
    the subject, no ack comes within `wait_seconds`, or the connection is closed.
    """
    try:
        reply = await nc.request(
            message.subject, message.payload, timeout=wait_seconds, headers=message.headers
        )
    except nats.errors.NoRespondersError as exc:
        raise OperationalError(f"no stream answers on {message.subject}") from exc
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise OperationalError(f"append to {stream} failed: {type(exc).__name__}") from exc
    ack: dict[str, Any] = orjson.loads(reply.data)
    return ack


async def request_atomic_ack(
    nc: NATS,
    messages: Sequence[OutgoingMessage],
    *,
    wait_seconds: float = APPEND_TIMEOUT_SECONDS,
    stream: str,
) -> dict[str, Any]:
    """Publish messages as one atomic batch and return the commit's ack (see `request_ack`).

    All messages are stored, with consecutive sequences, or none is. The ones
    before the commit go out with `nc.publish`: they get no ack, and nats-py's
    `js.publish` raises on the empty one. The server checks each message's
    conditions when the commit arrives and answers only then.
    """
    batch_id = uuid.uuid4().hex
    *first, final = (
        OutgoingMessage(
            message.subject,
            message.payload,
            {**message.headers, headers.BATCH_ID: batch_id, headers.BATCH_SEQUENCE: str(number)},
        )
        for number, message in enumerate(messages, start=1)
    )
    for message in first:
        await nc.publish(message.subject, message.payload, headers=message.headers)
    commit = OutgoingMessage(
        final.subject, final.payload, {**final.headers, headers.BATCH_COMMIT: "1"}
    )
    return await request_ack(nc, commit, wait_seconds=wait_seconds, stream=stream)


def actual_last_seq(description: str) -> int | None:
    """The real last sequence nats-server names in a 10071 error ("wrong last sequence: 5")."""
    number = description.rpartition(":")[2].strip()
    return int(number) if number.isdigit() else None
