"""Connecting to NATS with the configured auth and TLS, the same way for every command.

The first connection fails fast (a few attempts); once connected, a client
reconnects for as long as the process lives, which a long-running plugin
wants. Connection errors are logged as one line each, without credentials.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from llm_es.config import NatsConfig, scrub_secrets, url_passwords
from llm_es.logs import log_kv

logger = logging.getLogger("llm_es.nats")

DEFAULT_LOCAL_URL = "nats://127.0.0.1:4222"
INITIAL_CONNECT_ATTEMPTS = 3
INITIAL_CONNECT_SECONDS = 20.0


def _tls_context(config: NatsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls_ca)
    if config.tls_cert and config.tls_key:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _error_logger(secrets: tuple[str, ...]) -> Callable[[Exception], Awaitable[None]]:
    """The error callback: one line per error, its text scrubbed of the connection's secrets."""

    async def log_error(exc: Exception) -> None:
        # INFO, not WARNING: failed first attempts are reported once by the caller,
        # and lost connections by the disconnected callback.
        detail = scrub_secrets(str(exc), secrets)
        log_kv(logger, "nats_error", level=logging.INFO, error=type(exc).__name__, detail=detail)

    return log_error


def connection_secrets(config: NatsConfig, url: str | None) -> tuple[str, ...]:
    """The secrets a connection uses: password, token, passwords inside the URL(s)."""
    found = [s.reveal() for s in (config.password, config.token) if s is not None]
    for server in [url] if url else list(config.servers):
        found += url_passwords(server)
    return tuple(secret for secret in found if secret)


async def _log_disconnected() -> None:
    log_kv(logger, "nats_disconnected", level=logging.WARNING)


async def _log_reconnected() -> None:
    log_kv(logger, "nats_reconnected")


async def connect_options(config: NatsConfig, url: str | None, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (certificate files are read off the loop)."""
    servers = [s.strip() for s in url.split(",")] if url else list(config.servers)
    options: dict[str, Any] = {
        "servers": servers or [DEFAULT_LOCAL_URL],
        "name": name,
        "connect_timeout": 5,
        "max_reconnect_attempts": INITIAL_CONNECT_ATTEMPTS,
        "reconnect_time_wait": 1,
        "error_cb": _error_logger(connection_secrets(config, url)),
        "disconnected_cb": _log_disconnected,
        "reconnected_cb": _log_reconnected,
    }
    if config.user is not None and config.password is not None:
        options["user"] = config.user
        options["password"] = config.password.reveal()
    if config.token is not None:
        options["token"] = config.token.reveal()
    if config.inbox_prefix is not None:
        options["inbox_prefix"] = config.inbox_prefix
    if config.creds is not None:
        options["user_credentials"] = config.creds
    if config.tls_ca or config.tls_cert:
        options["tls"] = await asyncio.to_thread(_tls_context, config)
    return options


async def confirm_interest(nc: NATS) -> None:
    """Return once the server has processed every SUB/UNSUB this client sent so far.

    nats-py (2.16) writes flush()'s PING ahead of SUBs still queued for its
    flusher task, so one PONG proves nothing; by the second PING the queued
    protocol lines have been written, and its PONG comes after the server
    processed them.
    """
    await nc.flush()
    await nc.flush()


class ConnectRefused(nats.errors.Error):
    """The server refused this client: authorization or TLS. The message says which, and
    names the user, never a password or token."""


def _refusal(config: NatsConfig, servers: list[str], exc: Exception) -> str | None:
    """What a refused connection attempt means to the user, or None if it was no refusal."""
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
        user = config.user or next(
            (urlsplit(s if "://" in s else f"nats://{s}").username for s in servers), None
        )
        who = f"user {user}" if user else "token" if config.token else "this client"
        return f"authorization violation for {who} (check nats.user/password, token or creds)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({exc.verify_message}); check nats.tls_ca"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    return None


async def _connect_unless(refused: asyncio.Event, options: dict[str, Any]) -> NATS:
    """`nats.connect(**options)`, given up once `refused` is set.

    After a failed TLS handshake at the first connect, nats-py 2.16 neither retries nor
    raises: it waits until the caller's timeout (measured: 30 s of nothing). A
    certificate the CA did not sign will not verify on the next attempt either.
    """
    connecting = asyncio.ensure_future(nats.connect(**options))
    waiting = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not connecting.done():
            connecting.cancel()
    try:
        return await connecting
    except asyncio.CancelledError:
        if not refused.is_set():
            raise  # the caller was cancelled, not the connect refused
        raise nats.errors.Error("TLS handshake failed") from None


async def connect(
    config: NatsConfig, url: str | None, name: str = "llm-es", *, keep_reconnecting: bool = True
) -> NATS:
    """Connect, failing within seconds when no server answers at start.

    A server that refuses the client (authorization, TLS) raises ConnectRefused
    saying so, rather than nats-py's "no servers available". With
    `keep_reconnecting` the client then reconnects without limit after losing
    the server (nats-py reads the option on every reconnect).
    """
    options = await connect_options(config, url, name)
    refusals: list[str] = []
    tls_refused = asyncio.Event()
    log_error = options["error_cb"]

    async def note_error(exc: Exception) -> None:
        reason = _refusal(config, options["servers"], exc)
        if reason is not None:
            refusals.append(reason)
        if isinstance(exc, ssl.SSLError):
            tls_refused.set()
        await log_error(exc)

    options["error_cb"] = note_error
    try:
        async with asyncio.timeout(INITIAL_CONNECT_SECONDS):
            nc = await _connect_unless(tls_refused, options)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        reason = _refusal(config, options["servers"], exc) or next(iter(refusals), None)
        if reason is None:
            raise
        raise ConnectRefused(reason) from None
    if keep_reconnecting:
        nc.options["max_reconnect_attempts"] = -1
    return nc


async def drain_subscription(subscription: Subscription) -> None:
    """Stop a subscription after handing on the messages already delivered to it.

    `unsubscribe()` would drop them: a request the server routed to this instance
    just before it stopped would go unanswered.
    """
    await subscription.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
