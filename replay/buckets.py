"""The views buckets as the replay tools see them: which one is live, and its contents."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from llm_es.domain.views import ActiveViews
from llm_es.store.kv import read_bucket
from projections.base import View
from projections.buckets import read_active_views
from replay.errors import LogUnavailable

LOAD_TIMEOUT_SECONDS = 120.0


async def active_views(js: JetStreamContext) -> ActiveViews:
    """The live views bucket (the blue/green pointer, or `llm_data`)."""
    try:
        return await read_active_views(js)
    except (nats.errors.Error, TimeoutError) as exc:
        raise LogUnavailable(f"cannot read the views pointer: {type(exc).__name__}") from exc


async def require_bucket(js: JetStreamContext, bucket: str) -> None:
    """LogUnavailable unless the bucket exists."""
    try:
        await js.key_value(bucket)
    except BucketNotFoundError:
        raise LogUnavailable(
            f"no views: bucket {bucket} does not exist "
            "(start llm-es serve, or run llm-replay rebuild)"
        ) from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise LogUnavailable(f"cannot open the views bucket {bucket}: {exc!r}") from exc


async def load_bucket(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Every key of a views bucket with its stored bytes."""
    try:
        async with asyncio.timeout(LOAD_TIMEOUT_SECONDS):
            return await read_bucket(js, bucket)
    except (nats.errors.Error, TimeoutError) as exc:
        raise LogUnavailable(f"cannot read the views bucket {bucket}: {exc!r}") from exc


def normalized(value: View) -> Any:
    """A view as it reads back from KV (JSON: tuples become lists)."""
    return orjson.loads(orjson.dumps(value))


def key_kinds(keys: Iterable[str]) -> dict[str, int]:
    """Keys counted by their first part (`messages`, `memories`, ...)."""
    return dict(sorted(Counter(key.partition(".")[0] for key in keys).items()))
