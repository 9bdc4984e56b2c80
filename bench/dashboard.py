"""What the dashboard costs in process: its fold per turn, and each answer's build time.

The fold runs inside the views' fold, on the turn path: this times
`Dashboard._fold` over a turn's three events (TurnAdmitted, TokensSpent,
TurnCompleted), without and with a live tail watching, and the JSON + SVG
answers over 62 days of 20 users and 3 models. No server: the `EventStore`
is never read here. Prints JSON.

    /work/venv/bin/python bench/dashboard.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from llm_es.domain.events import Event, TokensSpent, TurnAdmitted, TurnCompleted
from llm_es.service.dashboard import Dashboard
from llm_es.service.live_tail import TailFilter


def turn_events(number: int, at: datetime) -> list[Event]:
    user, model = f"user{number % 20}", f"model{number % 3}"
    turn: dict[str, Any] = {"channel": "lobby", "user": user, "turn_id": f"t{number}", "at": at}
    return [
        TurnAdmitted(
            **turn,
            source="chat",
            persona="default",
            provider="ollama",
            model=model,
            message="a question of a few words",
            reserved_tokens=500,
            max_tokens=500,
        ),
        TokensSpent(
            **turn,
            purpose="chat",
            provider="ollama",
            model=model,
            prompt_tokens=700,
            completion_tokens=120,
            estimated=False,
        ),
        TurnCompleted(
            **turn,
            content="an answer " * 20,
            provider="ollama",
            model=model,
            latency_ms=300.0 + number % 500,
            finish_reason="stop",
        ),
    ]


def per_turn_us(dashboard: Dashboard, turns: list[list[Event]]) -> float:
    started = time.perf_counter()
    seq = 0
    for events in turns:
        for event in events:
            seq += 1
            dashboard._fold(seq, event)
    return (time.perf_counter() - started) / len(turns) * 1e6


def answer_ms(build: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        orjson.dumps(build({}))
        times.append((time.perf_counter() - started) * 1e3)
    return round(statistics.median(times), 3)


async def main(turns: int, repeat: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    history = [turn_events(n, now - timedelta(days=n % 62, seconds=n % 3600)) for n in range(turns)]
    today = [turn_events(n, now) for n in range(turns)]
    dashboard = Dashboard(store=None, projection_positions=dict)  # type: ignore[arg-type]
    fold_us = [per_turn_us(dashboard, today) for _ in range(repeat)]
    per_turn_us(dashboard, history)
    with dashboard.tail.watch(TailFilter()) as queue:
        watched_us = []
        for _ in range(repeat):
            watched_us.append(per_turn_us(dashboard, today[:100]))
            while not queue.empty():
                queue.get_nowait()
    return {
        "tool": "bench/dashboard.py",
        "params": {"turns": turns, "repeat": repeat, "python": sys.version.split()[0]},
        "fold_us_per_turn": round(statistics.median(fold_us), 2),
        "fold_us_per_turn_with_a_tail": round(statistics.median(watched_us), 2),
        "events_folded": dashboard.days.events,
        "answer_ms": {
            "usage": answer_ms(dashboard.usage, repeat),
            "users": answer_ms(dashboard.users, repeat),
            "errors": answer_ms(dashboard.errors, repeat),
            "latency": answer_ms(dashboard.latency, repeat),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        orjson.dumps(
            asyncio.run(main(args.turns, args.repeat)), option=orjson.OPT_INDENT_2
        ).decode()
    )
