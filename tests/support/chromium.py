"""Headless Chromium driven over the DevTools protocol, for tests of the dashboard page.

`headless_chromium` starts Debian's `chromium` on 127.0.0.1 with a free
DevTools port and a temp profile, and yields a `Page`: one tab attached over
one websocket (the `websockets` library), with the page's console errors and
uncaught exceptions collected as they happen. The CLI's `--screenshot` and
`--dump-dom` cannot do what the test needs (open the page, make a turn, then
look), so the protocol it is; a few calls are all it takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import pathlib
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

START_SECONDS = 30.0
CALL_SECONDS = 15.0
DEVTOOLS_LINE = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The Chromium binary on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab: protocol calls, the events received, and the console errors seen."""

    def __init__(self, socket: ClientConnection, session: str) -> None:
        self._socket = socket
        self._session = session
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.console_errors: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command to the tab and return its result (bounded)."""
        number = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        message = {"id": number, "method": method, "params": params, "sessionId": self._session}
        await self._socket.send(orjson.dumps(message).decode())
        async with asyncio.timeout(CALL_SECONDS):
            reply = await answer
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def receive(self, message: dict[str, Any]) -> None:
        number = message.get("id")
        if number is not None:
            waiting = self._waiting.pop(number, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
            return
        self.events.append(message)
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.console_errors.append(str(params.get("exceptionDetails")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.console_errors.append(str(params["entry"].get("text")))


async def _devtools_url(stderr: asyncio.StreamReader) -> str:
    async with asyncio.timeout(START_SECONDS):
        while line := await stderr.readline():
            found = DEVTOOLS_LINE.search(line)
            if found:
                return found.group(1).decode()
    raise RuntimeError("chromium exited before it listened for DevTools")


@contextlib.asynccontextmanager
async def headless_chromium(
    binary: str, profile: pathlib.Path, *, width: int = 1300, height: int = 1400
) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab attached (the process ends on exit)."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    reader: asyncio.Task[None] | None = None
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        url = await _devtools_url(process.stderr)

        async def drain_stderr() -> None:
            assert process.stderr is not None
            while await process.stderr.readline():
                pass

        drain = asyncio.create_task(drain_stderr())
        async with connect(url, max_size=64 * 1024 * 1024, open_timeout=START_SECONDS) as socket:
            browser_ids = itertools.count(1)

            async def browser_call(method: str, **params: Any) -> dict[str, Any]:
                number = next(browser_ids)
                message = {"id": number, "method": method, "params": params}
                await socket.send(orjson.dumps(message).decode())  # DevTools takes text frames
                async with asyncio.timeout(CALL_SECONDS):
                    while True:
                        reply = orjson.loads(await socket.recv())
                        if reply.get("id") == number:
                            result: dict[str, Any] = reply["result"]
                            return result

            target = await browser_call("Target.createTarget", url="about:blank")
            attached = await browser_call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            page = Page(socket, attached["sessionId"])

            async def read() -> None:
                async for raw in socket:
                    page.receive(orjson.loads(raw))

            reader = asyncio.create_task(read())
            for domain in ("Page", "Runtime", "Log"):
                await page.call(f"{domain}.enable")
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        for task in (reader, drain):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
