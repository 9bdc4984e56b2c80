"""What the dashboard costs in process: its fold per turn, and each answer's build time.

What runs inside the views' fold, on the turn path, is `Dashboard._fold` (sets
an event aside, hands it to the live tail): timed over a turn's three events
(TurnAdmitted, TokensSpent, TurnCompleted) without and with a live tail
watching; then `fold_pending` (the per-day sums, off the turn path) per turn,
and the JSON + SVG answers over 62 days of 20 users and 3 models. No server: the `EventStore`
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


def per_turn_us(dashboard: Dashboard, turns: list[list[Event]]) -> tuple[float, float]:
    """Microseconds per turn on the turn path, and of folding the sums afterwards (in
    chunks of 1000 turns, below MAX_PENDING, as the every-second fold sees them)."""
    aside = folding = 0.0
    seq = 0
    for first in range(0, len(turns), 1000):
        started = time.perf_counter()
        for events in turns[first : first + 1000]:
            for event in events:
                seq += 1
                dashboard._fold(seq, event)
        set_aside = time.perf_counter()
        dashboard.fold_pending()
        aside += set_aside - started
        folding += time.perf_counter() - set_aside
    return aside / len(turns) * 1e6, folding / len(turns) * 1e6


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
    dashboard = Dashboard(None, None, projection_positions=dict)  # type: ignore[arg-type]
    timed = [per_turn_us(dashboard, today) for _ in range(repeat)]
    per_turn_us(dashboard, history)
    with dashboard.tail.watch(TailFilter()) as queue:
        watched = []
        for _ in range(repeat):
            watched.append(per_turn_us(dashboard, today[:100])[0])
            while not queue.empty():
                queue.get_nowait()
    return {
        "tool": "bench/dashboard.py",
        "params": {"turns": turns, "repeat": repeat, "python": sys.version.split()[0]},
        "turn_path_us_per_turn": round(statistics.median(t[0] for t in timed), 2),
        "turn_path_us_per_turn_with_a_tail": round(statistics.median(watched), 2),
        "sums_us_per_turn": round(statistics.median(t[1] for t in timed), 2),
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
