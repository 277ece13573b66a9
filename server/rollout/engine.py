"""Starting, advancing and steering rollouts against the store.

Each change runs ``fleet.rollout`` under the rollout's row lock in one
transaction with the assignments and audit events it causes, so with several
replicas a wave is advanced by one of them only, and a crash mid-way changes
nothing. The periodic ``tick`` skips rollouts another replica holds; operator
commands wait for the lock. Time comes from an injected clock, so tests drive
soak times and progress deadlines without sleeping. With ``notify`` (webhooks
configured), a halt or a missed deadline is also stored as a webhook event in
that transaction (``server.webhooks`` delivers it).

With ``attribution`` (the server's: ``server.attribution``), each tick also asks
why nodes degrade, and a running rollout whose target driver the answer names
(most nodes on it degraded, far beyond the fleet's rate) halts with that
evidence as its reason: a driver that degrades nodes without failing their
health gates would otherwise roll on wave after wave.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import structlog

from fleet.attribution import Attribution, Cluster
from fleet.errors import GpuwardError
from fleet.rollout import (
    Observation,
    Policy,
    Rollout,
    Transition,
    command,
    halt,
    new_rollout,
    step,
)
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from server.every import every
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
        attribution: Callable[[], Awaitable[Attribution]] | None = None,
    ) -> None:
        self._store = store
        self._repo = repo
        self._clock = clock
        self._director = director
        self._notify = notify
        self._attribution = attribution

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

    async def _advance(
        self, rollout_id: str, failing: Mapping[str, Cluster] | None = None
    ) -> Rollout | None:
        """``failing``: the driver versions attribution blames, with the evidence."""
        now = self._now()

        def advance(rollout: Rollout, seen: Mapping[str, Observation]) -> Transition:
            blamed = (failing or {}).get(rollout.target_driver or "")
            if blamed is None:
                moved = step(rollout, seen, now)
            else:
                moved = halt(rollout, f"attributed to driver {blamed.label}: {blamed.message}")
            return moved if self._notify else replace(moved, notices=())

        after = await self._store.change_rollout(rollout_id, advance, now, wait=False)
        if after is not None:
            log.debug("rollout_advanced", rollout=rollout_id, phase=after.phase, wave=after.wave)
        return after

    async def tick(self) -> None:
        """Advance every running rollout this replica can lock now, or halt it if
        attribution blames its target driver."""
        active = await self._store.active_rollouts()
        failing: dict[str, Cluster] = {}
        if active and self._attribution is not None:
            failing = (await self._attribution()).driver_clusters()
        for rollout_id in active:
            after = await self._advance(rollout_id, failing)
            if after is not None and after.target_driver in failing:
                log.warning(
                    "rollout_halted_by_attribution",
                    rollout=rollout_id,
                    driver=after.target_driver,
                    phase=after.phase,
                )
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
        """Tick every ``interval_s`` until ``stop``."""
        await every(interval_s, stop, self.tick, "rollout_tick_failed")
