"""What `llm-replay` can fail with, and the exit code each failure maps to.

    ReplayError            a failure the command reports in one line
    ├── UsageError         bad flags, unknown user/channel/projection, unreadable time (exit 2)
    └── LogUnavailable     NATS, the event log or the views cannot be read or written (exit 3)

Exit code 1 is not an error: `verify` found differences between the log and the views.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class ReplayError(Exception):
    """A failure the command reports as one line on stderr."""

    exit_code = EXIT_UNAVAILABLE


class UsageError(ReplayError):
    """The command line asks for something that cannot be done (names what and why)."""

    exit_code = EXIT_USAGE


class LogUnavailable(ReplayError):
    """NATS, the event log or the views could not be read or written (ReplayError's exit 3)."""

    @classmethod
    def no_stream(cls, stream: str) -> LogUnavailable:
        """The log's stream does not exist."""
        return cls(f"no event log: stream {stream} does not exist (start llm-es serve first)")
