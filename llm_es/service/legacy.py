"""The seed plugin's deprecated `llm.request` interface, kept so old callers keep working.

A request is `{"action": "chat"|"complete"|"reset", "channel_id", "message", "username"}`
published on `llm.request` (queue group `llm-es`). The answer is published on
`llm.response` (`success: true`) or `llm.error` (`success: false`), and also
sent to the message's reply subject when it has a safe one. Requirements:
`chat` needs `channel_id` and `message`, `complete` needs `message`, `reset`
needs `channel_id`; `username` is optional as in the seed (a chat or reset
without one is booked to `User`, the seed's default; a completion without one
to the service identity). Each caller is logged as deprecated once.
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
from llm_es.errors import LLMESError, OperationalError, ValidationError
from llm_es.logs import log_kv
from llm_es.service.chat import ChatService, Outcome
from llm_es.service.commands import MAX_IN_FLIGHT, QUEUE_GROUP
from llm_es.service.decoding import decode_request, loose_object
from llm_es.service.requests import LegacyRequest, check_reply_subject
from llm_es.store.connection import confirm_interest, drain_subscription
from llm_es.tasks import TaskPool

logger = logging.getLogger("llm_es.service.legacy")

REQUEST_SUBJECT = "llm.request"
RESPONSE_SUBJECT = "llm.response"
ERROR_SUBJECT = "llm.error"
DEFAULT_USERNAME = "User"
"""Whom the seed booked a chat without `username` to; kept for the same callers."""
MAX_REMEMBERED_CALLERS = 10_000
"""Callers already warned about; past this many the set starts over (a repeat warning, no leak)."""
ANONYMOUS_CALLER = "(no username)"


class LegacySurface:
    """Subscribes `llm.request` and answers each request once on `llm.response` / `llm.error`."""

    def __init__(self, nc: NATS, service: ChatService, config: Config) -> None:
        self._nc = nc
        self._service = service
        self._config = config
        self._subscription: Subscription | None = None
        self._pool = TaskPool(MAX_IN_FLIGHT)
        self._warned: set[str] = set()

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            REQUEST_SUBJECT, queue=QUEUE_GROUP, cb=self._dispatch
        )
        await confirm_interest(self._nc)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop taking requests, then let the ones in flight finish (bounded)."""
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await drain_subscription(self._subscription)  # answer what was already delivered
                # The UNSUB must reach the server before "stopped" is true.
                await confirm_interest(self._nc)
            self._subscription = None
        await self._pool.drain(grace_seconds)

    async def _dispatch(self, msg: Msg) -> None:
        await self._pool.spawn(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        reply_to: str | None = None
        try:
            if msg.reply:
                reply_to = check_reply_subject("reply subject", msg.reply, self._config)
            request = decode_request(msg.data, LegacyRequest, self._config)
            self._warn_deprecated(request.username)
            answer = await self._run(request)
        except ValidationError as exc:
            self._warn_deprecated(loose_object(msg.data).get("username"))
            answer = self._error(msg.data, str(exc))
            log_kv(logger, "legacy_request_invalid", level=logging.WARNING, error=str(exc))
        except OperationalError as exc:
            answer = self._error(msg.data, f"The chat service is busy or degraded: {exc}")
            log_kv(logger, "legacy_request_failed", level=logging.WARNING, error=str(exc))
        except (LLMESError, TimeoutError) as exc:
            error = "The chat service failed to handle this request; try again"
            answer = self._error(msg.data, error)
            log_kv(logger, "legacy_request_failed", level=logging.ERROR, error=repr(exc))
        except Exception as exc:  # a bug must not kill the handler; it is logged in full
            logger.exception("legacy_request_crashed")
            answer = self._error(msg.data, f"Internal error ({type(exc).__name__}); try again")
        subject = RESPONSE_SUBJECT if answer["success"] else ERROR_SUBJECT
        payload = orjson.dumps(answer)
        for target in (subject, reply_to):
            if target is None:
                continue
            try:
                await self._nc.publish(target, payload)
            except nats.errors.Error as exc:
                log_kv(logger, "legacy_reply_failed", level=logging.WARNING, error=repr(exc))

    def _error(self, data: bytes, error: str) -> dict[str, Any]:
        """An `llm.error` answer echoing what can be read of the request (short strings only)."""
        body = loose_object(data)

        def echoed(field: str) -> str | None:
            value = body.get(field)
            if isinstance(value, str) and len(value) <= self._config.service.max_name_length:
                return value
            return None

        return {
            "type": "llm_error",
            "action": echoed("action"),
            "channel_id": echoed("channel_id"),
            "username": echoed("username"),
            "success": False,
            "error": error,
        }

    async def _run(self, request: LegacyRequest) -> dict[str, Any]:
        service = self._service
        message = request.message or ""  # LegacyRequest.check: non-blank unless a reset
        if request.action == "chat":
            assert request.channel_id is not None
            outcome = await service.chat(
                channel=request.channel_id,
                user=request.username or DEFAULT_USERNAME,
                message=message,
                source="legacy",
            )
        elif request.action == "complete":
            outcome = await service.complete(
                messages=[{"role": "user", "content": message}],
                user=request.username,
                source="legacy",
            )
        else:
            assert request.channel_id is not None
            outcome = await service.reset(
                channel=request.channel_id, user=request.username or DEFAULT_USERNAME
            )
        return _answer(request, outcome)

    def _warn_deprecated(self, username: object) -> None:
        """Log once per caller (by `username`) that `llm.request` is deprecated."""
        caller = username if isinstance(username, str) and username else ANONYMOUS_CALLER
        caller = caller[: self._config.service.max_name_length]
        if caller in self._warned:
            return
        if len(self._warned) >= MAX_REMEMBERED_CALLERS:
            self._warned.clear()
        self._warned.add(caller)
        log_kv(
            logger,
            "legacy_request_deprecated",
            level=logging.WARNING,
            caller=caller,
            subject=REQUEST_SUBJECT,
            use_instead="rosey.llm.chat / rosey.llm.complete",
        )


def _answer(request: LegacyRequest, outcome: Outcome) -> dict[str, Any]:
    common = {
        "action": request.action,
        "channel_id": request.channel_id or None,  # `complete` ignores an empty one
        "username": request.username,
    }
    if not outcome.success:
        return {
            "type": "llm_error",
            **common,
            "success": False,
            "error": outcome.message,
            **{k: v for k, v in outcome.data.items() if k in ("turn_id", "reason", "provider")},
        }
    answer: dict[str, Any] = {
        "type": "llm_response",
        **common,
        "success": True,
        "content": outcome.message,
        "message": outcome.message,
    }
    for key in ("tokens_used", "provider", "model", "turn_id"):
        if key in outcome.data:
            answer[key] = outcome.data[key]
    return answer
