"""Report retention, enforced in the background: the hourly sweep.

Each batch of reports trims its own nodes to the count as it is stored
(``server.store.sql``), so a node reporting as fast as it may holds no more than
the count. What that cannot reach is the nodes that stopped reporting, whose
reports age past the limit, and every node after the count was lowered: the
sweep, run by the one process that runs the background duties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import structlog

from server.every import every
from server.store import Store

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 3600.0


async def sweep(store: Store, clock: Callable[[], float]) -> None:
    """One pass; a failure is logged, not raised: the next pass tries again."""
    try:
        deleted = await store.enforce_retention(clock())
    except Exception as exc:
        log.error("retention_sweep_failed", error=type(exc).__name__, reason=str(exc))
        return
    if deleted:
        log.info("retention_swept", reports_deleted=deleted)


async def run(store: Store, clock: Callable[[], float], stop: asyncio.Event) -> None:
    """Sweep now, then every ``SWEEP_INTERVAL_S`` until ``stop``."""
    await every(SWEEP_INTERVAL_S, stop, partial(sweep, store, clock), "retention_sweep_failed")
