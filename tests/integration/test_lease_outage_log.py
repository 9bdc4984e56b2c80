"""The lease loop through a nats-server outage: one WARNING line when it starts failing, one
when it recovers, no traceback per round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib

import nats
import pytest

from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.lease import LEASE_BUCKET, keep_single_active, open_lease

OUTAGE_SECONDS = 3.0
RECOVERY_WITHIN_SECONDS = 30.0  # generous: a loaded 2-core machine reconnects slowly


@pytest.mark.timeout(90)
async def test_an_outage_is_two_log_lines(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rounds fail every second during a 3 s outage; the log gets `lease_loop_failing` once and
    `lease_loop_recovered` once, and no record carries a traceback.

    Each round also reads the bucket's stream, as the views' standby round reads the
    stored checkpoints: that read is what raises while the server is away.
    """
    caplog.set_level(logging.INFO, logger="llm_es")
    server = EmbeddedNatsServer(tmp_path / "nats", port=0)
    await server.start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    halt = asyncio.Event()
    holding = False
    try:
        js = nc.jetstream(timeout=1.0)
        lease = await open_lease(js, "outage-test", "me", 3.0)
        recovered = asyncio.Event()

        class Recovered(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "lease_loop_recovered" in record.getMessage():
                    recovered.set()

        watcher = Recovered()
        logging.getLogger("llm_es.store.lease").addHandler(watcher)

        async def take() -> None:
            nonlocal holding
            await js.stream_info(f"KV_{LEASE_BUCKET}")
            holding = await lease.acquire()

        async def keep() -> None:
            nonlocal holding
            await js.stream_info(f"KV_{LEASE_BUCKET}")
            holding = await lease.renew()

        loop = asyncio.create_task(
            keep_single_active(
                lease, halt, holding=lambda: holding, keep=keep, take=take, name="test"
            )
        )
        await server.stop()
        await asyncio.sleep(OUTAGE_SECONDS)
        await server.start()
        await asyncio.wait_for(recovered.wait(), RECOVERY_WITHIN_SECONDS)
        logging.getLogger("llm_es.store.lease").removeHandler(watcher)
        halt.set()
        await asyncio.wait_for(loop, 10)
    finally:
        halt.set()
        with contextlib.suppress(Exception):
            await nc.close()
        await server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "llm_es.store.lease"]
    assert sum("lease_loop_failing" in m for m in messages) == 1, messages
    assert sum("lease_loop_recovered" in m for m in messages) == 1, messages
    # nats-py's own default error callback logs tracebacks; llm-es connects with its own.
    ours = [r for r in caplog.records if r.name.startswith("llm_es") and r.exc_info]
    assert not ours, "a traceback was logged"
