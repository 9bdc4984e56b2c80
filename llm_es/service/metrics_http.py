"""The `/metrics` HTTP listener: a minimal asyncio HTTP/1.1 server for Prometheus scrapes.

One request per connection (answered with `Connection: close`), read with a
size and time bound; `GET /metrics` refreshes the gauges (`refresh`, awaited on
the loop) and answers prometheus_client's text exposition. Anything else gets
404 or 405 (only GET: Prometheus sends nothing else). It runs on the plugin's
event loop: no thread, no blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from prometheus_client import CONTENT_TYPE_LATEST

from llm_es.errors import LLMESError, OperationalError
from llm_es.logs import log_kv
from llm_es.metrics import PluginMetrics

logger = logging.getLogger("llm_es.service.metrics_http")

METRICS_PATH = "/metrics"
REQUEST_SECONDS = 5.0
"""Longest a client may take to send its request head."""
REFRESH_SECONDS = 2.0
"""Longest a scrape waits for the gauges' reads (the log's size): past it, the last values."""
MAX_HEAD_BYTES = 16 * 1024
"""A longer request head is dropped unanswered (a scraper sends a few hundred bytes)."""


class MetricsListener:
    """Serves one plugin's `/metrics` on `host:port` until stopped."""

    def __init__(
        self,
        metrics: PluginMetrics,
        host: str,
        port: int,
        *,
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._refresh = refresh
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the OS picked when asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("metrics listener not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise OperationalError(
                f"cannot listen on {self._host}:{self._port} for /metrics: {exc.strerror or exc}"
                " (set http.listen or --http to another HOST:PORT, or http.listen to null)"
            ) from None
        host, port = self.address
        log_kv(logger, "metrics_listening", url=f"http://{host}:{port}{METRICS_PATH}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = await self._answer(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no complete request head gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        text = "text/plain; charset=utf-8"
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != METRICS_PATH.encode():
            return "404 Not Found", b"not found: try /metrics\n", text
        if method != b"GET":
            return "405 Method Not Allowed", b"only GET\n", text
        try:
            async with asyncio.timeout(REFRESH_SECONDS):
                await self._refresh()
        except (TimeoutError, nats.errors.Error, LLMESError) as exc:
            # The scrape still answers: the gauges keep their last values.
            log_kv(logger, "metrics_refresh_failed", level=logging.WARNING, error=repr(exc))
        body = self._metrics.exposition()
        return "200 OK", body, CONTENT_TYPE_LATEST
