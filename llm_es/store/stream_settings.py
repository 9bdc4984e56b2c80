"""The log stream's settings, and the nats-server it needs: what `ensure_stream` creates,
how it fits an existing stream up (never down), which server versions can run it."""

from __future__ import annotations

import asyncio
import dataclasses

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from llm_es.errors import OperationalError, ServerVersionError

DUPLICATE_WINDOW_SECONDS = 120.0
MIN_SERVER_VERSION = (2, 12)


def check_server_version(version: str, *, jetstream: bool) -> None:
    """Refuse a nats-server that cannot run the log (atomic batches need 2.12)."""
    try:
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        raise ServerVersionError(f"cannot read the nats-server version {version!r}") from None
    if (major, minor) < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise ServerVersionError(
            f"nats-server {version} is too old: llm-es needs {wanted} or newer "
            "(atomic batch publish, subject-filtered expected sequences)"
        )
    if not jetstream:
        raise ServerVersionError("nats-server has JetStream disabled: start it with -js")


def require_server_version(nc: NATS) -> None:
    """Check the connected server (see `check_server_version`)."""
    info: dict[str, object] = getattr(nc, "_server_info", {})
    check_server_version(str(info.get("version", "0.0.0")), jetstream=bool(info.get("jetstream")))


def event_log_config(
    name: str,
    prefix: str,
    *,
    replicas: int = 1,
    storage: api.StorageType = api.StorageType.FILE,
) -> api.StreamConfig:
    """Settings of a stream used as an event log: `<prefix>.>`, atomic batches, direct
    gets, no delete or purge, limits retention, the duplicate window for `Nats-Msg-Id`."""
    return api.StreamConfig(
        name=name,
        subjects=[f"{prefix}.>"],
        storage=storage,
        retention=api.RetentionPolicy.LIMITS,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
        allow_atomic=True,
        deny_delete=True,
        deny_purge=True,
        discard=api.DiscardPolicy.OLD,
    )


def fitted_stream_config(current: api.StreamConfig, wanted: api.StreamConfig) -> api.StreamConfig:
    """An existing stream's settings with what the log needs raised, and nothing else changed.

    An operator's choices stay (limits such as `max_age` and `max_bytes`, more
    replicas, a longer duplicate window, more subjects); the log's own subjects,
    atomic batches, direct gets and no delete/purge are added, and replicas and the
    duplicate window only go up.
    """
    subjects = list(current.subjects or [])
    subjects += [s for s in wanted.subjects or [] if s not in subjects]
    return dataclasses.replace(
        current,
        subjects=subjects,
        num_replicas=max(current.num_replicas or 1, wanted.num_replicas or 1),
        duplicate_window=max(current.duplicate_window or 0, wanted.duplicate_window or 0),
        allow_direct=True,
        allow_atomic=True,
        deny_delete=True,
        deny_purge=True,
    )


LEADER_WAIT_SECONDS = 10.0
LEADER_POLL_SECONDS = 0.05


async def wait_for_leader(js: JetStreamContext, stream: str) -> None:
    """Return once a replicated stream just created has a leader (bounded).

    On a cluster the create is answered before the stream's own group has
    elected its leader; until then a read or append meets "no responders"
    (seen as 1 start in 9 on a fresh 3-node cluster). A single server's
    stream has no group and returns at once.
    """
    try:
        async with asyncio.timeout(LEADER_WAIT_SECONDS):
            while True:
                cluster = (await js.stream_info(stream)).cluster
                if cluster is None or cluster.leader:
                    return
                await asyncio.sleep(LEADER_POLL_SECONDS)
    except TimeoutError:
        raise OperationalError(
            f"stream {stream} has no leader {LEADER_WAIT_SECONDS:.0f}s after it was created"
            " (are enough cluster nodes up for its replicas?)"
        ) from None
