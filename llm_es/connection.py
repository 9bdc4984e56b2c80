"""Connecting to NATS with the configured auth and TLS, the same way for every command."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS

from llm_es.config import NatsConfig

DEFAULT_LOCAL_URL = "nats://127.0.0.1:4222"


def _tls_context(config: NatsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls_ca)
    if config.tls_cert and config.tls_key:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def connect_options(config: NatsConfig, url: str | None, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (certificate files are read off the loop)."""
    servers = [s.strip() for s in url.split(",")] if url else list(config.servers)
    options: dict[str, Any] = {
        "servers": servers or [DEFAULT_LOCAL_URL],
        "name": name,
        "connect_timeout": 5,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
    }
    if config.user is not None and config.password is not None:
        options["user"] = config.user
        options["password"] = config.password.reveal()
    if config.token is not None:
        options["token"] = config.token.reveal()
    if config.creds is not None:
        options["user_credentials"] = config.creds
    if config.tls_ca or config.tls_cert:
        options["tls"] = await asyncio.to_thread(_tls_context, config)
    return options


async def connect(config: NatsConfig, url: str | None, name: str = "llm-es") -> NATS:
    """Connect, failing fast when no server answers at start."""
    options = await connect_options(config, url, name)
    return await nats.connect(**options, allow_reconnect=True)
