"""Where the event publisher is in the log: a KV value only the current holder may move.

Key `position` of bucket `llm_publisher` holds the last log sequence published on
`rosey.event.llm.*`, the holder's instance id and when it was saved. The
publisher writes it with the revision it last wrote, so a deposed holder's
writes fail; the holder's name lets an instance recognise its own write that
was stored while it could not see the reply.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llm_es.domain.events import iso_utc
from llm_es.errors import OperationalError
from llm_es.store.kv import bucket_config, ensure_bucket

POSITION_BUCKET = "llm_publisher"
POSITION_KEY = "position"


async def ensure_position_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The bucket holding the publisher's position (no TTL: it must outlive every instance)."""
    return await ensure_bucket(
        js,
        bucket_config(
            POSITION_BUCKET,
            "llm-es: last log sequence published on rosey.event.llm.*",
            replicas=replicas,
        ),
    )


def position_value(seq: int, holder: str) -> bytes:
    """The stored value: `seq` published by `holder`, saved now."""
    return orjson.dumps({"seq": seq, "holder": holder, "saved_at": iso_utc(datetime.now(UTC))})


def position_of(raw: bytes | None) -> int:
    """The sequence in a stored position value; an unreadable value stops the publisher."""
    try:
        value = orjson.loads(raw or b"")
        seq = value["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise OperationalError(f"unreadable event publisher position: {exc}") from None
    if type(seq) is not int or seq < 0:
        raise OperationalError(f"unreadable event publisher position: seq {seq!r}")
    return seq
