"""The plugin's HTTP listener: a minimal asyncio HTTP/1.1 server for `/metrics` and the dashboard.

One request per connection (answered with `Connection: close`), read with a
size and time bound; `GET /metrics` refreshes the gauges (`refresh`, awaited on
the loop) and answers prometheus_client's text exposition. With a dashboard,
`GET /` and `/api/...` are its routes (`dashboard_http`; the live tail stays
open). Anything else gets 404 or 405 (only GET: nothing here changes state).
It runs on the plugin's event loop: no thread, no blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import nats.errors
from prometheus_client import CONTENT_TYPE_LATEST

from llm_es.errors import LLMESError, OperationalError
from llm_es.logs import log_kv
from llm_es.metrics import PluginMetrics
from llm_es.service.dashboard import Dashboard
from llm_es.service.dashboard_http import TAIL_PATH, Response, answer_dashboard, stream_tail

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
        dashboard: Dashboard | None = None,
    ) -> None:
        self._metrics = metrics
        self._dashboard = dashboard
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
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}{METRICS_PATH}"
        if self._dashboard is None:
            log_kv(logger, "metrics_listening", url=url)
        else:
            log_kv(logger, "metrics_listening", url=url, dashboard=f"http://{shown}:{port}/")

    async def stop(self) -> None:
        if self._dashboard is not None:
            self._dashboard.tail.close()  # open live tails end, so their connections close
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, query = _request_line(head)
            if self._dashboard is not None and method == "GET" and path == TAIL_PATH:
                await stream_tail(self._dashboard, writer, query)
                return
            response = await self._answer(method, path, query)
            headers = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items())
            status_and_headers = (
                f"HTTP/1.1 {response.status}\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n{headers}Connection: close\r\n\r\n"
            )
            writer.write(status_and_headers.encode() + response.body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no complete request head gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str, query: dict[str, str]) -> Response:
        text = "text/plain; charset=utf-8"
        dashboard = self._dashboard
        known = path == METRICS_PATH or (
            dashboard is not None and (path == "/" or path.startswith("/api/"))
        )
        if not known:
            hint = "/metrics" if dashboard is None else "/ or /metrics"
            return Response("404 Not Found", f"not found: try {hint}\n".encode(), text)
        if method != "GET":
            return Response("405 Method Not Allowed", b"only GET\n", text)
        if path != METRICS_PATH:
            assert dashboard is not None
            answer = await answer_dashboard(dashboard, path, query)
            return answer or Response("404 Not Found", b"not found\n", text)
        try:
            async with asyncio.timeout(REFRESH_SECONDS):
                await self._refresh()
        except (TimeoutError, nats.errors.Error, LLMESError) as exc:
            # The scrape still answers: the gauges keep their last values.
            log_kv(logger, "metrics_refresh_failed", level=logging.WARNING, error=repr(exc))
        return Response("200 OK", self._metrics.exposition(), CONTENT_TYPE_LATEST)


def _request_line(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path and query parameters (the last of a repeated name) of a request head."""
    method, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0].decode("latin-1")
    path, _, query = target.partition("?")
    return method.decode("latin-1"), path, dict(parse_qsl(query))
