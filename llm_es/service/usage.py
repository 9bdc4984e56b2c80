"""Usage reads: a user's usage and what each limit still allows, and everyone's totals today."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from llm_es.config import RateLimitsConfig
from llm_es.domain.limits import usage_numbers
from llm_es.domain.views import UsageView, ViewReader, usage_key


def usage_report(
    views: ViewReader, limits: RateLimitsConfig, user: str, now: datetime
) -> dict[str, Any]:
    """A user's usage now and what each configured limit still allows.

    A limit that is switched off has no entry: the seed's `UsageResponse`
    declares the figures as integers.
    """
    numbers = usage_numbers(cast(UsageView | None, views.get(usage_key(user))), now)
    remaining = {
        name: max(0, limit - used)
        for name, limit, used in (
            ("requests_minute", limits.requests_per_minute, numbers.requests_minute),
            ("requests_hour", limits.requests_per_hour, numbers.requests_hour),
            ("requests_day", limits.requests_per_day, numbers.requests_today),
            (
                "tokens_day",
                limits.tokens_per_day,
                numbers.tokens_today + numbers.reserved_tokens,
            ),
        )
        if limit is not None
    }
    return {
        "user": user,
        "requests_today": numbers.requests_today,
        "tokens_today": numbers.tokens_today,
        "rate_limits_remaining": remaining,
    }


def totals_today(views: ViewReader, now: datetime) -> tuple[int, int]:
    """Requests and tokens of every user today (from the usage views)."""
    requests = tokens = 0
    for key in views.keys_under("usage."):
        numbers = usage_numbers(cast(UsageView | None, views.get(key)), now)
        requests += numbers.requests_today
        tokens += numbers.tokens_today
    return requests, tokens
