"""A nats-server for synchronous tests: an EmbeddedNatsServer driven from its own loop thread."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats

from llm_es.embedded import EmbeddedNatsServer

T = TypeVar("T")


class ServerThread:
    """An embedded nats-server driven from a loop on its own thread (the suites are sync)."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server = EmbeddedNatsServer(data_dir, port=0)
        self.url = self.run(self.server.start())
        self.run(_add_sentinel_stream(self.url))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and return its result (60 s at most)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    def restart(self) -> None:
        """Stop the server (SIGTERM, JetStream flushed) and start it on the same port and dir."""
        self.run(self.server.stop())
        self.run(self.server.start())

    def delete_all_streams(self) -> None:
        """Delete every stream on the server but the sentinel."""
        self.run(_delete_all_streams(self.url))

    def close(self) -> None:
        """Stop the server and the loop."""
        try:
            self.run(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


SENTINEL_STREAM = "CONTRACT_SENTINEL"
"""A stream kept for the whole session. When an account's last stream is deleted,
nats-server removes the account's `streams` directory in the background, and a
stream created right then fails with "could not create storage directory"
(seen as a 500 "error creating store for stream" every ten runs or so)."""


async def _add_sentinel_stream(url: str) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=2)
    try:
        await nc.jetstream().add_stream(name=SENTINEL_STREAM, subjects=["contract-sentinel"])
    finally:
        await nc.close()


async def _delete_all_streams(url: str) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name != SENTINEL_STREAM:
                await js.delete_stream(info.config.name or "")
    finally:
        await nc.close()
