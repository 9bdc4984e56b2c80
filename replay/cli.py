"""`llm-replay`: the operators' history tool (its commands arrive with their own issue)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    print(
        "llm-replay: rebuild, verify, state, audit and tail are not built yet. "
        "To rebuild views today: stop llm-es, delete the KV bucket llm_data, start llm-es.",
        file=sys.stderr,
    )
    return 2
