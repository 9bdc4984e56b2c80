"""The plugin-to-plugin service: `rosey.llm.*` request/reply on the NATS micro framework.

Endpoints (queue group `llm-es`, so instances share the load; discoverable
through `$SRV.PING|INFO|STATS`):

    rosey.llm.chat            ChatRequest -> ChatResponse (optionally streamed)
    rosey.llm.complete        CompletionRequest -> CompletionResponse
    rosey.llm.summarize       SummarizeRequest -> SummaryResponse
    rosey.llm.memory.add      MemoryAddRequest -> MemoryResponse
    rosey.llm.memory.recall   MemoryRecallRequest -> MemoryResponse
    rosey.llm.memory.forget   MemoryForgetRequest -> MemoryResponse
    rosey.llm.persona.get     PersonaGetRequest -> PersonaResponse
    rosey.llm.persona.set     PersonaSetRequest -> PersonaResponse
    rosey.llm.status          StatusRequest -> StatusResponse
    rosey.llm.usage           UsageRequest -> UsageResponse

Bodies carry exactly the fields of the seed's dataclasses (DESIGN.md "Seed
schemas"), every one of them, because other plugins read them with
`Class(**json)`, which refuses any other keyword. What llm-es knows beyond
them travels in headers (`Llm-Turn-Id`, `Llm-Model`). Errors are in-band
(`success: false`, `error` naming the field or the problem) and also in the
micro framework's `Nats-Service-Error` / `Nats-Service-Error-Code` headers,
which are the only place for them in replies whose schema has no `error`
(status, usage). A streamed chat (`"stream": true`) sends `{"chunk": text,
"index": n}` messages to the reply subject as they arrive, then the final
ChatResponse (the one message without `chunk`). This module is the service and its
dispatch; the bodies are `requests.py` (in) and `seed_replies.py` (out), the
health behind `status` is `health.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service

from llm_es import __version__
from llm_es.config import Config
from llm_es.errors import LLMESError, OperationalError, ValidationError
from llm_es.logs import log_kv
from llm_es.service.chat import ChatService
from llm_es.service.decoding import PayloadT, decode_request
from llm_es.service.health import HealthProbe, ReaderCheck, ViewsStall
from llm_es.service.requests import (
    ChatRequest,
    CompletionRequest,
    MemoryAddRequest,
    MemoryForgetRequest,
    MemoryRecallRequest,
    PersonaGetRequest,
    PersonaSetRequest,
    SummarizeRequest,
    UsageRequest,
    is_safe_reply_subject,
)
from llm_es.service.seed_replies import (
    CHAT_ERROR,
    COMPLETION_ERROR,
    MEMORY_ERROR,
    PERSONA_ERROR,
    STATUS_ERROR,
    SUMMARY_ERROR,
    USAGE_ERROR,
    Reply,
    completion_reply,
    error_reply,
    memory_reply,
    persona_reply,
    summary_reply,
)
from llm_es.store.connection import confirm_interest
from llm_es.store.log import EventStore
from llm_es.tasks import TaskPool

logger = logging.getLogger("llm_es.service.api")

SERVICE_NAME = "rosey-llm"
SUBJECT_PREFIX = "rosey.llm"
QUEUE_GROUP = "llm-es"
ADMISSION_STATS_ENDPOINT = "chat"
"""The endpoint whose `$SRV.STATS` data carries the instance's admission counters."""
MAX_IN_FLIGHT = 512
# The seed's defaults, for a field left out or null (DESIGN.md "Seed schemas").
DEFAULT_TEMPERATURE = 0.7
DEFAULT_SUMMARY_WORDS = 200
DEFAULT_SUMMARY_STYLE = "concise"
DEFAULT_CATEGORY = "fact"
SEED_DEFAULT_IMPORTANCE = 1
"""Not the domain's default (3, for `!chat remember`): the seed's, for `memory.add`."""
DEFAULT_RECALL_LIMIT = 5

Handler = Callable[[Request], Awaitable[Reply]]


class LLMServiceAPI:
    """The `rosey.llm.*` endpoints of one instance."""

    def __init__(
        self,
        nc: NATS,
        service: ChatService,
        store: EventStore,
        config: Config,
        *,
        readers: Mapping[str, ReaderCheck],
        views_position: Callable[[], int],
    ) -> None:
        """`readers` and `views_position` tell `status` when a reader of the log is down."""
        self._nc = nc
        self._chat = service
        self._config = config
        self._micro: Service | None = None
        self._pool = TaskPool(MAX_IN_FLIGHT)
        self._started = time.monotonic()
        self._health = HealthProbe(
            service, store, readers=readers, views=ViewsStall(views_position)
        )
        self._endpoints: dict[str, tuple[Handler, dict[str, Any]]] = {
            "chat": (self._chat_endpoint, CHAT_ERROR),
            "complete": (self._complete_endpoint, COMPLETION_ERROR),
            "summarize": (self._summarize_endpoint, SUMMARY_ERROR),
            "memory.add": (self._memory_add_endpoint, MEMORY_ERROR),
            "memory.recall": (self._memory_recall_endpoint, MEMORY_ERROR),
            "memory.forget": (self._memory_forget_endpoint, MEMORY_ERROR),
            "persona.get": (self._persona_get_endpoint, PERSONA_ERROR),
            "persona.set": (self._persona_set_endpoint, PERSONA_ERROR),
            "status": (self._status_endpoint, STATUS_ERROR),
            "usage": (self._usage_endpoint, USAGE_ERROR),
        }

    async def start(self) -> None:
        await self._health.start()
        self._micro = await add_service(
            self._nc,
            name=SERVICE_NAME,
            version=__version__,
            description="LLM chat, completions, summaries and memories for Rosey-Robot plugins",
            queue_group=QUEUE_GROUP,
            stats_handler=self._stats_data,
        )
        for name in self._endpoints:
            await self._micro.add_endpoint(
                EndpointConfig(
                    name=name.replace(".", "_"),
                    subject=f"{SUBJECT_PREFIX}.{name}",
                    queue_group=QUEUE_GROUP,
                    handler=self._dispatcher(name),
                )
            )
        await confirm_interest(self._nc)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        if self._micro is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._micro.stop()
            self._micro = None
        await self._health.stop()
        await self._pool.drain(grace_seconds)

    # ------------------------------------------------------------ dispatch

    def _dispatcher(self, name: str) -> Callable[[Request], Awaitable[None]]:
        handler, error_shape = self._endpoints[name]

        async def dispatch(request: Request) -> None:
            # The micro framework awaits handlers one at a time per endpoint; each
            # request runs in its own task so a slow model never queues the rest.
            await self._pool.spawn(self._answer(name, handler, error_shape, request))

        return dispatch

    async def _answer(
        self, name: str, handler: Handler, error_shape: dict[str, Any], request: Request
    ) -> None:
        # nats.micro's Request does not expose the reply subject; its message does.
        reply = request._msg.reply
        if reply and not is_safe_reply_subject(reply, self._config):
            # Chosen by the sender: answering there would publish on its say-so. Nothing runs.
            log_kv(
                logger,
                "service_invalid",
                level=logging.WARNING,
                endpoint=name,
                error="reply subject not allowed (only _INBOX.> or service.reply_prefixes)",
            )
            return
        try:
            answer = await handler(request)
        except ValidationError as exc:
            answer = error_reply(error_shape, str(exc), "400")
            log_kv(logger, "service_invalid", level=logging.WARNING, endpoint=name, error=str(exc))
        except OperationalError as exc:
            answer = error_reply(error_shape, f"Service degraded: {exc}", "503")
            log_kv(logger, "service_failed", level=logging.WARNING, endpoint=name, error=str(exc))
        except (LLMESError, TimeoutError) as exc:
            answer = error_reply(error_shape, "Request failed; try again", "503")
            log_kv(logger, "service_failed", level=logging.ERROR, endpoint=name, error=repr(exc))
        except Exception as exc:  # a bug must not kill the endpoint; logged in full
            logger.exception("service_crashed endpoint=%s", name)
            answer = error_reply(error_shape, f"Internal error ({type(exc).__name__})", "500")
        await self._respond(request, answer)

    def _decode(self, request: Request, kind: type[PayloadT]) -> PayloadT:
        # An empty body is an empty object, as it always was: all defaults, or "Missing field".
        data = request.data if request.data.strip() else b"{}"
        return decode_request(data, kind, self._config)

    async def _respond(self, request: Request, answer: Reply) -> None:
        if not request._msg.reply:
            log_kv(logger, "reply_dropped", level=logging.WARNING, reason="no reply subject")
            return
        try:
            await request.respond(orjson.dumps(answer.body), headers=answer.headers or None)
        except nats.errors.Error as exc:
            log_kv(logger, "reply_failed", level=logging.WARNING, error=repr(exc))

    # ------------------------------------------------------------ endpoints

    async def _chat_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, ChatRequest)
        outcome = await self._chat.chat(
            channel=asked.channel,
            user=asked.user,
            message=asked.message,
            source="service",
            persona=asked.persona,
            provider_name=asked.provider,
            on_chunk=self._chunk_sink(request) if asked.stream else None,
            request_id=asked.request_id,
        )
        return completion_reply(outcome, self._config.default_provider)

    async def _complete_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, CompletionRequest)
        outcome = await self._chat.complete(
            messages=asked.messages,
            user=asked.user,
            temperature=DEFAULT_TEMPERATURE if asked.temperature is None else asked.temperature,
            max_tokens=asked.max_tokens,
            provider_name=asked.provider,
            request_id=asked.request_id,
        )
        return completion_reply(outcome, self._config.default_provider)

    async def _summarize_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, SummarizeRequest)
        outcome = await self._chat.summarize_text(
            text=asked.text,
            max_words=asked.max_length or DEFAULT_SUMMARY_WORDS,
            style=asked.style or DEFAULT_SUMMARY_STYLE,
            user=asked.user,
            request_id=asked.request_id,
        )
        return summary_reply(outcome)

    async def _memory_add_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, MemoryAddRequest)
        outcome = await self._chat.remember(
            channel=asked.channel,
            user=asked.user_id,
            content=asked.content,
            category=(asked.category or DEFAULT_CATEGORY).strip(),
            importance=asked.importance or SEED_DEFAULT_IMPORTANCE,
            request_id=asked.request_id,
        )
        return memory_reply(outcome)

    async def _memory_recall_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, MemoryRecallRequest)
        outcome = await self._chat.recall(
            channel=asked.channel,
            user=asked.user_id,
            query=asked.query,
            limit=asked.limit or DEFAULT_RECALL_LIMIT,
        )
        return memory_reply(outcome)

    async def _memory_forget_endpoint(self, request: Request) -> Reply:
        asked = self._decode(request, MemoryForgetRequest)
        outcome = await self._chat.forget(
            channel=asked.channel, user=asked.user_id, memory_id=asked.memory_id
        )
        return memory_reply(outcome)

    async def _persona_get_endpoint(self, request: Request) -> Reply:
        channel = self._decode(request, PersonaGetRequest).channel
        outcome = await self._chat.persona(channel=channel, user=None, name="")
        return persona_reply(outcome, self._chat.persona_of(channel), list(self._config.personas))

    async def _persona_set_endpoint(self, request: Request) -> Reply:
        """Switch a channel's persona, recorded as `PersonaSwitched` like `!chat persona`."""
        asked = self._decode(request, PersonaSetRequest)
        outcome = await self._chat.persona(channel=asked.channel, user=None, name=asked.persona)
        available = list(self._config.personas)
        return persona_reply(outcome, self._chat.persona_of(asked.channel), available)

    async def _status_endpoint(self, request: Request) -> Reply:
        """StatusResponse; `rate_limited` while the default provider throttles llm-es.

        StatusRequest has no fields: like the seed, any body asks for the status.
        """
        requests_today, tokens_today = self._chat.totals_today()
        return Reply(
            {
                "healthy": self._health.healthy,
                "provider": self._config.default_provider,
                "model": self._config.provider.default_model,
                "requests_today": requests_today,
                "tokens_today": tokens_today,
                "rate_limited": self._chat.provider_chain()[0].throttled(),
                "uptime_seconds": int(time.monotonic() - self._started),
            }
        )

    async def _usage_endpoint(self, request: Request) -> Reply:
        """One user's usage and what each limit still allows, or (no user) everyone's totals."""
        user = self._decode(request, UsageRequest).user
        if user is None:
            requests_today, tokens_today = self._chat.totals_today()
            return Reply(
                {
                    "user": None,
                    "requests_today": requests_today,
                    "tokens_today": tokens_today,
                    "rate_limits_remaining": {},
                }
            )
        return Reply(self._chat.usage_report(user))

    # ------------------------------------------------------------ helpers

    def _stats_data(self, endpoint: EndpointStats) -> dict[str, Any] | None:
        """`data` of an endpoint in `$SRV.STATS`: the instance's admission counters on `chat`.

        They count every admitted turn of the instance (chat, complete,
        summarize, `!chat`), so they appear once, not on each endpoint.
        """
        if endpoint.name == ADMISSION_STATS_ENDPOINT:
            return self._chat.admission_stats()
        return None

    def _chunk_sink(self, request: Request) -> Callable[[str], Awaitable[None]]:
        reply = request._msg.reply
        if not reply:
            raise ValidationError("A streamed chat needs a reply subject", "stream")
        index = 0

        async def send(piece: str) -> None:
            nonlocal index
            await self._nc.publish(reply, orjson.dumps({"chunk": piece, "index": index}))
            index += 1
            if index == 1:
                # Let nats-py's flusher send the first piece now rather than with the
                # next ones (time to first chunk). Later pieces already read from the
                # provider go out together in one write, sent as soon as the stream
                # waits for more.
                await asyncio.sleep(0)

        return send
