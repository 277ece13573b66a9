"""Keeping the table enforced, one agent cycle at a time.

Every cycle compares the live table with the policy and repairs any drift
(a rule deleted by hand, an accept-all added, the table removed or made
dormant); what differed goes into the report, so an operator learns that
someone touched the firewall even though the agent already undid it.

Host names are re-resolved every ``resolve_interval_s``. When that fails the
previous addresses stay in force (a DNS outage must not open or close the
firewall) and the report carries a note. Cgroup presence is checked every
cycle: a restarted service gets a new cgroup, which the table must follow.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from fleet.errors import GpuwardError
from fleet.firewall import MAX_LINES, FirewallReport
from node.firewall.nft import Nft, UnreadableTable
from node.firewall.policy import FirewallPolicy
from node.firewall.resolve import (
    CGROUP_ROOT,
    Resolution,
    Resolver,
    UserLookup,
    present_cgroups,
    resolve,
    system_resolver,
    system_user_lookup,
)
from node.firewall.ruleset import MISSING, NftObject, Ruleset, diff, digest, render

log = structlog.get_logger("gpuward.firewall")


def observe(nft: Nft, expected: Ruleset) -> tuple[list[NftObject] | None, list[str]]:
    """The live table (None when absent or unreadable) and how it differs from ``expected``."""
    try:
        live = nft.list_table()
    except UnreadableTable as exc:
        return None, [str(exc)]
    return live, diff(expected.to_json(), live)


class Enforcer:
    def __init__(
        self,
        policy: FirewallPolicy,
        nft: Nft,
        *,
        resolver: Resolver = system_resolver,
        user_lookup: UserLookup = system_user_lookup,
        cgroup_root: Path = CGROUP_ROOT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._nft = nft
        self._resolver = resolver
        self._user_lookup = user_lookup
        self._cgroup_root = cgroup_root
        self._clock = clock
        self._resolution: Resolution | None = None
        self._resolved_at = 0.0
        self._applied: Ruleset | None = None

    def cycle(self) -> FirewallReport:
        """Bring the live table in line with the policy; never raises GpuwardError."""
        notes: list[str] = []
        try:
            expected = render(self.policy, self._refresh(notes))
            live, drift = observe(self._nft, expected)
            if not drift:
                return self._report("unchanged", live, notes)
            action, drift = ("applied", []) if self._untouched(live, drift) else ("repaired", drift)
            self._nft.apply(expected)
            self._applied = expected
            live, leftover = observe(self._nft, expected)
            if leftover:
                raise GpuwardError(
                    "the applied table reads back differently from the rendered one: "
                    + "; ".join(leftover[:5])
                )
        except GpuwardError as exc:
            log.error("firewall.enforce_failed", error=str(exc))
            return self._report("failed", self._live_or_none(), notes, error=str(exc))
        if drift:
            log.warning("firewall.drift_repaired", drift=drift, digest=expected.digest)
        else:
            log.info("firewall.applied", digest=expected.digest)
        return self._report(action, live, notes, drift=drift)

    def _untouched(self, live: list[NftObject] | None, drift: list[str]) -> bool:
        """Whether only this agent changed the table: no table before its first
        apply, or exactly what it applied last (so the policy or the addresses
        changed, and there is nothing to report as drift)."""
        if self._applied is None:
            return drift == [MISSING]
        return live is not None and not diff(self._applied.to_json(), live)

    def _refresh(self, notes: list[str]) -> Resolution:
        now = self._clock()
        current = self._resolution
        if current is None or now - self._resolved_at >= self.policy.resolve_interval_s:
            try:
                current = resolve(self.policy, self._resolver, self._user_lookup, self._cgroup_root)
                self._resolved_at = now
            except GpuwardError as exc:
                if current is None:
                    raise
                notes.append(f"re-resolving failed, kept the previous addresses: {exc}")
                log.warning("firewall.resolve_failed", error=str(exc))
        present, missing = present_cgroups(self.policy, self._cgroup_root)
        current = dataclasses.replace(current, cgroups=present)
        self._resolution = current
        notes.extend(f"cgroup {p} does not exist yet; matched once it does" for p in missing)
        return current

    def _report(
        self,
        action: str,
        live: list[NftObject] | None,
        notes: list[str],
        *,
        drift: list[str] | None = None,
        error: str | None = None,
    ) -> FirewallReport:
        return FirewallReport(
            mode=self.policy.mode,
            digest=None if live is None else digest(live),
            in_sync=action != "failed",
            action=action,
            drift=tuple((drift or [])[:MAX_LINES]),
            notes=tuple(notes[:MAX_LINES]),
            error=error,
        )

    def _live_or_none(self) -> list[NftObject] | None:
        try:
            return self._nft.list_table()
        except GpuwardError:
            return None
