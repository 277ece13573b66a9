"""Per-node request rate limits: a token bucket per key, in memory.

Each replica limits what it receives; behind a load balancer spreading a node's
requests over k replicas, a node gets at most k times the rate, which still
bounds what one compromised or broken node can cost. Buckets that have refilled
are forgotten, so memory follows the nodes active in the last ``burst / rate``
seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

_PRUNE_EVERY = 10_000


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._calls = 0

    def acquire(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        self._calls += 1
        if self._calls % _PRUNE_EVERY == 0:
            self._prune(now)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self._rate

    def most_in(self, seconds: float) -> int:
        """The most requests one key can be admitted in ``seconds``: a full burst,
        then the refill."""
        return int(self._burst) + math.ceil(seconds * self._rate)

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
