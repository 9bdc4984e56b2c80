"""eventsourcing persistence on NATS JetStream: `PERSISTENCE_MODULE=llm_es.eventsourcing_nats`.

Any eventsourcing 9.5 application runs on this module when its environment
names it; settings come from the same environment (each may be prefixed with
the upper-cased application name, e.g. `BANKACCOUNTS_NATS_STREAM`):

    NATS_URL              server URL(s), comma-separated (default nats://127.0.0.1:4222)
    NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CREDS    authentication
    NATS_CA, NATS_CERT, NATS_KEY                         TLS files (PEM)
    NATS_STREAM           stream name (default ES_<application name>)
    NATS_SUBJECT_PREFIX   subjects of the application (default es.<application name>)
    NATS_STORAGE          file (default) or memory, for a stream created here
    NATS_REPLICAS         1 to 5 (default 1), for a stream created here
    NATS_REQUEST_TIMEOUT  seconds to wait for each answer from the server (default 5)
    ORIGINATOR_ID_TYPE    uuid (default) or text: the type select_* return ids as
    CREATE_TABLE          whether recorders create or fit the stream (default yes)

Errors are the library's (PEP 249 names):

    eventsourcing.persistence.PersistenceError
    ├── InterfaceError         the datastore is closed, or called from its own loop thread
    │   └── SettingsError      a setting is invalid (also an OSError)
    └── DatabaseError
        ├── IntegrityError     a version or tracking id is not above the stored one
        ├── OperationalError   NATS unreachable, no answer in time, stream refused a write
        ├── DataError          a message or an atomic batch too large, an unreadable record
        └── NotSupportedError  nats-server older than 2.12 or without JetStream
"""

from __future__ import annotations

from llm_es.eventsourcing_nats._appends import Append
from llm_es.eventsourcing_nats._datastore import JetStreamDatastore
from llm_es.eventsourcing_nats._factory import JetStreamFactory
from llm_es.eventsourcing_nats._reads import StreamMessage
from llm_es.eventsourcing_nats._recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamRecorder,
    JetStreamSubscription,
    JetStreamTrackingRecorder,
)
from llm_es.eventsourcing_nats._settings import JetStreamSettings, SettingsError

Factory = JetStreamFactory

__all__ = [
    "Append",
    "Factory",
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamDatastore",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamRecorder",
    "JetStreamSettings",
    "JetStreamSubscription",
    "JetStreamTrackingRecorder",
    "SettingsError",
    "StreamMessage",
]

# Topics (module:qualname) name the public module, not its private parts.
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type) and _public.__module__.startswith(__name__ + "._"):
        _public.__module__ = __name__
del _name, _public
