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
    interval_s: float, stop: asyncio.Event, work: Callable[[], Awaitable[None]], failed: str
) -> None:
    """Run ``work`` now and every ``interval_s`` until ``stop``; a failure is logged
    as the event ``failed``."""
    while not stop.is_set():
        try:
            await work()
        except Exception as exc:
            log.error(failed, error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
