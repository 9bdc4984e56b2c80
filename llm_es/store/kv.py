"""KV helpers: getting or creating a bucket, and reading a whole bucket at once, reliably.

nats-py's `KeyValue.watchall()` can signal "initial values done" before it has
delivered them (it compares consumer info with a delivery count that races
the callback), so loads built on it can come back empty or partial. This
reads the bucket's stream with an ordered consumer, last value per subject,
and ends on the message whose own `num_pending` is 0.
"""

from __future__ import annotations

import asyncio
import dataclasses

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from llm_es.domain.views import ACTIVE_VIEWS_KEY, BUCKET, META_BUCKET, parse_active_views
from llm_es.errors import OperationalError
from llm_es.headers import KV_OPERATION
from llm_es.store.stream_settings import wait_for_leader


def bucket_config(
    bucket: str,
    description: str,
    *,
    replicas: int,
    history: int = 1,
    ttl: float | None = None,
) -> api.KeyValueConfig:
    """Settings of a bucket of the plugin: on file, read with direct gets, `history` revisions
    a key (the latest only by default) and no expiry unless a `ttl` in seconds."""
    return api.KeyValueConfig(
        bucket=bucket,
        description=description,
        history=history,
        ttl=ttl,
        storage=api.StorageType.FILE,
        direct=True,
        replicas=replicas,
    )


async def ensure_bucket(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    """The bucket `config.bucket`, created with `config` if it does not exist yet.

    An existing bucket keeps its settings, but its replicas are raised to
    `config.replicas` (never lowered: an operator's R5 stays R5), so a config
    moved to `nats.replicas: 3` fits up what an R1 start created.

    Several instances start at once: when another one creates the bucket between
    our lookup and our create, the create fails and the lookup is tried again.
    """
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await _create_bucket(js, config)
    await _fit_replicas(js, config)
    return kv


async def _create_bucket(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        kv = await js.create_key_value(config)
    except APIError as exc:
        try:
            kv = await js.key_value(config.bucket)
        except BucketNotFoundError:
            # Not a lost race: the server refused the bucket (replicas > 1 on a single server).
            raise OperationalError(
                f"cannot create KV bucket {config.bucket}: {exc.description}"
            ) from None
        await _fit_replicas(js, config)
    if config.replicas > 1:
        await wait_for_leader(js, f"KV_{config.bucket}")
    return kv


def raised_replicas(current: api.StreamConfig, replicas: int) -> api.StreamConfig | None:
    """`current` with its replicas raised to `replicas`; None when it already has as many."""
    if (current.num_replicas or 1) >= replicas:
        return None
    return dataclasses.replace(current, num_replicas=replicas)


async def _fit_replicas(js: JetStreamContext, config: api.KeyValueConfig) -> None:
    if config.replicas <= 1:
        return  # nothing to raise: spares a stream info per bucket on a single server
    stream = f"KV_{config.bucket}"
    fitted = raised_replicas((await js.stream_info(stream)).config, config.replicas)
    if fitted is None:
        return
    try:
        await js.update_stream(fitted)
    except APIError as exc:
        raise OperationalError(
            f"cannot raise KV bucket {config.bucket} to {config.replicas} replicas:"
            f" {exc.description}"
        ) from exc


async def read_bucket(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Every live key of `bucket` with its value (deleted and purged keys left out)."""
    stream = f"KV_{bucket}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return {}
    if info.state.messages == 0:
        return {}
    prefix = f"$KV.{bucket}."
    values: dict[str, bytes] = {}
    done = asyncio.get_running_loop().create_future()

    async def take(msg: Msg) -> None:
        operation = msg.headers.get(KV_OPERATION) if msg.headers else None
        key = msg.subject[len(prefix) :]
        if operation is None:
            values[key] = msg.data
        else:
            values.pop(key, None)
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        f"{prefix}>",
        stream=stream,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        cb=take,
        manual_ack=True,
        pending_msgs_limit=-1,
    )
    try:
        await done
    finally:
        await sub.unsubscribe()
    return values


async def live_views_bucket(js: JetStreamContext) -> str:
    """The bucket holding the live views now (blue/green pointer; `llm_data` without one)."""
    try:
        kv = await js.key_value(META_BUCKET)
        entry = await kv.get(ACTIVE_VIEWS_KEY)
    except (NotFoundError, KeyNotFoundError, KeyDeletedError):
        return BUCKET
    return parse_active_views(entry.value, entry.revision or 0).bucket
