"""The `!chat` command surface: `rosey.command.chat` and `.remember|recall|forget` on NATS.

Each message is handled in its own task (bounded), so one slow model call
never holds up other channels. Replies go to the message's reply subject, or
else to the payload's `reply_to`: `{"success": true, "result": {"message": ...}}`
or `{"success": false, "error": ...}`. Either must be an inbox (`_INBOX.>`) or
under a configured `service.reply_prefixes`; a command naming any other is
refused, runs nothing, and is answered only where an answer may go. Nothing a
caller sends can kill a handler.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llm_es.config import Config
from llm_es.domain import replies
from llm_es.domain.commands import SUBCOMMANDS, ChatCommand, parse_chat_args
from llm_es.errors import LLMESError, OperationalError, ValidationError
from llm_es.logs import log_kv
from llm_es.service.chat import ChatService, Outcome
from llm_es.service.decoding import loose_object
from llm_es.service.requests import (
    CommandRequest,
    allowed_reply_subject,
    check_reply_subject,
    parse_command,
)
from llm_es.store.connection import confirm_interest, drain_subscription
from llm_es.tasks import TaskPool

logger = logging.getLogger(__name__)

COMMAND_SUBJECT = "rosey.command.chat"
QUEUE_GROUP = "llm-es"
MAX_IN_FLIGHT = 512

COMMAND_USAGE = {
    "remember": "!chat remember <fact>",
    "recall": "!chat recall <query>",
    "forget": "!chat forget <id>",
}
"""How to use the subcommands that need an argument: said when one comes without it."""


def success_reply(outcome: Outcome) -> dict[str, Any]:
    return {"success": True, "result": {"message": outcome.message, **outcome.data}}


def error_reply(error: str, **data: Any) -> dict[str, Any]:
    return {"success": False, "error": error, **data}


class CommandSurface:
    """Subscribes the command subjects and answers each command exactly once."""

    def __init__(self, nc: NATS, service: ChatService, config: Config) -> None:
        self._nc = nc
        self._service = service
        self._config = config
        self._subscriptions: list[Subscription] = []
        self._pool = TaskPool(MAX_IN_FLIGHT)

    async def start(self) -> None:
        self._subscriptions.append(
            await self._nc.subscribe(COMMAND_SUBJECT, queue=QUEUE_GROUP, cb=self._dispatch)
        )
        for name in SUBCOMMANDS:
            self._subscriptions.append(
                await self._nc.subscribe(
                    f"{COMMAND_SUBJECT}.{name}", queue=QUEUE_GROUP, cb=self._dispatch
                )
            )
        # The server must know the subscriptions before anyone is told we are ready.
        await confirm_interest(self._nc)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop taking commands, then let the ones in flight finish (bounded)."""
        # drain, not unsubscribe: a command the server already delivered to this
        # instance is still answered (an unsubscribe would drop it unanswered).
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await drain_subscription(subscription)
        self._subscriptions.clear()
        await self._pool.drain(grace_seconds)

    async def _dispatch(self, msg: Msg) -> None:
        await self._pool.spawn(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        config = self._config
        reply_to: str | None = None
        try:
            if msg.reply:
                # A NATS reply subject is chosen by the sender too: the same rule as `reply_to`.
                reply_to = check_reply_subject("reply subject", msg.reply, config)
            request = parse_command(msg.data, config)
            reply_to = reply_to or request.reply_to
            subcommand = msg.subject[len(COMMAND_SUBJECT) + 1 :] or None
            answer = await self._run(request, subcommand)
        except ValidationError as exc:
            # Refused before anything ran; the error goes where an answer may go, if anywhere.
            if reply_to is None:
                reply_to = allowed_reply_subject(loose_object(msg.data).get("reply_to"), config)
            answer = error_reply(str(exc))
            log_kv(logger, "command_invalid", level=logging.WARNING, error=str(exc))
        except OperationalError as exc:
            answer = error_reply(f"The chat service is busy or degraded: {exc}")
            log_kv(logger, "command_failed", level=logging.WARNING, error=str(exc))
        except (LLMESError, TimeoutError) as exc:
            answer = error_reply("The chat service failed to handle this command; try again")
            log_kv(logger, "command_failed", level=logging.ERROR, error=repr(exc))
        except Exception as exc:  # a bug must not kill the handler; it is logged in full
            logger.exception("command_crashed subject=%s", msg.subject)
            answer = error_reply(f"Internal error ({type(exc).__name__}); try again")
        await self._reply(reply_to, answer)

    async def _run(self, request: CommandRequest, subcommand: str | None) -> dict[str, Any]:
        command = (
            ChatCommand(subcommand, request.args.strip())
            if subcommand in SUBCOMMANDS
            else parse_chat_args(request.args)
        )
        try:
            outcome = await self._outcome(command, request)
        except ValidationError as exc:
            usage = COMMAND_USAGE.get(command.name)
            if usage is None or command.argument.strip():
                raise
            # The service says what is missing; how to write it is this surface's syntax.
            raise ValidationError(f"{exc}. Usage: {usage}", exc.field) from exc
        if outcome.success:
            return success_reply(outcome)
        return error_reply(outcome.message)

    async def _outcome(self, command: ChatCommand, request: CommandRequest) -> Outcome:
        service = self._service
        channel, user = request.channel, request.user
        if command.name == "help":
            return Outcome.ok(replies.HELP)
        if command.name == "reset":
            return await service.reset(channel=channel, user=user)
        if command.name == "persona":
            return await service.persona(channel=channel, user=user, name=command.argument)
        if command.name == "remember":
            return await service.remember(
                channel=channel,
                user=user,
                content=command.argument,
                request_id=request.request_id,
            )
        if command.name == "recall":
            return await service.recall(channel=channel, user=user, query=command.argument)
        if command.name == "forget":
            return await service.forget(channel=channel, user=user, memory_id=command.argument)
        return await service.chat(
            channel=channel, user=user, message=command.argument, request_id=request.request_id
        )

    async def _reply(self, subject: str | None, answer: dict[str, Any]) -> None:
        if subject is None:
            log_kv(logger, "reply_dropped", level=logging.WARNING, reason="no reply subject")
            return
        try:
            await self._nc.publish(subject, orjson.dumps(answer))
        except nats.errors.Error as exc:
            log_kv(logger, "reply_failed", level=logging.WARNING, error=repr(exc))
