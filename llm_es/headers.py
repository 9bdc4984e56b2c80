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
