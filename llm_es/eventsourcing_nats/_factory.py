"""The infrastructure factory: settings from the environment, one datastore, the recorders."""

from __future__ import annotations

from typing import TypeVar

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from llm_es.eventsourcing_nats._datastore import JetStreamDatastore
from llm_es.eventsourcing_nats._recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamRecorder,
    JetStreamTrackingRecorder,
)
from llm_es.eventsourcing_nats._settings import JetStreamSettings, SettingsError, create_stream

R = TypeVar("R", bound=JetStreamRecorder)


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Builds JetStream recorders for an application (PERSISTENCE_MODULE=llm_es.eventsourcing_nats).

    One factory holds one NATS connection on its own event-loop thread;
    `close()` (the application's `close()`) ends both, and so does dropping
    the factory and every recorder it made.
    """

    aggregate_recorder_class: type[JetStreamAggregateRecorder] = JetStreamAggregateRecorder
    application_recorder_class: type[JetStreamApplicationRecorder] = JetStreamApplicationRecorder
    tracking_recorder_class: type[JetStreamTrackingRecorder] = JetStreamTrackingRecorder
    process_recorder_class: type[JetStreamProcessRecorder] = JetStreamProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.settings = JetStreamSettings.from_env(self.env)
        self.datastore = JetStreamDatastore(self.settings)

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """An aggregate recorder for `purpose` (`events`, `snapshots`, ...)."""
        return self._prepared(self.aggregate_recorder_class(self.datastore, purpose=purpose))

    def application_recorder(self) -> ApplicationRecorder:
        """The application recorder (class from APPLICATION_RECORDER_TOPIC if set)."""
        cls = self._recorder_class(
            self.APPLICATION_RECORDER_TOPIC,
            self.application_recorder_class,
            JetStreamApplicationRecorder,
        )
        return self._prepared(cls(self.datastore))

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        """A tracking recorder (or view) of the given class, or TRACKING_RECORDER_TOPIC's."""
        cls = tracking_recorder_class or self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            self.tracking_recorder_class,
            JetStreamTrackingRecorder,
        )
        if not issubclass(cls, JetStreamTrackingRecorder):
            raise SettingsError(f"{cls!r} is not a JetStreamTrackingRecorder")
        return self._prepared(cls(self.datastore))

    def process_recorder(self) -> ProcessRecorder:
        """The process recorder (class from PROCESS_RECORDER_TOPIC if set)."""
        cls = self._recorder_class(
            self.PROCESS_RECORDER_TOPIC,
            self.process_recorder_class,
            JetStreamProcessRecorder,
        )
        return self._prepared(cls(self.datastore))

    def env_create_table(self) -> bool:
        """CREATE_TABLE (default yes): whether recorders create, or fit, the stream they need."""
        return create_stream(self.env)

    def close(self) -> None:
        """Close the NATS connection and stop its thread (idempotent)."""
        self.datastore.close()

    def _prepared(self, recorder: R) -> R:
        if self.env_create_table():
            recorder.create_stream()
        return recorder

    def _recorder_class(self, key: str, default: type[R], base: type[R]) -> type[R]:
        topic = self.env.get(key)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise SettingsError(f"{key} {topic!r} is not a {base.__name__} subclass")
        return cls
