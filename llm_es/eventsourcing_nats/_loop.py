"""A private asyncio event loop on its own thread, so sync code on any thread can use nats-py.

eventsourcing is synchronous and calls recorders from whatever thread it runs
on (its concurrency tests use many); nats-py is asyncio. Each datastore owns one
`EventLoopThread`: callers hand it coroutine functions and block on the result,
the loop never runs anyone else's code, and nobody else's loop is ever touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from eventsourcing.persistence import InterfaceError

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

STOP_JOIN_SECONDS = 10.0
FINISHED_POLL_SECONDS = 1.0
"""How often a waiting caller checks that the loop still runs (matters only once it stopped)."""
SHUTDOWN_ROUNDS = 10


class EventLoopThread:
    """Runs an event loop on a daemon thread until `stop()`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def in_loop_thread(self) -> bool:
        """True when the caller is the loop's own thread."""
        return threading.get_ident() == self._thread.ident

    def run(
        self,
        function: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `function(*args, **kwargs)` on the loop and wait for its result.

        Every coroutine run here bounds its own waits (each NATS request has a
        timeout), so the wait here needs no limit of its own. Raises
        InterfaceError when the loop is stopped, before or during the call, or
        when called from the loop's own thread (waiting there would wait for
        itself forever).
        """
        if self.in_loop_thread():
            raise InterfaceError(
                "a JetStream recorder was called from its own event-loop thread; "
                "call it from another thread"
            )
        future = self._submit(function(*args, **kwargs))
        while True:  # ends with the call, or once the loop has shut down under it
            try:
                return future.result(timeout=FINISHED_POLL_SECONDS)
            except concurrent.futures.CancelledError:
                raise InterfaceError("the JetStream datastore was closed during the call") from None
            except TimeoutError:
                if future.done():
                    raise  # the call's own TimeoutError
                if self._finished.is_set():
                    future.cancel()
                    raise InterfaceError(
                        "the JetStream datastore was closed during the call"
                    ) from None

    def submit(
        self,
        function: Callable[P, Coroutine[Any, Any, object]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Start `function(*args, **kwargs)` on the loop without waiting; errors are logged."""
        with contextlib.suppress(InterfaceError):
            future = self._submit(function(*args, **kwargs))
            future.add_done_callback(_log_failure)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run a plain callback on the loop soon (nothing happens once it is stopped)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        """Stop the loop, cancel what still runs on it, and wait for the thread to end.

        From the loop's own thread it only asks the loop to stop. Stopping twice
        does nothing.
        """
        if not self.stopping:
            self.stopping = True
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(STOP_JOIN_SECONDS)

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.stopping:
            coroutine.close()
            raise InterfaceError("the JetStream datastore is closed")
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop closed between the check and the call
            coroutine.close()
            raise InterfaceError("the JetStream datastore is closed") from None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                # Calls submitted while stopping start their tasks late: cancel those too.
                for _ in range(SHUTDOWN_ROUNDS):
                    pending = asyncio.all_tasks(self.loop)
                    if not pending:
                        break
                    for task in pending:
                        task.cancel()
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()
                self._finished.set()


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.warning("jetstream_background_task_failed error=%s", type(error).__name__)
