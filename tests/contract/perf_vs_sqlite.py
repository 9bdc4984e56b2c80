"""The performance tests of eventsourcing's suites, on JetStream and on the library's SQLite.

Not a test module (pytest does not collect it): run it as a script, it prints JSON.

    /work/venv/bin/python -m tests.contract.perf_vs_sqlite [--rounds 5]

Each round runs every (test, backend) cell once, in the same order, so load on
the machine hits all cells alike; the JSON gives each cell's median and range.
The tests are the library's own, unmodified: `test_performance` prints µs per
single-event insert (100 inserts after 10 warm-up), `test_concurrent_throughput`
prints inserts per second (10 jobs of 50 events on 4 threads), and
`test_concurrent_no_conflicts` (100 writes of 100 events on 10 threads, 2
readers) and the 2 x 1000-event non-interleaving race are timed here.

Backends: JetStream on file and on memory storage (an embedded nats-server on
127.0.0.1, started here), SQLite on the database the library's own SQLite
suite uses for that test (`:memory:`, or `file::memory:?cache=shared` for the
threaded ones) and on a file database (WAL, like a deployment).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
import unittest
import uuid

from eventsourcing.persistence import ApplicationRecorder, ProcessRecorder
from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteDatastore,
    SQLiteProcessRecorder,
)
from eventsourcing.tests import persistence as suites

from tests.contract import test_eventsourcing_suites as jetstream
from tests.contract.support import ServerThread


def sqlite_classes(kind: str, db_dir: pathlib.Path) -> dict[str, type[unittest.TestCase]]:
    """The library's suites on SQLite, set up the way its own SQLite tests set them up."""

    def _sqlite_db(kind: str, threaded: bool) -> str:
        if kind == "file":
            return f"file:{db_dir / uuid.uuid4().hex}.db"
        return "file::memory:?cache=shared" if threaded else ":memory:"

    class Aggregate(suites.AggregateRecorderTestCase):
        def create_recorder(self) -> SQLiteAggregateRecorder:
            recorder = SQLiteAggregateRecorder(SQLiteDatastore(_sqlite_db(kind, False)))
            recorder.create_table()
            return recorder

    class Application(suites.ApplicationRecorderTestCase[ApplicationRecorder]):
        threaded = False

        def create_recorder(self) -> ApplicationRecorder:
            datastore = SQLiteDatastore(_sqlite_db(kind, self.threaded), pool_size=100)
            recorder = SQLiteApplicationRecorder(datastore)
            recorder.create_table()
            return recorder

        def test_concurrent_throughput(self) -> None:
            self.threaded = True
            super().test_concurrent_throughput()

        def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:
            self.threaded = True
            super().test_concurrent_no_conflicts(initial_position)

    class Process(suites.ProcessRecorderTestCase):
        def create_recorder(self) -> ProcessRecorder:
            recorder = SQLiteProcessRecorder(SQLiteDatastore(_sqlite_db(kind, False)))
            recorder.create_table()
            return recorder

    class NonInterleaving(suites.NonInterleavingNotificationIDsBaseCase):
        def create_recorder(self) -> ApplicationRecorder:
            datastore = SQLiteDatastore(_sqlite_db(kind, True), pool_size=100)
            recorder = SQLiteApplicationRecorder(datastore)
            recorder.create_table()
            return recorder

    return {
        "aggregate": Aggregate,
        "application": Application,
        "process": Process,
        "noninterleaving": NonInterleaving,
    }


def jetstream_classes(storage: str) -> dict[str, type[unittest.TestCase]]:
    """The contract suite's JetStream classes, on file or memory storage."""

    def on(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
        return type(cls.__name__, (cls,), {"storage": storage})

    return {
        "aggregate": on(jetstream.TestAggregateRecorder),
        "application": on(jetstream.TestApplicationRecorder),
        "process": on(jetstream.TestProcessRecorder),
        "noninterleaving": on(jetstream.TestNonInterleavingNotificationIds),
    }


CELLS: list[tuple[str, str, str]] = [
    # (name, suite, test method)
    ("aggregate.test_performance", "aggregate", "test_performance"),
    ("application.test_performance", "application", "test_performance"),
    ("process.test_performance", "process", "test_performance"),
    ("application.test_concurrent_throughput", "application", "test_concurrent_throughput"),
    ("application.test_concurrent_no_conflicts", "application", "test_concurrent_no_conflicts"),
    ("noninterleaving.test", "noninterleaving", "test"),
]

_US_PER_INSERT = re.compile(r"([\d.]+) μs per insert")
_RATE = re.compile(r"Rate: (\d+) inserts per second")


def run_cell(cls: type[unittest.TestCase], method: str) -> dict[str, float]:
    """Run one library test; return its printed figure(s) and its wall time."""
    output = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(output):
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(cls(method))
    seconds = time.perf_counter() - started
    if not result.wasSuccessful():
        problems = result.failures + result.errors
        raise SystemExit(f"{cls.__name__}.{method} failed:\n{problems[0][1]}")
    figures: dict[str, float] = {"seconds": seconds}
    text = output.getvalue()
    if match := _US_PER_INSERT.search(text):
        figures["us_per_insert"] = float(match.group(1))
    if match := _RATE.search(text):
        figures["inserts_per_second"] = float(match.group(1))
    return figures


def summarize(samples: list[dict[str, float]]) -> dict[str, float | str]:
    """Median and range of the test's own figure (or of its wall time when it prints none)."""
    key = next(k for k in ("us_per_insert", "inserts_per_second", "seconds") if k in samples[0])
    values = [sample[key] for sample in samples]
    return {
        "figure": key,
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(pathlib.Path(data_dir))
        os.environ["NATS_URL"] = server.url
        try:
            backends: dict[str, dict[str, type[unittest.TestCase]]] = {
                "jetstream_file": jetstream_classes("file"),
                "jetstream_memory": jetstream_classes("memory"),
                "sqlite_memory": sqlite_classes("memory", pathlib.Path(data_dir)),
                "sqlite_file": sqlite_classes("file", pathlib.Path(data_dir)),
            }
            samples: dict[str, dict[str, list[dict[str, float]]]] = {
                name: {backend: [] for backend in backends} for name, _, _ in CELLS
            }
            for _ in range(args.rounds):
                for name, suite, method in CELLS:
                    for backend, classes in backends.items():
                        samples[name][backend].append(run_cell(classes[suite], method))
                        server.delete_all_streams()
        finally:
            server.close()
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
        },
        "rounds": args.rounds,
        "results": {
            name: {backend: summarize(runs) for backend, runs in by_backend.items()}
            for name, by_backend in samples.items()
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
