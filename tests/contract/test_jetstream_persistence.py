"""What llm_es.eventsourcing_nats promises beyond the library's suites.

Settings and their errors, the stream it creates or fits, the message layout
operators read, conflicts between processes, size limits, paging past one
direct-get page, back-pressure on subscriptions, closing and collection, and
a nats-server restart. All against a real nats-server.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from eventsourcing.persistence import (
    DataError,
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import Environment
from nats.js import api

from llm_es.eventsourcing_nats import (
    Append,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamSettings,
    SettingsError,
)
from tests.contract.support import ServerThread

MODULE = "llm_es.eventsourcing_nats"
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "eventsourcing.md"


def make_env(name: str = "", **settings: str) -> Environment:
    """A fresh stream and prefix on the session server, plus `settings`."""
    run = uuid.uuid4().hex[:10]
    values = {
        "NATS_URL": os.environ["NATS_URL"],
        "NATS_STREAM": f"EXTRA_{run}",
        "NATS_SUBJECT_PREFIX": f"extra.{run}",
    }
    values.update(settings)
    return Environment(name, values)


@pytest.fixture
def factories() -> Iterator[list[JetStreamFactory]]:
    made: list[JetStreamFactory] = []
    yield made
    for factory in made:
        factory.close()


def open_factory(factories: list[JetStreamFactory], env: Environment) -> JetStreamFactory:
    factory = JetStreamFactory(env)
    factories.append(factory)
    return factory


def event(originator_id: uuid.UUID, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Happened", state)


def stream_info(server: ServerThread, stream: str) -> api.StreamInfo:
    async def info() -> api.StreamInfo:
        nc = await nats.connect(server.url)
        try:
            return await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()

    return server.run(info())


# -- settings ------------------------------------------------------------------


def test_default_names_follow_the_application_and_prefixed_keys_win() -> None:
    """Without settings the stream and prefix derive from the app name; APP_KEY beats KEY."""
    settings = JetStreamSettings.from_env(Environment("BankAccounts", {}))
    assert settings.stream == "ES_BankAccounts"
    assert settings.subject_prefix == "es.BankAccounts"
    assert settings.url == "nats://127.0.0.1:4222"
    assert (settings.storage, settings.replicas, settings.request_timeout) == ("file", 1, 5.0)
    unnamed = JetStreamSettings.from_env(Environment("", {}))
    assert (unnamed.stream, unnamed.subject_prefix) == ("ES__", "es._")
    env = Environment("Orders", {"NATS_STREAM": "SHARED", "ORDERS_NATS_STREAM": "ORDERS"})
    assert JetStreamSettings.from_env(env).stream == "ORDERS"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NATS_STORAGE", "disk"),
        ("NATS_REPLICAS", "three"),
        ("NATS_REPLICAS", "9"),
        ("NATS_STREAM", "has.dot"),
        ("NATS_SUBJECT_PREFIX", "es.*"),
        ("NATS_REQUEST_TIMEOUT", "0"),
        ("ORIGINATOR_ID_TYPE", "int"),
        ("NATS_USER", "alice"),
        ("CREATE_TABLE", "maybe"),
    ],
)
def test_invalid_settings_name_their_key(key: str, value: str) -> None:
    """A bad value raises SettingsError (an InterfaceError and an OSError) naming the key."""
    with pytest.raises(SettingsError, match=key) as caught:
        JetStreamSettings.from_env(Environment("App", {key: value}))
    assert isinstance(caught.value, InterfaceError)
    assert isinstance(caught.value, OSError)


def test_unreachable_server_is_an_operational_error_without_secrets() -> None:
    """Nothing listening: OperationalError naming the server; passwords and tokens, in
    settings or in the URL, appear in no repr and no error text."""
    env = Environment(
        "App",
        {
            "NATS_URL": "nats://alice:url-secret@127.0.0.1:1",
            "NATS_USER": "alice",
            "NATS_PASSWORD": "setting-secret",
            "NATS_TOKEN": "token-secret",
        },
    )
    settings = JetStreamSettings.from_env(env)
    assert "secret" not in repr(settings)
    with pytest.raises(OperationalError, match="cannot connect") as caught:
        JetStreamFactory(env)  # nothing listens on port 1
    assert "127.0.0.1:1" in str(caught.value)
    assert "secret" not in str(caught.value)


# -- the stream ----------------------------------------------------------------


def test_stream_is_created_with_the_configured_settings(
    factories: list[JetStreamFactory], clean_jetstream: ServerThread
) -> None:
    """The first recorder creates the stream: prefix.>, atomic, direct, no delete or purge."""
    env = make_env(NATS_STORAGE="memory")
    open_factory(factories, env).application_recorder()
    config = stream_info(clean_jetstream, env["NATS_STREAM"]).config
    assert config.subjects == [f"{env['NATS_SUBJECT_PREFIX']}.>"]
    assert config.storage == api.StorageType.MEMORY
    assert config.num_replicas == 1
    assert config.allow_atomic is True
    assert config.allow_direct is True
    assert config.deny_delete is True
    assert config.deny_purge is True


def test_an_existing_stream_is_fitted_not_replaced(
    factories: list[JetStreamFactory], clean_jetstream: ServerThread
) -> None:
    """A stream that exists keeps its subjects and messages and gains ours and atomic batches."""
    env = make_env()
    stream = env["NATS_STREAM"]

    async def create_other() -> None:
        nc = await nats.connect(clean_jetstream.url)
        try:
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(name=stream, subjects=["other.>"]))
            await js.publish("other.thing", b"kept")
        finally:
            await nc.close()

    clean_jetstream.run(create_other())
    recorder = open_factory(factories, env).application_recorder()
    assert recorder.insert_events([event(uuid.uuid4(), 1)]) == [2]
    info = stream_info(clean_jetstream, stream)
    assert info.config.subjects == ["other.>", f"{env['NATS_SUBJECT_PREFIX']}.>"]
    assert info.config.allow_atomic is True
    assert info.state.messages == 2


def test_create_table_no_leaves_the_stream_to_the_operator(
    factories: list[JetStreamFactory],
) -> None:
    """CREATE_TABLE=no creates nothing; writing to a stream nobody made is an OperationalError."""
    recorder = open_factory(factories, make_env(CREATE_TABLE="no")).application_recorder()
    with pytest.raises(OperationalError, match="no stream answers"):
        recorder.insert_events([event(uuid.uuid4(), 1)])


def test_stored_events_are_plain_messages_an_operator_can_read(
    factories: list[JetStreamFactory], clean_jetstream: ServerThread
) -> None:
    """An event is one message on <prefix>.events.<id>: state as payload, topic and version
    in headers; a tracking record is JSON on <prefix>.tracking.<app>."""
    env = make_env()
    recorder = open_factory(factories, env).process_recorder()
    originator_id = uuid.uuid4()
    recorder.insert_events(
        [StoredEvent(originator_id, 7, "bank:Account.Opened", b'{"a":1}')],
        tracking=Tracking("upstream app", 41),
    )

    async def read_all() -> list[tuple[str, dict[str, str], bytes]]:
        nc = await nats.connect(clean_jetstream.url)
        try:
            js = nc.jetstream()
            found = []
            for seq in (1, 2):
                msg = await js.get_msg(env["NATS_STREAM"], seq)
                found.append((msg.subject or "", dict(msg.headers or {}), msg.data or b""))
            return found
        finally:
            await nc.close()

    (event_subject, event_headers, state), (tracking_subject, _, tracking) = clean_jetstream.run(
        read_all()
    )
    prefix = env["NATS_SUBJECT_PREFIX"]
    assert event_subject == f"{prefix}.events.{originator_id}"
    assert event_headers["Es-Topic"] == "bank:Account.Opened"
    assert event_headers["Es-Position"] == "7"
    assert state == b'{"a":1}'
    assert tracking_subject == f"{prefix}.tracking.upstream=20app"
    assert tracking == b'{"application_name":"upstream app","notification_id":41}'


# -- conflicts -----------------------------------------------------------------


def test_a_version_not_above_the_last_is_a_conflict(factories: list[JetStreamFactory]) -> None:
    """Versions of an aggregate only grow: an older version is refused even if never stored."""
    recorder = open_factory(factories, make_env()).aggregate_recorder()
    originator_id = uuid.uuid4()
    recorder.insert_events([event(originator_id, 1), event(originator_id, 3)])
    with pytest.raises(IntegrityError):
        recorder.insert_events([event(originator_id, 2)])
    recorder.insert_events([event(originator_id, 4)])
    versions = [e.originator_version for e in recorder.select_events(originator_id)]
    assert versions == [1, 3, 4]


def test_two_processes_racing_on_one_aggregate_store_exactly_one_event(
    factories: list[JetStreamFactory],
) -> None:
    """Two connections both saving version 2: one wins, the other gets IntegrityError and
    can then save version 3 once it has read the aggregate again."""
    env = make_env()
    first = open_factory(factories, env).application_recorder()
    second = open_factory(factories, env).application_recorder()
    originator_id = uuid.uuid4()
    first.insert_events([event(originator_id, 1)])
    assert len(second.select_events(originator_id)) == 1
    first.insert_events([event(originator_id, 2, b"first")])
    with pytest.raises(IntegrityError):
        second.insert_events([event(originator_id, 2, b"second")])
    assert [e.originator_version for e in second.select_events(originator_id)] == [1, 2]
    second.insert_events([event(originator_id, 3)])
    assert [e.state for e in first.select_events(originator_id, gt=1)] == [b"first", b"{}"]


def test_tracking_from_two_processes_keeps_only_increasing_ids(
    factories: list[JetStreamFactory],
) -> None:
    """A recorder with an out-of-date view of the tracking subject re-reads it and decides
    on what is stored: a higher id is recorded, a lower one is an IntegrityError."""
    env = make_env()
    first = open_factory(factories, env).tracking_recorder()
    second = open_factory(factories, env).tracking_recorder()
    first.insert_tracking(Tracking("upstream", 5))
    second.insert_tracking(Tracking("upstream", 7))
    with pytest.raises(IntegrityError):
        first.insert_tracking(Tracking("upstream", 6))
    first.insert_tracking(Tracking("upstream", 8))
    assert second.max_tracking_id("upstream") == 8


def test_a_refused_process_batch_stores_neither_events_nor_tracking(
    factories: list[JetStreamFactory],
) -> None:
    """Events and tracking go in one atomic batch: a stale tracking id stores no event."""
    recorder = open_factory(factories, make_env()).process_recorder()
    recorder.insert_events([event(uuid.uuid4(), 1)], tracking=Tracking("up", 3))
    lonely = uuid.uuid4()
    with pytest.raises(IntegrityError):
        recorder.insert_events([event(lonely, 1)], tracking=Tracking("up", 3))
    assert recorder.select_events(lonely) == []
    assert recorder.max_notification_id() == 1


def test_notification_ids_skip_the_sequences_of_tracking_records(
    factories: list[JetStreamFactory],
) -> None:
    """Notification ids are stream sequences: a process's tracking records leave gaps."""
    recorder = open_factory(factories, make_env()).process_recorder()
    assert isinstance(recorder, JetStreamProcessRecorder)
    ids = recorder.insert_events([event(uuid.uuid4(), 1)], tracking=Tracking("up", 1))
    more = recorder.insert_events([event(uuid.uuid4(), 1)], tracking=Tracking("up", 2))
    assert (ids, more) == ([1], [3])
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 3]


def test_view_records_are_written_with_their_tracking_or_not_at_all(
    factories: list[JetStreamFactory],
) -> None:
    """write_view stores view records and the tracking record together; a repeated
    tracking id refuses the whole batch."""
    view = open_factory(factories, make_env()).tracking_recorder()
    subject = view.view_subject("totals", "EUR")
    view.write_view([Append(subject, 1, b"10")], Tracking("up", 1))
    with pytest.raises(IntegrityError):
        view.write_view([Append(subject, 2, b"20")], Tracking("up", 1))
    last = view.read_view(subject)
    assert last is not None
    assert (last.position, last.data) == (1, b"10")


# -- sizes and paging ----------------------------------------------------------


def test_more_events_than_an_atomic_batch_allows_is_a_data_error(
    factories: list[JetStreamFactory],
) -> None:
    """An atomic batch holds 1000 messages at most: 1001 events raise DataError, none is stored."""
    recorder = open_factory(factories, make_env()).application_recorder()
    originator_id = uuid.uuid4()
    with pytest.raises(DataError, match="atomic batch"):
        recorder.insert_events([event(originator_id, v) for v in range(1001)])
    assert recorder.max_notification_id() is None


def test_an_event_larger_than_max_payload_is_a_data_error(
    factories: list[JetStreamFactory],
) -> None:
    """A state bigger than the server's max_payload (1 MiB by default) raises DataError."""
    recorder = open_factory(factories, make_env()).application_recorder()
    with pytest.raises(DataError, match="max_payload"):
        recorder.insert_events([event(uuid.uuid4(), 1, b"x" * (2 * 1024 * 1024))])


def test_reads_go_past_one_direct_get_page(factories: list[JetStreamFactory]) -> None:
    """An aggregate of 2500 events and a notification log of 2600 read back whole, in order."""
    recorder = open_factory(factories, make_env()).application_recorder()
    long_one = uuid.uuid4()
    for start in range(0, 2500, 500):
        recorder.insert_events([event(long_one, v) for v in range(start, start + 500)])
    other = [event(uuid.uuid4(), 1) for _ in range(100)]
    recorder.insert_events(other)
    versions = [e.originator_version for e in recorder.select_events(long_one)]
    assert versions == list(range(2500))
    last_two = recorder.select_events(long_one, desc=True, limit=2, lte=1000)
    assert [e.originator_version for e in last_two] == [1000, 999]
    notifications = recorder.select_notifications(1, 2600)
    assert [n.id for n in notifications] == list(range(1, 2601))
    assert len(recorder.select_notifications(2550, 100, stop=2560)) == 11


def test_subscription_delivers_more_than_its_buffer_in_order(
    factories: list[JetStreamFactory],
) -> None:
    """A subscription reading 3000 notifications (buffer: 1000) gets each once, in order."""
    recorder = open_factory(factories, make_env()).application_recorder()
    for _ in range(3):
        recorder.insert_events([event(uuid.uuid4(), v) for v in range(1000)])
    received = []
    with recorder.subscribe(gt=0) as subscription:
        for notification in subscription:
            received.append(notification.id)
            if len(received) == 3000:
                break
    assert received == list(range(1, 3001))


# -- threads, closing, collection ----------------------------------------------


def test_works_when_called_from_a_thread_running_an_event_loop(
    factories: list[JetStreamFactory],
) -> None:
    """The recorders never touch the caller's event loop: sync calls from inside one work."""
    recorder = open_factory(factories, make_env()).application_recorder()

    async def inside_a_loop() -> list[int] | None:
        ids = recorder.insert_events([event(uuid.uuid4(), 1)])
        return None if ids is None else list(ids)

    assert asyncio.run(inside_a_loop()) == [1]


def test_a_closed_factory_refuses_work_with_interface_error(
    factories: list[JetStreamFactory],
) -> None:
    """After close() every call raises InterfaceError; closing again does nothing."""
    factory = open_factory(factories, make_env())
    recorder = factory.application_recorder()
    factory.close()
    factory.close()
    with pytest.raises(InterfaceError):
        recorder.insert_events([event(uuid.uuid4(), 1)])
    with pytest.raises(InterfaceError):
        recorder.max_notification_id()


def test_closing_wakes_a_blocked_subscriber_with_interface_error(
    factories: list[JetStreamFactory],
) -> None:
    """A thread waiting on a subscription when the datastore closes gets InterfaceError."""
    factory = open_factory(factories, make_env())
    recorder = factory.application_recorder()
    outcome: list[BaseException] = []
    subscription = recorder.subscribe(gt=0)

    def read() -> None:
        try:
            next(subscription)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)  # let the reader block on the empty subscription
    factory.close()
    reader.join(10)
    assert not reader.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], InterfaceError)


def test_closing_while_other_threads_call_ends_every_call(
    factories: list[JetStreamFactory],
) -> None:
    """Calls racing with close() return, fail, or raise InterfaceError; none of them hangs,
    and every call after close() raises InterfaceError."""
    factory = open_factory(factories, make_env())
    recorder = factory.application_recorder()
    closed_errors: list[InterfaceError] = []
    started = threading.Barrier(5)

    def hammer() -> None:
        started.wait(10)
        for _ in range(100_000):  # ends at the first InterfaceError
            try:
                recorder.insert_events([event(uuid.uuid4(), 1)])
            except OperationalError:
                continue  # in flight when the connection closed
            except InterfaceError as exc:
                closed_errors.append(exc)
                return

    callers = [threading.Thread(target=hammer) for _ in range(4)]
    for caller in callers:
        caller.start()
    started.wait(10)
    time.sleep(0.1)  # let the calls get going
    factory.close()
    for caller in callers:
        caller.join(15)
    assert not any(caller.is_alive() for caller in callers)
    assert len(closed_errors) == 4


def test_a_factory_nobody_closed_is_cleaned_up_when_collected() -> None:
    """Dropping an unclosed factory and its recorders ends its loop thread and connection."""
    env = make_env()
    factory = InfrastructureFactory.construct(
        Environment(env.name, {**env, "PERSISTENCE_MODULE": MODULE})
    )
    recorder = factory.application_recorder()
    recorder.insert_events([event(uuid.uuid4(), 1)])
    thread_name = f"jetstream-{env['NATS_STREAM']}"
    assert any(thread.name == thread_name for thread in threading.enumerate())
    del factory, recorder
    gc.collect()
    for _ in range(100):  # at most 5 s
        if not any(thread.name == thread_name for thread in threading.enumerate()):
            break
        time.sleep(0.05)
    assert not any(thread.name == thread_name for thread in threading.enumerate())


# -- a server restart ----------------------------------------------------------


def test_file_storage_and_subscriptions_survive_a_server_restart(tmp_path: pathlib.Path) -> None:
    """Events written before a nats-server restart are still there after it; the recorder
    reconnects by itself, calls during the outage fail with OperationalError, and an open
    subscription goes on after the restart without a gap or a repeat."""
    server = ServerThread(tmp_path / "nats")
    factory: Any = None
    try:
        factory = JetStreamFactory(
            Environment("Restarted", {"NATS_URL": server.url, "NATS_REQUEST_TIMEOUT": "1"})
        )
        recorder = factory.application_recorder()
        assert isinstance(recorder, JetStreamApplicationRecorder)
        recorder.insert_events([event(uuid.uuid4(), 1) for _ in range(3)])
        received: list[int] = []
        with recorder.subscribe(gt=0) as subscription:
            for notification in subscription:
                received.append(notification.id)
                if len(received) == 3:
                    break
            server.run(server.server.stop())
            with pytest.raises(OperationalError):
                recorder.insert_events([event(uuid.uuid4(), 1)])
            server.run(server.server.start())
            ids = None
            for _ in range(20):  # at most ~30 s while the client reconnects
                try:
                    ids = recorder.insert_events([event(uuid.uuid4(), 1)])
                    break
                except OperationalError:
                    time.sleep(0.5)
            assert ids is not None
            for notification in subscription:
                received.append(notification.id)
                if notification.id == ids[-1]:
                    break
        assert [n.id for n in recorder.select_notifications(1, 100)] == received
        assert received == sorted(set(received))
        assert received[:3] == [1, 2, 3]
    finally:
        if factory is not None:
            factory.close()
        server.close()


# -- the documentation ---------------------------------------------------------


def test_the_documented_example_application_runs(
    tmp_path: pathlib.Path, clean_jetstream: ServerThread
) -> None:
    """The example in docs/eventsourcing.md runs as printed (warnings as errors), on a server."""
    code = DOCS.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "dog_school.py"
    script.write_text(code.replace("nats://127.0.0.1:4222", clean_jetstream.url))
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
