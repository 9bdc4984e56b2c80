"""Running the project's console scripts as users do: a real subprocess, bounded in time."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from llm_es.config import ENV_OVERRIDES


def console_script(name: str) -> str:
    """The installed `llm-es` / `llm-replay` script (next to this Python, else on PATH)."""
    beside_python = pathlib.Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    assert found is not None, f"the {name} console script is not installed (pip install -e .)"
    return found


def hermetic_env() -> dict[str, str]:
    """This environment without the variables that would override a test's config."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ENV_OVERRIDES and not name.startswith("LLM_ES_")
    }


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)


async def run_script(
    script: str, *args: str, stdin: bytes | None = None, within: float = 60.0
) -> CliResult:
    """Run a console script to its end (killed past `within` seconds)."""
    process = await asyncio.create_subprocess_exec(
        script,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=hermetic_env(),
    )
    try:
        async with asyncio.timeout(within):
            stdout, stderr = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())
