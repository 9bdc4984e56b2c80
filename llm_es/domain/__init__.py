"""Pure domain: events, deciders, prompt assembly, replies, view shapes (no I/O)."""
