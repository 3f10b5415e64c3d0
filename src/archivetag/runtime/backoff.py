"""The one backoff rule for everything that tries again: the client's retries, the orchestrator's
reconnects to its backends, `up` restarting a service that exited."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, initial: float, maximum: float) -> float:
    """The wait before try number `attempt` + 1 (attempt 1: the first retry): doubling from `initial`,
    capped at `maximum`, with ±20% jitter so that callers that failed together do not retry together."""
    return min(maximum, initial * 2 ** (max(1, attempt) - 1)) * random.uniform(0.8, 1.2)
