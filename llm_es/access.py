"""Who may do what on NATS: an llm-es deployment's least-privilege users, as nats-server config.

Four permission sets, one account: `llmes` (the plugin, and the operator tools
run as it), `bot` (sends `!chat` commands), `plugins` (the `rosey.llm.*`
service and `rosey.event.llm.*`), `auditor` (reads the log and the views).
`render_server_config` writes them in nats-server's config syntax, passwords as
`$VARIABLES` the server takes from its environment: `deploy/nats-server.conf`
is its output (`python -m llm_es.access`), and `llm-es serve` runs its embedded
server with the same sets (see `llm_es.local_access`).

Subject permissions match whole tokens only, so the views' blue/green buckets
(`llm_data`, `llm_data_2`, ...) and the KV streams behind them (`KV_llm_*`)
cannot be named by prefix: `llmes` gets the JetStream API by operation, for
every stream of its account, and only the log's deletion and purge are denied.
Keep other applications' streams out of that account.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "AUDITOR",
    "AUDITOR_INBOX",
    "BOT",
    "LOCAL_CLIENT",
    "PLUGIN",
    "PLUGINS",
    "PLUGIN_INBOX",
    "Permissions",
    "User",
    "deploy_users",
    "render_server_config",
]

PLUGIN_INBOX = "_INBOX_llmes"
"""The plugin's own reply inboxes: only `llmes` may subscribe there, so no one else sees
its JetStream and KV answers (which carry chat text)."""
AUDITOR_INBOX = "_INBOX_audit"
RESPONSES_MAX = 10_000
"""Messages llmes may send to one request's reply subject: a streamed chat sends a chunk
per piece of the provider's answer, then the final reply."""
RESPONSES_EXPIRE = "10m"
"""How long after a request it may still answer (a turn with retries and a fallback
provider stays well inside it). The server keeps an entry per message delivered to llmes
for this long (its catch-up reads included): a longer expiry costs server memory."""

LOG_STREAM = "LLM_EVENTS"
LOG_SUBJECTS = "llm.ev.>"
JS_API = "$JS.API"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one user may publish and subscribe to (nats-server `permissions`)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    allow_responses: bool = False
    """Answer each request it receives with up to RESPONSES_MAX messages."""

    def merged(self, other: Permissions) -> Permissions:
        """Both sets' grants (the denies of either stay)."""
        return Permissions(
            publish=_union(self.publish, other.publish),
            subscribe=_union(self.subscribe, other.subscribe),
            deny_publish=_union(self.deny_publish, other.deny_publish),
            allow_responses=self.allow_responses or other.allow_responses,
        )


@dataclass(frozen=True, slots=True)
class User:
    """One `authorization.users` entry; `password` is written as is (a `$VARIABLE`)."""

    name: str
    password: str
    permissions: Permissions
    comment: str = ""


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subject for group in groups for subject in group))


def _log_reads(stream: str) -> tuple[str, ...]:
    """The JetStream API calls that read `stream` (info, direct and stored gets, consumers)."""
    return (
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        # nats-py names the consumer and its filter in the subject (server >= 2.9).
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        # Flow control and heartbeats of push (ordered) consumers are answered here.
        f"$JS.FC.{stream}.>",
    )


PLUGIN = Permissions(
    publish=(
        LOG_SUBJECTS,
        "rosey.event.llm.>",
        "llm.response",
        "llm.error",
        f"{JS_API}.INFO",
        *_log_reads("*"),
        f"{JS_API}.STREAM.CREATE.*",
        f"{JS_API}.STREAM.UPDATE.*",
        # `llm-replay rebuild` deletes the views generation before the one it replaced.
        f"{JS_API}.STREAM.DELETE.*",
        "$KV.*.>",
        # `llm-es status` run as llmes: `$SRV.PING` and `$SRV.STATS`.
        "$SRV.>",
    ),
    deny_publish=(
        f"{JS_API}.STREAM.DELETE.{LOG_STREAM}",
        f"{JS_API}.STREAM.PURGE.{LOG_STREAM}",
        f"{JS_API}.STREAM.MSG.DELETE.{LOG_STREAM}",
    ),
    subscribe=(
        "rosey.command.>",
        "rosey.llm.>",
        "llm.request",
        "$SRV.>",
        f"{PLUGIN_INBOX}.>",
    ),
    allow_responses=True,
)
"""The plugin: the log, its KV buckets, the command and service subjects; never the
log's deletion or purge. Answers go back through `allow_responses`."""

BOT = Permissions(publish=("rosey.command.>",), subscribe=("_INBOX.>",))
"""The chat bot: sends commands, reads the answers on its inbox."""

PLUGINS = Permissions(
    publish=("rosey.llm.>", "$SRV.>"),
    subscribe=("rosey.event.llm.>", "_INBOX.>"),
)
"""Other plugins: the `rosey.llm.*` service (and its `$SRV` discovery), the events."""

AUDITOR = Permissions(
    publish=(
        f"{JS_API}.INFO",
        # The log, and for `llm-replay verify` the live views: the pointer (`KV_llm_meta`)
        # and the bucket it names (`KV_llm_data_<n>`, not nameable by prefix).
        *_log_reads("*"),
    ),
    subscribe=(LOG_SUBJECTS, f"{AUDITOR_INBOX}.>"),
)
"""Read-only: the log (`llm-replay verify|audit|tail|export|state`), live `llm.ev.>`, the
views' buckets for `verify`; no publish on any data subject."""

LOCAL_CLIENT = BOT.merged(PLUGINS).merged(
    Permissions(publish=("llm.request",), subscribe=("llm.response", "llm.error"))
)
"""An anonymous client of the embedded server: everything a bot or plugin does today
(commands, `rosey.llm.*`, `rosey.event.llm.*`, the legacy `llm.*` subjects), no log, no KV."""


def deploy_users() -> list[User]:
    """The four users of `deploy/nats-server.conf`, passwords from the server's environment."""
    return [
        User(
            "llmes",
            "$LLMES_PASSWORD",
            PLUGIN,
            f"the plugin: connect with inbox_prefix {PLUGIN_INBOX}",
        ),
        User("bot", "$BOT_PASSWORD", BOT, "the chat bot"),
        User("plugins", "$PLUGINS_PASSWORD", PLUGINS, "other plugins"),
        User(
            "auditor",
            "$AUDITOR_PASSWORD",
            AUDITOR,
            f"llm-replay verify/audit/tail: connect with inbox_prefix {AUDITOR_INBOX}",
        ),
    ]


def _strings(subjects: Sequence[str], indent: str) -> str:
    """A config array, one subject a line (short ones on one line)."""
    quoted = [json.dumps(subject) for subject in subjects]
    if len(quoted) <= 2:
        return "[" + ", ".join(quoted) + "]"
    inner = "".join(f"\n{indent}  {each}" for each in quoted)
    return f"[{inner}\n{indent}]"


def _render_user(user: User) -> list[str]:
    permissions = user.permissions
    indent = " " * 10
    lines = [f"    # {user.comment}"] if user.comment else []
    lines += [
        "    {",
        f"      user: {json.dumps(user.name)}",
        f"      password: {user.password}",
        "      permissions: {",
        "        publish: {",
        f"{indent}allow: {_strings(permissions.publish, indent)}",
    ]
    if permissions.deny_publish:
        lines.append(f"{indent}deny: {_strings(permissions.deny_publish, indent)}")
    lines += [
        "        }",
        f"        subscribe: {{allow: {_strings(permissions.subscribe, indent)}}}",
    ]
    if permissions.allow_responses:
        lines.append(
            f'        allow_responses: {{max: {RESPONSES_MAX}, expires: "{RESPONSES_EXPIRE}"}}'
        )
    lines += ["      }", "    }"]
    return lines


def render_server_config(
    users: Sequence[User], *, no_auth_user: str | None = None, header: str = ""
) -> str:
    """A nats-server config holding `users` (one account) and, if given, the user an
    anonymous connection becomes (`no_auth_user`)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += ["authorization {", "  users: ["]
    for user in users:
        lines += _render_user(user)
    lines += ["  ]", "}"]
    if no_auth_user is not None:
        lines.append(f"no_auth_user: {json.dumps(no_auth_user)}")
    return "\n".join(lines) + "\n"


DEPLOY_HEADER = """\
Least-privilege users for llm-es (generated by `python -m llm_es.access`; see docs/security.md).
Passwords come from the server's environment: LLMES_PASSWORD, BOT_PASSWORD,
PLUGINS_PASSWORD, AUDITOR_PASSWORD (start with a letter, e.g. `pw` + `openssl rand -hex 24`).
Run: nats-server -js -c nats-server.conf (or include this file from your own config).
"""


if __name__ == "__main__":
    print(render_server_config(deploy_users(), header=DEPLOY_HEADER), end="")
