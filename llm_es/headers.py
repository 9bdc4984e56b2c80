"""NATS and JetStream header names used by llm-es, in one place."""

from __future__ import annotations

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
KV_OPERATION = "KV-Operation"

JS_ERR_WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed expected-last-(subject-)sequence check."""

# Headers of messages the eventsourcing persistence module (`llm_es.eventsourcing_nats`) writes.
ES_TOPIC = "Es-Topic"
"""The eventsourcing topic of a stored event (its class), e.g. `bank:Account.Opened`."""
ES_POSITION = "Es-Position"
"""Position of a message in its subject: originator version, or tracked notification id."""

# Headers JetStream puts on direct-get replies.
STATUS = "Status"
NATS_SEQUENCE = "Nats-Sequence"
NATS_SUBJECT = "Nats-Subject"
NATS_NUM_PENDING = "Nats-Num-Pending"

JS_ERR_WRONG_LAST_SEQUENCE_CONSTANT = 10164
"""The same failed check inside an atomic batch (the subject is already in the batch)."""
JS_ERR_ATOMIC_BATCH_TOO_LARGE = 10199
"""An atomic batch has more messages than the server allows (1000 on nats-server 2.12+)."""
