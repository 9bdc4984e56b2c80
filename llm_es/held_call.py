"""A provider call opened while its turn is being admitted, its last byte held.

Admitting a turn appends to the log and waits for the server's acknowledgement
and the fold (a few hundred microseconds). Opening the provider's request in
that time (a pooled connection taken, the headers and all but the last byte of
the body sent) takes the request's setup off the path to the first token. The
provider cannot act on it yet: a request without its last byte is not a request.
Once the turn is admitted with this very request the byte goes out (`release`);
otherwise the call is withdrawn (`withdraw`): cancelled, its connection closed,
and the server never saw a complete request, so nothing is spent unadmitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

from llm_es.providers.base import ChatMessage, CompletionResult, LLMProvider

__all__ = ["HeldCall"]

_T = TypeVar("_T")


class HeldCall:
    """The first provider's call for one turn, opened early and held until released."""

    def __init__(
        self,
        provider: LLMProvider,
        prompt: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None,
        streamed: bool,
    ) -> None:
        self.provider = provider
        self._prompt = list(prompt)
        self._max_tokens = max_tokens
        self._release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pieces: AsyncGenerator[str | CompletionResult, None] | None = None
        self._first: asyncio.Future[str | CompletionResult]
        if streamed:
            self._pieces = provider.stream(
                self._prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                release=self._release,
            )
            # Iterating runs the generator up to the request's held byte (and, once
            # released, to the first piece); the turn takes over from there.
            pieces = self._pieces
            self._first = asyncio.ensure_future(_after_pending(lambda: anext(pieces)))
        else:
            self._first = asyncio.ensure_future(
                _after_pending(
                    lambda: provider.chat(
                        self._prompt,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        release=self._release,
                    )
                )
            )

    def matches(self, prompt: Sequence[ChatMessage], max_tokens: int) -> bool:
        """True when this call asks exactly what the admitted turn must ask."""
        return max_tokens == self._max_tokens and list(prompt) == self._prompt

    async def result(self) -> CompletionResult:
        """Release the request and return the answer (for a call opened unstreamed)."""
        if self._pieces is not None:
            raise TypeError("result() of a streamed call; iterate pieces()")
        self._set_released()
        answer = await self._first
        assert isinstance(answer, CompletionResult)
        return answer

    async def pieces(self) -> AsyncGenerator[str | CompletionResult, None]:
        """Release the request and yield its pieces, then the final CompletionResult."""
        if self._pieces is None:
            raise TypeError("pieces() of an unstreamed call; await result()")
        self._set_released()
        try:
            try:
                first = await self._first
            except StopAsyncIteration:
                return
            yield first
            async for piece in self._pieces:
                yield piece
        finally:
            await self._pieces.aclose()

    async def withdraw(self) -> None:
        """Cancel the call unless it ended, and close its stream (idempotent)."""
        if not self._first.done():
            self._first.cancel()
        # Waits without raising: a cancellation of the caller still propagates.
        await asyncio.wait([self._first])
        if not self._first.cancelled():
            # The call's own failure, if any, was the turn's to report; here it is reaped.
            self._first.exception()
        if self._pieces is not None:
            await self._pieces.aclose()

    def _set_released(self) -> None:
        if not self._release.done():
            self._release.set_result(None)


async def _after_pending(call: Callable[[], Awaitable[_T]]) -> _T:
    """`call()`, started only after what is already scheduled on the loop has run.

    The call is opened just before the admission is published; the publish is
    written by the NATS client's flusher task, which must go first so the
    request's setup overlaps the append's round trip instead of delaying it.
    """
    await asyncio.sleep(0)
    return await call()
