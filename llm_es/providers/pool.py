"""`ShardedClient`: HTTP connection pools kept small by spreading requests over shards.

httpcore's connection pool does bookkeeping proportional to the square of its
connection count on every request (and closes "surplus idle" connections by
counting all of them), so one pool serving 32 concurrent calls spends more CPU
than the calls themselves (bench/turns.py, concurrency 32). Spreading requests
over shards of at most `SHARD_CONNECTIONS` connections keeps each pool tiny
while the total stays the configured `max_connections`.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import httpx

SHARD_CONNECTIONS = 4


class ShardedClient:
    """A fixed set of httpx.AsyncClient shards; each request goes to the least busy one."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: httpx.Timeout,
        max_connections: int = 64,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Shards of SHARD_CONNECTIONS, the last one holding the rest: `max_connections` in all.
        full, rest = divmod(max_connections, SHARD_CONNECTIONS)
        sizes = [SHARD_CONNECTIONS] * full + ([rest] if rest else [])
        # One TLS context for every shard: httpx would load the CA bundle from disk
        # for each client (~40 ms of blocking I/O apiece, 0.6 s for 16 shards).
        verify = _tls_context() if urlsplit(base_url).scheme == "https" else _plain_context()
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=timeout,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                headers=dict(headers or {}),
                verify=verify,
            )
            for size in sizes
        ]
        self._free = sizes.copy()

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The shard with the most free connections, one of them counted as taken until
        the block ends (shards differ in size when `max_connections` is no multiple)."""
        index = max(range(len(self._clients)), key=self._free.__getitem__)
        self._free[index] -= 1
        try:
            yield self._clients[index]
        finally:
            self._free[index] += 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether every shard is closed (its connections' sockets with it)."""
        return all(client.is_closed for client in self._clients)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context (system/certifi CAs), loaded once per process."""
    return httpx.create_ssl_context()


def _plain_context() -> ssl.SSLContext:
    """For plain-http servers: never used for a handshake, so it loads no CA bundle."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
