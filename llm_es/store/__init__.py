"""Persistence on NATS JetStream: the event log, its codec, KV helpers, leases, liveness."""
