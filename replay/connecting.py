"""Connecting the replay tools to NATS the way `llm-es` does, here or again in a child process.

`connect` takes the loaded config and a `ConnectRecipe`: the config file, the
`--nats-url` and the `--data-dir` the command was given, all a child process
needs to make the same connection (with no server named, the embedded server's
credentials kept in the data dir). `Config` does not pickle (its mappings are read-only
proxies), so the child reads the file again; it inherits the environment, so
the `LLM_ES_*` overrides apply to it the same.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from llm_es.chat_client import CONNECT_ERRORS, cannot_connect
from llm_es.cli_options import data_dir
from llm_es.config import Config, load_config_sync
from llm_es.local_access import with_local_access
from llm_es.store.connection import DEFAULT_LOCAL_URL
from llm_es.store.connection import connect as connect_to_nats
from replay.errors import LogUnavailable

CLIENT_NAME = "llm-replay"


@dataclass(frozen=True, slots=True)
class ConnectRecipe:
    """How to connect like the command did: its config file (None: defaults), URL and data
    dir options."""

    config_path: pathlib.Path | None = None
    nats_url: str | None = None
    data_dir: pathlib.Path | None = None

    def load_config(self) -> Config:
        """The command's config, read again, with the embedded server's credentials when it
        names no server (synchronous: call it before the event loop)."""
        config = load_config_sync(self.config_path)
        return with_local_access(config, self.nats_url, data_dir(self.data_dir))


async def connect(config: Config, recipe: ConnectRecipe) -> NATS:
    """Connect like `llm-es` does (same options, auth and TLS), failing within seconds
    with LogUnavailable and `llm-es`'s message."""
    url = recipe.nats_url or config.nats.url or DEFAULT_LOCAL_URL
    try:
        return await connect_to_nats(config.nats, url, CLIENT_NAME, keep_reconnecting=False)
    except CONNECT_ERRORS as exc:
        reason = cannot_connect(config, recipe.nats_url, exc).removeprefix("llm-es: ")
        raise LogUnavailable(reason) from exc
