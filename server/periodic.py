"""A value recomputed at most once per interval, shared by every caller.

Fleet-wide views (``server.stragglers``) read every node's data; computing one per
request would let a handful of viewers load a server of 100,000 nodes. Callers
within ``ttl_s`` of the last computation get its result; callers arriving while
one runs wait for it instead of starting their own, so N simultaneous requests
cost one computation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Computed(Generic[T]):
    value: T
    at: float  # the server clock when it was computed


class Periodic(Generic[T]):
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last: Computed[T] | None = None
        self._generation = 0  # moved by ``forget``

    async def get(
        self, now: Callable[[], float], ttl_s: float, compute: Callable[[float], Awaitable[T]]
    ) -> Computed[T]:
        """The last result if computed less than ``ttl_s`` before ``now()``, else
        ``compute(now())``'s. ``now`` is read after waiting for a computation in
        progress, whose result a waiter then takes."""
        async with self._lock:
            at = now()
            last = self._last
            # A clock set back (``at < last.at``) recomputes rather than trusts it.
            if last is None or not last.at <= at < last.at + ttl_s:
                generation = self._generation
                last = Computed(await compute(at), at)
                if generation == self._generation:  # not forgotten while computing
                    self._last = last
            return last

    def forget(self) -> None:
        """The next caller computes afresh; one in progress now answers its own
        caller only."""
        self._generation += 1
        self._last = None
