"""NATS and JetStream header names used by llm-es, in one place."""

from __future__ import annotations

import re

MAX_VALUE_CHARS = 1024
"""Longest header value llm-es writes (the server's whole header block is bounded)."""
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def header_safe(text: str) -> str:
    """`text` as one header value: control characters and line breaks become a space."""
    return _LINE_BREAKING.sub(" ", text)[:MAX_VALUE_CHARS]


MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
KV_OPERATION = "KV-Operation"

# What llm-es says beyond the seed's bodies (those must carry exactly the seed's fields).
LLM_TURN_ID = "Llm-Turn-Id"
"""The turn a reply or a `rosey.event.llm.*` event belongs to."""
LLM_MODEL = "Llm-Model"
"""The model that answered."""
LLM_SEQ = "Llm-Seq"
"""The log sequence a `rosey.event.llm.*` event derives from."""
LLM_TIMESTAMP = "Llm-Timestamp"
"""The log event's time (UTC ISO 8601, `Z`) of a `rosey.event.llm.*` event."""
LLM_WINDOW_START = "Llm-Window-Start"
"""Start of the window a usage threshold fired in (UTC ISO 8601, `Z`)."""

# The NATS micro framework's error headers (nats.micro.request.ERROR_HEADER / ERROR_CODE_HEADER).
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"

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
