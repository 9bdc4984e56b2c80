"""Access control of the embedded nats-server: its users, its credentials file, who reads it.

On first start `llm-es serve` generates a password for the plugin's user `llmes` and
keeps it in `<data dir>/nats-access.json` (mode 0600) with the server's URL; later
starts reuse it. A client that connects without credentials (the bot, other plugins,
`llm-es chat`) becomes user `bot` (nats-server's `no_auth_user`) with a client's
permissions only (`llm_es.access.LOCAL_CLIENT`): commands, `rosey.llm.*`,
`rosey.event.llm.*`, inboxes; never the log, the KV buckets, or the stream API.
Operator tools (`llm-es status`, `llm-replay`) given no server read the file and
connect as `llmes`.

Configured `nats.user` + `nats.password` replace the generated pair (nothing is
stored); a configured `nats.token` makes the server require that token from every
client (nats-server has no anonymous user beside a token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import secrets
from typing import Any

from llm_es.access import LOCAL_CLIENT, PLUGIN, PLUGIN_INBOX, Permissions, User
from llm_es.access import render_server_config as render_users
from llm_es.config import Config, NatsConfig, Secret
from llm_es.errors import ConfigError

__all__ = [
    "ACCESS_FILE",
    "CLIENT_USER",
    "PLUGIN_USER",
    "EmbeddedAccess",
    "prepare_embedded_access",
    "record_url",
    "with_local_access",
]

ACCESS_FILE = "nats-access.json"
"""In the data dir: `{"url", "user", "password", "inbox_prefix"}` of the plugin's user, 0600."""
SERVER_CONFIG_FILE = "nats-server-access.conf"
"""In the data dir: the embedded server's users (holds their passwords: 0600)."""
PLUGIN_USER = "llmes"
CLIENT_USER = "bot"
PRIVATE = 0o600


@dataclasses.dataclass(frozen=True, slots=True)
class EmbeddedAccess:
    """How the embedded server is told its users, and how the plugin then connects."""

    server_config: pathlib.Path
    """The config file to start nats-server with (`-c`)."""
    plugin: NatsConfig
    """The plugin's connection settings (user, password, inbox prefix)."""
    generated: bool
    """Whether the password is the generated one kept in `ACCESS_FILE`."""


def _write_private(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` readable by this user only, replacing it in one step."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _read_access(data_dir: pathlib.Path) -> dict[str, Any] | None:
    try:
        stored = json.loads((data_dir / ACCESS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(str(data_dir / ACCESS_FILE), f"unreadable: {exc}") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("password"), str):
        raise ConfigError(str(data_dir / ACCESS_FILE), "no password in it")
    return stored


def _generated_password() -> str:
    # A letter first, then hex: the same shape as deploy/'s environment variables want.
    return "pw" + secrets.token_hex(24)


def prepare_embedded_access(config: Config, data_dir: pathlib.Path) -> EmbeddedAccess:
    """Write the embedded server's users (generating the plugin's password on first
    start) and say how the plugin connects. Blocking file I/O: run it off the loop."""
    nats = config.nats
    if nats.creds is not None:
        raise ConfigError(
            "nats.creds", "needs nats.url (the embedded server takes user/password or a token)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    server_config = data_dir / SERVER_CONFIG_FILE
    if nats.token is not None:
        text = f"authorization {{ token: {json.dumps(nats.token.reveal())} }}\n"
        _write_private(server_config, text)
        return EmbeddedAccess(server_config, nats, generated=False)
    generated = nats.user is None or nats.password is None
    if nats.user is not None and nats.password is not None:
        user, password = nats.user, nats.password.reveal()
    else:
        stored = _read_access(data_dir)
        user = PLUGIN_USER
        password = stored["password"] if stored else _generated_password()
    inbox_prefix = nats.inbox_prefix or PLUGIN_INBOX
    replies = tuple(f"{prefix}.>" for prefix in config.service.reply_prefixes)
    # `_INBOX.>` too: a `!chat` sent without a reply subject names its `reply_to` in the
    # payload, which works with every local bot today.
    answers = ("_INBOX.>", *replies)
    plugin_permissions = PLUGIN.merged(
        Permissions(publish=answers, subscribe=(f"{inbox_prefix}.>",))
    )
    client_permissions = LOCAL_CLIENT.merged(Permissions(publish=(), subscribe=replies))
    users = [
        User(user, json.dumps(password), plugin_permissions),
        # Its password is never used: clients without credentials become this user.
        User(CLIENT_USER, json.dumps(_generated_password()), client_permissions),
    ]
    _write_private(server_config, render_users(users, no_auth_user=CLIENT_USER))
    plugin = dataclasses.replace(
        nats, user=user, password=Secret(password), inbox_prefix=inbox_prefix
    )
    return EmbeddedAccess(server_config, plugin, generated=generated)


def record_url(data_dir: pathlib.Path, access: EmbeddedAccess, url: str) -> None:
    """Keep the generated credentials and the server's URL now in `ACCESS_FILE` (0600)."""
    if not access.generated:
        return
    password = access.plugin.password
    assert password is not None
    body = {
        "url": url,
        "user": access.plugin.user,
        "password": password.reveal(),
        "inbox_prefix": access.plugin.inbox_prefix,
    }
    _write_private(data_dir / ACCESS_FILE, json.dumps(body, indent=2) + "\n")


def with_local_access(config: Config, nats_url: str | None, data_dir: pathlib.Path) -> Config:
    """`config` connecting as the embedded server's `llmes` when it names no server and no
    credentials and `data_dir` holds them; else `config` as it is. Blocking file I/O."""
    nats = config.nats
    configured = (nats_url, nats.url, nats.user, nats.token, nats.creds)
    if any(setting is not None for setting in configured):
        return config
    stored = _read_access(data_dir)
    if stored is None:
        return config
    local = dataclasses.replace(
        nats,
        url=str(stored.get("url") or "") or None,
        user=str(stored.get("user") or PLUGIN_USER),
        password=Secret(stored["password"]),
        inbox_prefix=str(stored.get("inbox_prefix") or PLUGIN_INBOX),
    )
    return dataclasses.replace(config, nats=local)
