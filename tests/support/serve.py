"""`llm-es serve` as a real child process against a test's nats-server, killed as a crash would.

Its log goes to a file (a pipe nobody reads would fill and block it); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS

from tests.support.cli import console_script, hermetic_env
from tests.support.harness import command, wait_until

LLM_ES = console_script("llm-es")
LLM_REPLAY = console_script("llm-replay")


def write_config(path: pathlib.Path, llm_url: str, **service: Any) -> pathlib.Path:
    """A config file for the fake LLM, no HTTP listener (so ports never clash)."""
    config = {
        "providers": {"ollama": {"base_url": llm_url, "timeout": 10}},
        "http": {"listen": None},
        "service": service,
    }
    path.write_bytes(orjson.dumps(config))
    return path


class ServeProcess:
    """One `llm-es serve --nats-url URL --config PATH` child process."""

    def __init__(self, nats_url: str, config: pathlib.Path, log: pathlib.Path) -> None:
        self.nats_url = nats_url
        self.config = config
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                LLM_ES,
                "serve",
                "--nats-url",
                self.nats_url,
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=hermetic_env(),
            )

    async def wait_ready(self, client: NATS, within: float = 30.0) -> None:
        """Until `!chat help` is answered (the command subjects are the last thing started)."""

        async def ready() -> bool:
            assert self.process is not None
            assert self.process.returncode is None, self.log.read_text()[-2000:]
            try:
                return bool((await command(client, "help"))["success"])
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False

        await wait_until(ready, within=within, interval=0.1)

    async def stop(self, sig: int = signal.SIGTERM, within: float = 30.0) -> int:
        """Signal it and wait for its exit (SIGKILL past `within`); its return code."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            async with asyncio.timeout(within):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        assert process.returncode is not None
        return process.returncode
