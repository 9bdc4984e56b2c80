"""The datastore's NATS connection on its loop thread: connect, create or fit the stream, close.

It refers to nothing that refers to the datastore, so the datastore's
finalizer can close it once nobody holds the datastore any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

import nats.errors
from eventsourcing.persistence import InterfaceError, NotSupportedError, OperationalError
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from llm_es import errors as llm_errors
from llm_es.config import redact_url
from llm_es.eventsourcing_nats._loop import EventLoopThread
from llm_es.eventsourcing_nats._settings import JetStreamSettings
from llm_es.logs import log_kv
from llm_es.store.connection import INITIAL_CONNECT_SECONDS, connect_options
from llm_es.store.stream_settings import event_log_config, require_server_version

if TYPE_CHECKING:
    from llm_es.eventsourcing_nats._feed import Feed

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 5.0
JS_ERR_STREAM_NAME_IN_USE = 10058


class Connection:
    """One NATS connection to the settings' server, and the feeds to fail when it closes."""

    def __init__(self, thread: EventLoopThread, settings: JetStreamSettings) -> None:
        self.thread = thread
        self.settings = settings
        self.feeds: set[Feed] = set()
        self._nc: NATS | None = None
        self._closing = False

    def client(self) -> NATS:
        """The connected client; InterfaceError once the datastore is closed."""
        if self._nc is None:
            raise InterfaceError("the JetStream datastore is closed")
        return self._nc

    def is_open(self) -> bool:
        """True while connected or reconnecting (not yet closed)."""
        return self._nc is not None and not self._nc.is_closed

    async def connect(self) -> None:
        settings = self.settings
        options = await connect_options(
            settings.nats_config(), None, name=f"eventsourcing-{settings.stream}"
        )
        # A deliberate close is not worth the plugin's disconnect warning.
        options["disconnected_cb"] = self._disconnected
        try:
            async with asyncio.timeout(INITIAL_CONNECT_SECONDS):
                nc = await nats.connect(**options)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise OperationalError(
                f"cannot connect to NATS at {redact_url(settings.url)}: {type(exc).__name__}"
            ) from None
        # Connected once: from now on reconnect for as long as the datastore lives.
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        try:
            require_server_version(nc)
        except llm_errors.ServerVersionError as exc:
            await nc.close()
            raise NotSupportedError(str(exc)) from None

    async def _disconnected(self) -> None:
        if not self._closing:
            log_kv(
                logger, "jetstream_disconnected", level=logging.WARNING, stream=self.settings.stream
            )

    def close(self) -> None:
        """Close the connection and stop the loop (any thread; idempotent)."""
        if self.thread.stopping:
            return
        if self.thread.in_loop_thread():
            # Collected on the loop itself: finish there, nobody can wait.
            self.thread.loop.create_task(self._close_then_stop())
            return
        with contextlib.suppress(InterfaceError):
            self.thread.run(self._close_connection)
        self.thread.stop()

    async def _close_then_stop(self) -> None:
        await self._close_connection()
        self.thread.stop()

    async def _close_connection(self) -> None:
        self._closing = True
        for feed in list(self.feeds):
            feed.fail(InterfaceError("the JetStream datastore was closed"))
        self.feeds.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await nc.close()

    async def ensure_stream(self) -> None:
        """Create the stream, or make an existing one fit (subjects, atomic, direct)."""
        js = self.client().jetstream()
        settings = self.settings
        stream = settings.stream
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            config = event_log_config(
                stream,
                settings.subject_prefix,
                replicas=settings.replicas,
                storage=api.StorageType(settings.storage),  # checked: "file" or "memory"
            )
            try:
                await js.add_stream(config)
                return
            except APIError as exc:
                if exc.err_code != JS_ERR_STREAM_NAME_IN_USE:  # created meanwhile: fit it below
                    raise OperationalError(f"cannot create stream {stream}: {exc}") from None
            info = await js.stream_info(stream)
        except APIError as exc:
            raise OperationalError(f"cannot read stream {stream}: {exc}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise OperationalError(f"cannot read stream {stream}: {type(exc).__name__}") from None
        config = info.config
        wanted = f"{settings.subject_prefix}.>"
        subjects = list(config.subjects or [])
        if wanted in subjects and config.allow_atomic and config.allow_direct:
            return
        if wanted not in subjects:
            subjects.append(wanted)
        fitted = dataclasses.replace(
            config, subjects=subjects, allow_atomic=True, allow_direct=True
        )
        try:
            await js.update_stream(fitted)
        except APIError as exc:
            raise OperationalError(f"cannot update stream {stream}: {exc}") from None
