"""Connecting the replay tools to NATS the way `llm-es` does, here or again in a child process.

`connect` takes the loaded config and a `ConnectRecipe`: the config file and
the `--nats-url` the command was given, all a child process needs to make the
same connection. `Config` does not pickle (its mappings are read-only
proxies), so the child reads the file again; it inherits the environment, so
the `LLM_ES_*` overrides apply to it the same.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from llm_es.chat_client import CONNECT_ERRORS, cannot_connect
from llm_es.config import Config, load_config_sync
from llm_es.store.connection import DEFAULT_LOCAL_URL
from llm_es.store.connection import connect as connect_to_nats
from replay.errors import LogUnavailable

CLIENT_NAME = "llm-replay"


@dataclass(frozen=True, slots=True)
class ConnectRecipe:
    """How to connect like the command did: its config file (None: defaults) and URL option."""

    config_path: pathlib.Path | None = None
    nats_url: str | None = None

    def load_config(self) -> Config:
        """The command's config, read again (synchronous: call it before the event loop)."""
        return load_config_sync(self.config_path)


async def connect(config: Config, recipe: ConnectRecipe) -> NATS:
    """Connect like `llm-es` does (same options, auth and TLS), failing within seconds
    with LogUnavailable and `llm-es`'s message."""
    url = recipe.nats_url or config.nats.url or DEFAULT_LOCAL_URL
    try:
        return await connect_to_nats(config.nats, url, CLIENT_NAME, keep_reconnecting=False)
    except CONNECT_ERRORS as exc:
        reason = cannot_connect(config, recipe.nats_url, exc).removeprefix("llm-es: ")
        raise LogUnavailable(reason) from exc
