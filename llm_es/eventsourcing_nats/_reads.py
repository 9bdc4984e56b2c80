"""Reads of the stream by direct get, many in flight at once on one wildcard inbox.

A direct get (`$JS.API.DIRECT.GET.<stream>`) answers with the stored
messages themselves, up to a page of them for a batch request. Every reply
comes to `<inbox>.<token>` and goes to the request that token names.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import nats.errors
import orjson
from eventsourcing.persistence import DataError, OperationalError
from nats.aio.msg import Msg

from llm_es import headers
from llm_es.eventsourcing_nats._connection import Connection

PAGE_SIZE = 1000
"""Messages asked for per direct-get request."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamMessage:
    """A stored message as read back: stream sequence, subject, headers, payload."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes

    @property
    def position(self) -> int:
        """The message's `Es-Position` (originator version, or tracked notification id)."""
        try:
            return int(self.headers[headers.ES_POSITION])
        except (KeyError, ValueError):
            raise DataError(
                f"message {self.seq} on {self.subject} has no {headers.ES_POSITION} header"
            ) from None

    @property
    def topic(self) -> str:
        """The message's `Es-Topic` ('' when it has none)."""
        return self.headers.get(headers.ES_TOPIC, "")


class _Reply:
    """What one direct-get request received."""

    def __init__(self, *, batch: bool) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batch = batch
        self.messages: list[StreamMessage] = []
        self.pending = 0
        self.error: str | None = None

    def add(self, msg: Msg) -> None:
        if self.done.done():
            return
        msg_headers = msg.headers or {}
        status = msg_headers.get(headers.STATUS)
        if status is None:
            self.messages.append(
                StreamMessage(
                    seq=int(msg_headers[headers.NATS_SEQUENCE]),
                    subject=msg_headers[headers.NATS_SUBJECT],
                    headers=msg_headers,
                    data=msg.data,
                )
            )
            if not self.batch:
                self.done.set_result(None)
            return
        if status == "204":  # end of a batch
            self.pending = int(msg_headers.get(headers.NATS_NUM_PENDING, "0"))
        elif status != "404":  # 404: nothing matches
            self.error = f"{status} {msg_headers.get('Description', '')}".strip()
        self.done.set_result(None)


class DirectGets:
    """The stream's reads; `subscribe()` once the connection is up, then read."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._inbox = ""
        self._waiting: dict[str, _Reply] = {}
        self._last_token = 0

    async def subscribe(self) -> None:
        """Subscribe the wildcard inbox every reply comes to."""
        nc = self._connection.client()
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._deliver)

    async def read_last(self, subject_filter: str) -> StreamMessage | None:
        reply = await self._request({"last_by_subj": subject_filter}, batch=False)
        return reply.messages[0] if reply.messages else None

    async def read_range(
        self, subject_filter: str | None, start_seq: int, count: int
    ) -> tuple[list[StreamMessage], int]:
        request: dict[str, object] = {"seq": max(start_seq, 1), "batch": count}
        if subject_filter is not None:
            request["next_by_subj"] = subject_filter
        reply = await self._request(request, batch=True)
        return reply.messages, reply.pending

    async def read_subject(self, subject: str) -> list[StreamMessage]:
        messages: list[StreamMessage] = []
        start = 1
        while True:  # each page moves `start` past what it returned
            page, pending = await self.read_range(subject, start, PAGE_SIZE)
            messages.extend(page)
            if not page or pending == 0:
                return messages
            start = page[-1].seq + 1

    async def _request(self, request: Mapping[str, object], *, batch: bool) -> _Reply:
        nc = self._connection.client()
        self._last_token += 1
        token = str(self._last_token)
        reply = self._waiting[token] = _Reply(batch=batch)
        stream = self._connection.settings.stream
        wait = self._connection.settings.request_timeout
        try:
            api_subject = f"$JS.API.DIRECT.GET.{stream}"
            await nc.publish(api_subject, orjson.dumps(request), reply=f"{self._inbox}.{token}")
            async with asyncio.timeout(wait):
                await reply.done
        except TimeoutError:
            raise OperationalError(
                f"stream {stream} did not answer a read within {wait}s"
            ) from None
        except nats.errors.Error as exc:
            raise OperationalError(f"read from {stream} failed: {type(exc).__name__}") from None
        finally:
            del self._waiting[token]
        if reply.error is not None:
            raise OperationalError(f"read from {stream} failed: {reply.error}")
        return reply

    async def _deliver(self, msg: Msg) -> None:
        reply = self._waiting.get(msg.subject.rpartition(".")[2])
        if reply is not None:
            reply.add(msg)
