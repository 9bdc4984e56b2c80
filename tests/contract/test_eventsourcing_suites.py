"""The eventsourcing library's own conformance suites, run unmodified on llm_es.eventsourcing_nats.

Each class subclasses one of the library's abstract TestCases and supplies
only what the library asks for (a recorder, a factory environment, a view
class). Nothing is skipped or overridden; `test_insert_subscribe` runs the
library's optional subscription test body, as the library's own Postgres
suite does.

Every recorder test gets a stream and subject prefix of its own; applications
use the default names (derived from the application name) on a server whose
streams the conftest deletes after every test.
"""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

import pytest
from eventsourcing.dcb.msgpack import MessagePackMapper
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.tests import application as application_suites
from eventsourcing.tests import persistence as persistence_suites
from eventsourcing.tests import projection as projection_suites
from eventsourcing.utils import Environment, get_topic

from llm_es.eventsourcing_nats import (
    Append,
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)

MODULE = "llm_es.eventsourcing_nats"


class JetStreamEnvironment:
    """A fresh stream and subject prefix per test; every factory made is closed in tearDown."""

    storage = "file"
    originator_id_type = "uuid"

    def setUp(self) -> None:
        run = uuid.uuid4().hex[:12]
        self.env = Environment(
            name="",
            env={
                "PERSISTENCE_MODULE": MODULE,
                "NATS_URL": os.environ["NATS_URL"],
                "NATS_STREAM": f"CONTRACT_{run}",
                "NATS_SUBJECT_PREFIX": f"contract.{run}",
                "NATS_STORAGE": self.storage,
                "ORIGINATOR_ID_TYPE": self.originator_id_type,
            },
        )
        self.factories: list[JetStreamFactory] = []
        super().setUp()

    def tearDown(self) -> None:
        for factory in self.factories:
            factory.close()
        super().tearDown()

    def new_factory(self) -> JetStreamFactory:
        factory = JetStreamFactory(self.env)
        self.factories.append(factory)
        return factory


class TestAggregateRecorder(JetStreamEnvironment, persistence_suites.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.new_factory().aggregate_recorder()


class TestApplicationRecorder(
    JetStreamEnvironment, persistence_suites.ApplicationRecorderTestCase[ApplicationRecorder]
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.new_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        """The library's optional subscription test: subscribe(gt) on an ordered consumer."""
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(JetStreamEnvironment, persistence_suites.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.new_factory().tracking_recorder()


class TestProcessRecorder(JetStreamEnvironment, persistence_suites.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.new_factory().process_recorder()


class TestNonInterleavingNotificationIds(
    JetStreamEnvironment, persistence_suites.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.new_factory().application_recorder()


class WithTextOriginatorIds:
    """Originator ids that are not UUIDs (ORIGINATOR_ID_TYPE=text), as the library's
    own SQLite and Postgres suites also run."""

    originator_id_type = "text"

    def new_originator_id(self) -> str:
        return f"test-{uuid.uuid4()}"


class TestAggregateRecorderWithTextOriginatorIds(WithTextOriginatorIds, TestAggregateRecorder):
    pass


class TestApplicationRecorderWithTextOriginatorIds(WithTextOriginatorIds, TestApplicationRecorder):
    pass


class TestProcessRecorderWithTextOriginatorIds(WithTextOriginatorIds, TestProcessRecorder):
    pass


class OnMemoryStorage:
    """NATS_STORAGE=memory: atomic batches are staged differently than on file storage."""

    storage = "memory"


class TestApplicationRecorderOnMemoryStorage(OnMemoryStorage, TestApplicationRecorder):
    pass


class TestProcessRecorderOnMemoryStorage(OnMemoryStorage, TestProcessRecorder):
    pass


class TestNonInterleavingNotificationIdsOnMemoryStorage(
    OnMemoryStorage, TestNonInterleavingNotificationIds
):
    pass


class CustomTrackingRecorder(JetStreamTrackingRecorder):
    """A subclass for the factory suite to select by argument and by topic."""


class TestInfrastructureFactory(
    JetStreamEnvironment, persistence_suites.InfrastructureFactoryTestCase[JetStreamFactory]
):
    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder


class ApplicationsOnJetStream:
    """Selects the module the way an application would: PERSISTENCE_MODULE in os.environ."""

    def setUp(self) -> None:
        self._saved_module = os.environ.get("PERSISTENCE_MODULE")
        os.environ["PERSISTENCE_MODULE"] = MODULE
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        if self._saved_module is None:
            os.environ.pop("PERSISTENCE_MODULE", None)
        else:
            os.environ["PERSISTENCE_MODULE"] = self._saved_module


class TestApplication(ApplicationsOnJetStream, application_suites.ApplicationTestCase):
    @pytest.mark.filterwarnings("always::DeprecationWarning")
    def test_application_log(self) -> None:
        """The library's test body, unchanged, with DeprecationWarning recorded, not raised.

        It checks that `app.log` warns, inside `warnings.catch_warnings(record=True)`;
        the project's `filterwarnings = error` would raise the warning before it is
        recorded, on any persistence module.
        """
        super().test_application_log()


class TestExampleApplication(
    ApplicationsOnJetStream, application_suites.ExampleApplicationTestCase
):
    expected_factory_topic = get_topic(JetStreamFactory)


class JetStreamEventCounters(JetStreamTrackingRecorder, projection_suites.EventCountersView):
    """The library's example view on JetStream: each counter is a view subject whose last
    record's position is the count, written in one atomic batch with the tracking record."""

    def get_created_event_counter(self) -> int:
        return self._count("created")

    def get_subsequent_event_counter(self) -> int:
        return self._count("subsequent")

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._increment("created", tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._increment("subsequent", tracking)

    def _count(self, name: str) -> int:
        last = self.read_view(self.view_subject("counters", name))
        return 0 if last is None else last.position

    def _increment(self, name: str, tracking: Tracking) -> None:
        value = self._count(name) + 1
        record = Append(self.view_subject("counters", name), value, str(value).encode())
        self.write_view([record], tracking)


class TestEventCountersView(JetStreamEnvironment, projection_suites.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> projection_suites.EventCountersView:
        return self.new_factory().tracking_recorder(JetStreamEventCounters)


class TestAggregateEventCountersProjection(
    projection_suites.AggregateEventCountersProjectionTestCase
):
    view_class = JetStreamEventCounters
    env: ClassVar[dict[str, str]] = {"PERSISTENCE_MODULE": MODULE}


class TestTaggedDecisionCountersProjection(
    projection_suites.TaggedDecisionCountersProjectionTestCase
):
    view_class = JetStreamEventCounters
    # The DCB application itself stays on the library's in-memory DCB store (this
    # module implements the aggregate recorders, not DCB); the view is on JetStream.
    env: ClassVar[dict[str, str]] = {
        "PERSISTENCE_MODULE": MODULE,
        "DCBAPPLICATION_PERSISTENCE_MODULE": "eventsourcing.dcb.popo",
        "MAPPER_TOPIC": get_topic(MessagePackMapper),
    }


class TestEventSourcedProjection(projection_suites.EventSourcedProjectionTestCase):
    env: ClassVar[dict[str, str]] = {"PERSISTENCE_MODULE": MODULE}
