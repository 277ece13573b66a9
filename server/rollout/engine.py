"""Starting, advancing and steering rollouts against the store.

Each change runs ``fleet.rollout`` under the rollout's row lock in one
transaction with the assignments and audit events it causes, so with several
replicas a wave is advanced by one of them only, and a crash mid-way changes
nothing. The periodic ``tick`` skips rollouts another replica holds; operator
commands wait for the lock. Time comes from an injected clock, so tests drive
soak times and progress deadlines without sleeping. With ``notify`` (webhooks
configured), a halt or a missed deadline is also stored as a webhook event in
that transaction (``server.webhooks`` delivers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import structlog

from fleet.errors import GpuwardError
from fleet.rollout import Observation, Policy, Rollout, Transition, command, new_rollout, step
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from server.rollout.director_sync import sync_director
from server.store import Store

log = structlog.get_logger(__name__)


class NotFound(GpuwardError):
    """No such rollout, target or pool."""


class RolloutEngine:
    def __init__(
        self,
        store: Store,
        repo: Path,
        clock: Callable[[], float],
        director: DirectorRepository | None = None,
        notify: bool = False,
    ) -> None:
        self._store = store
        self._repo = repo
        self._clock = clock
        self._director = director
        self._notify = notify

    async def publish_assignments(self) -> None:
        """Turn the store's assignments into signed director metadata, if a director runs."""
        if self._director is not None:
            await sync_director(self._store, ImageRepository(self._repo), self._director)

    def _now(self) -> int:
        return int(self._clock())

    async def start(
        self, pool: str, target: str, policy: Policy, who: str, rollout_id: str | None = None
    ) -> Rollout:
        published = {b.target_path: b for b in ImageRepository(self._repo).published()}
        if target not in published:
            raise NotFound(
                f"{target!r} is not a bundle of the image repository; "
                "publish it with 'gpuward repo add' first"
            )
        now = self._now()
        rollout_id = rollout_id or f"r-{now}-{secrets.token_hex(3)}"
        running = await self._store.pool_running(pool)
        rollout = new_rollout(
            rollout_id,
            pool,
            target,
            published[target].manifest.driver_version,
            policy,
            running,
            now,
        )
        await self._store.create_rollout(rollout, f"started by {who}: {target} to pool {pool}")
        log.info("rollout_started", rollout=rollout.id, pool=pool, target=target, by=who)
        after = await self._advance(rollout.id) or rollout
        await self.publish_assignments()
        return after

    async def _advance(self, rollout_id: str) -> Rollout | None:
        now = self._now()

        def advance(rollout: Rollout, seen: Mapping[str, Observation]) -> Transition:
            moved = step(rollout, seen, now)
            return moved if self._notify else replace(moved, notices=())

        after = await self._store.change_rollout(rollout_id, advance, now, wait=False)
        if after is not None:
            log.debug("rollout_advanced", rollout=rollout_id, phase=after.phase, wave=after.wave)
        return after

    async def tick(self) -> None:
        """Advance every running rollout this replica can lock now."""
        for rollout_id in await self._store.active_rollouts():
            await self._advance(rollout_id)
        await self.publish_assignments()

    async def command(self, rollout_id: str, name: str, who: str) -> Rollout:
        def apply(rollout: Rollout, _seen: Mapping[str, Observation]) -> Transition:
            return command(rollout, name, who)

        after = await self._store.change_rollout(rollout_id, apply, self._now(), wait=True)
        if after is None:
            raise NotFound(f"no rollout {rollout_id!r}; list them with 'gpuward rollout status'")
        log.info("rollout_command", rollout=rollout_id, command=name, by=who, phase=after.phase)
        await self.publish_assignments()
        return after

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Tick every ``interval_s`` until ``stop``; a failing tick is logged, not fatal."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # the loop must outlive a database hiccup
                log.error("rollout_tick_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
