"""The server's periodic duties share one loop: work, then wait, until told to stop.

A duty that fails once (a database hiccup, a scheduler timing out) is logged
and tried again next time: the loop must outlive it, or the duty silently ends
while the server still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def every(
    interval_s: float | Callable[[], float],
    stop: asyncio.Event,
    work: Callable[[], Awaitable[object]],
    failed: str,
    *,
    wait_first: bool = False,
) -> None:
    """Run ``work`` now and every ``interval_s`` until ``stop``; a failure is logged
    as the event ``failed``.

    The metadata re-signer needs the two options: its wait depends on how its last
    pass went (a callable ``interval_s``, asked before each wait), and the server
    runs its first pass itself before announcing readiness (``wait_first``)."""
    pause = interval_s if callable(interval_s) else lambda: interval_s
    if wait_first:
        await _wait(stop, pause())
    while not stop.is_set():
        try:
            await work()
        except Exception as exc:
            log.error(failed, error=f"{type(exc).__name__}: {exc}")
        await _wait(stop, pause())


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
