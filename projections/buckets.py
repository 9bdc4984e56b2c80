"""The views' KV buckets: their config, the blue/green pointer, writer leases, checkpoints."""

from __future__ import annotations

import orjson
from nats.js import JetStreamContext, api
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
)
from nats.js.kv import KeyValue

from llm_es.domain.views import (
    ACTIVE_VIEWS_KEY,
    BUCKET,
    META_BUCKET,
    ActiveViews,
    parse_active_views,
)
from llm_es.store.kv import ensure_bucket


def views_bucket_config(bucket: str, *, replicas: int = 1) -> api.KeyValueConfig:
    """Settings of a views bucket (the live one and every blue/green generation)."""
    return api.KeyValueConfig(
        bucket=bucket,
        history=1,
        storage=api.StorageType.FILE,
        direct=True,
        description="llm-es views, folded from the LLM_EVENTS log",
        replicas=replicas,
    )


async def ensure_meta_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The pointer bucket, created on first use (replicas raised to `replicas`)."""
    return await ensure_bucket(
        js,
        api.KeyValueConfig(
            bucket=META_BUCKET,
            history=5,
            storage=api.StorageType.FILE,
            direct=True,
            description="llm-es: which views bucket is live (blue/green)",
            replicas=replicas,
        ),
    )


async def read_active_views(js: JetStreamContext, *, replicas: int = 1) -> ActiveViews:
    """The live views bucket as the pointer names it now (`llm_data` when there is none)."""
    kv = await ensure_meta_bucket(js, replicas=replicas)
    try:
        entry = await kv.get(ACTIVE_VIEWS_KEY)
    except (KeyNotFoundError, KeyDeletedError):
        return ActiveViews(BUCKET, 1, 0)
    return parse_active_views(entry.value, entry.revision or 0)


def views_lease_key(bucket: str) -> str:
    """The lease (in bucket `llm_leases`) whose holder writes the views bucket `bucket`."""
    return f"views.{bucket}"


def stored_checkpoint_seq(raw: bytes | None) -> int:
    """The sequence of a stored checkpoint value; anything unreadable counts as 0."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return 0
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if type(seq) is int and seq > 0 else 0
