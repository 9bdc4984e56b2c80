"""Which llm-es instances are alive: a heartbeat per instance in KV bucket `llm_instances`.

Each instance writes `{"instance", "expires_at", "started_at"}` under its
encoded id every third of its TTL. Another instance counts it dead once
`expires_at` has passed (or the key is gone: a clean stop deletes it). The
expiry travels in the value, so each instance may use its own TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from llm_es.domain.tokens import encode_name
from llm_es.logs import log_kv
from llm_es.store.kv import bucket_config, ensure_bucket

logger = logging.getLogger("llm_es.store.liveness")

INSTANCES_BUCKET = "llm_instances"


def new_instance_id() -> str:
    """A name for an instance whose config names none (`service.instance_id`)."""
    return f"llm-es-{uuid.uuid4().hex[:12]}"


class InstanceRegistry:
    """Heartbeats for this instance and liveness checks of the others."""

    def __init__(
        self, js: JetStreamContext, instance_id: str, ttl_seconds: float, *, replicas: int = 1
    ) -> None:
        self._js = js
        self._replicas = replicas
        self.instance_id = instance_id
        self._ttl = ttl_seconds
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self.last_beat: float | None = None
        """`time.monotonic()` of the last heartbeat stored (None before the first)."""

    async def start(self) -> None:
        self._kv = await ensure_bucket(
            self._js,
            bucket_config(
                INSTANCES_BUCKET,
                "llm-es instance heartbeats (who may still own a turn)",
                replicas=self._replicas,
            ),
        )
        await self._beat()
        self._task = asyncio.create_task(self._beat_forever(), name="instance-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._kv is not None:
            with contextlib.suppress(nats.errors.Error, KeyValueError):
                await self._kv.delete(encode_name(self.instance_id))

    async def is_alive(self, instance_id: str) -> bool:
        """True while the instance's last heartbeat has not expired."""
        if instance_id == self.instance_id:
            return True
        assert self._kv is not None
        try:
            entry = await self._kv.get(encode_name(instance_id))
        except (KeyNotFoundError, KeyDeletedError):
            return False
        if not entry.value:
            return False
        expires_at = orjson.loads(entry.value).get("expires_at", 0)
        return bool(expires_at > time.time())

    async def _beat(self) -> None:
        assert self._kv is not None
        beat = {
            "instance": self.instance_id,
            "started_at": self._started_at,
            "expires_at": time.time() + self._ttl,
        }
        await self._kv.put(encode_name(self.instance_id), orjson.dumps(beat))
        self.last_beat = time.monotonic()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._beat()
            except (nats.errors.Error, KeyValueError) as exc:
                log_kv(logger, "heartbeat_failed", level=logging.WARNING, error=repr(exc))
