"""The dashboard's routes on the HTTP listener: the page, its JSON, and the live tail (SSE).

`GET /` the page; `GET /api/usage|users|errors|latency|lag` JSON (the numbers
the page draws; a bad parameter gets 400 naming it); `GET /api/tail` a
`text/event-stream` of tail lines, filtered by `channel`, `user` and `type`,
with a comment line every `KEEPALIVE_SECONDS` so a closed page is noticed.
Nothing here writes: there is no route that could.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_es.service.dashboard import BadQuery, Dashboard
from llm_es.service.dashboard_page import render_page
from llm_es.service.live_tail import TailFilter, TooManyWatchers, tail_line

TAIL_PATH = "/api/tail"
KEEPALIVE_SECONDS = 15.0
JSON = "application/json"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@dataclass(slots=True)
class Response:
    status: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _json(value: Any) -> Response:
    return Response("200 OK", orjson.dumps(value), JSON, dict(SECURITY_HEADERS))


async def answer_dashboard(
    dashboard: Dashboard, path: str, query: dict[str, str]
) -> Response | None:
    """The answer to `GET path` (None: not a dashboard route)."""
    routes: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
        "/api/usage": dashboard.usage,
        "/api/users": dashboard.users,
        "/api/errors": dashboard.errors,
        "/api/latency": dashboard.latency,
    }
    try:
        if path in routes:
            return _json(routes[path](query))
        if path == "/api/lag":
            return _json(await dashboard.lag())
        if path == "/":
            return await _page(dashboard)
    except BadQuery as exc:
        return Response("400 Bad Request", f"{exc}\n".encode(), "text/plain; charset=utf-8")
    return None


async def _page(dashboard: Dashboard) -> Response:
    nonce = secrets.token_urlsafe(16)
    html = render_page(
        nonce=nonce,
        usage=dashboard.usage({}),
        users=dashboard.users({}),
        errors=dashboard.errors({}),
        latency=dashboard.latency({}),
        lag=await dashboard.lag(),
    )
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'"
        ),
    }
    return Response("200 OK", html.encode(), "text/html; charset=utf-8", headers)


async def stream_tail(
    dashboard: Dashboard, writer: asyncio.StreamWriter, query: dict[str, str]
) -> None:
    """Serve the live tail until the page goes, the listener stops or the page falls behind."""
    wanted = TailFilter(
        channel=query.get("channel") or None,
        user=query.get("user") or None,
        type=query.get("type") or None,
    )
    try:
        with dashboard.tail.watch(wanted) as lines:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                b"Connection: close\r\n\r\nretry: 2000\n\n"
            )
            await writer.drain()
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        line = await lines.get()
                except TimeoutError:
                    writer.write(b": keep-alive\n\n")
                    await writer.drain()
                    continue
                # What else is waiting goes in the same write: one send for a burst.
                batch = [line]
                while batch[-1] is not None and not lines.empty():
                    batch.append(lines.get_nowait())
                writer.write(
                    b"".join(
                        b"data: " + orjson.dumps(tail_line(*each)) + b"\n\n"
                        for each in batch
                        if each
                    )
                )
                await writer.drain()
                if batch[-1] is None:
                    return
    except TooManyWatchers as exc:
        body = f"{exc}\n".encode()
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
