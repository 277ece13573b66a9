"""How the fleet looks to operators: node states from heartbeats, as JSON.

Every report is a heartbeat. A node silent for ``missing_after`` report
intervals is missing, whatever its last report said; an enrolled node that
never reported counts from its enrollment. The API and the dashboard both show
nodes through this module, so they always agree.

A node whose latest report names a bundle the served image repository no longer
lists runs a withdrawn bundle (``gpuward repo remove``): it is flagged, since
its agent will not move off it until a newer bundle is published or assigned.

Each node shows the security advisories open on the driver its latest report
names, and the fleet's summary counts them (``server.advisories``).

A node whose latest report says it runs otherwise than its bundle's signed
driver settings declare (``fleet.driver_settings``) lists each difference.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.attestation_verdict import AttestationVerdict
from keys.image_repo import ImageRepository
from server.advisories import ExposureMemo, served_catalog
from server.config import ServerConfig
from server.store import FleetCount, NodeStatus, ReportRecord, RolloutProgress

NODE_STATES = ("healthy", "unhealthy", "missing", "new")


def missing_before(now: float, config: ServerConfig) -> int:
    """The time before which a node last heard from is missing (``node_state``), for
    the store to tell states apart as this module does: ``seen < now - limit`` holds
    for a whole-second ``seen`` exactly when ``seen < ceil(now - limit)``."""
    return math.ceil(now - config.report_interval_s * config.missing_after)


def node_state(status: NodeStatus, now: float, config: ServerConfig) -> str:
    silent_for = now - (
        status.last_seen if status.last_seen is not None else status.node.enrolled_at
    )
    if silent_for > config.report_interval_s * config.missing_after:
        return "missing"
    if status.report is None:
        return "new"
    return "healthy" if status.report.healthy else "unhealthy"


def served_bundles(repo: Path) -> frozenset[str]:
    """The bundle target paths the image repository at ``repo`` lists now."""
    # Every change of what is listed signs a new timestamp file: read again only then.
    stamp = (repo / "metadata" / "timestamp.json").stat()
    return _listed_bundles(repo, stamp.st_ino, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _listed_bundles(repo: Path, _inode: int, _mtime_ns: int) -> frozenset[str]:
    image = ImageRepository(repo)
    return frozenset(
        path for role in image.branch_roles() for path in image.targets(role).signed.targets
    )


def node_json(
    status: NodeStatus,
    now: float,
    config: ServerConfig,
    served: frozenset[str] | None = None,
    memo: ExposureMemo | None = None,
) -> dict[str, Any]:
    """``served``: ``served_bundles(config.repo)``, and ``memo``: an exposure memo
    on ``served_catalog(config.repo)``, when the caller has them already."""
    node = status.node
    running = None if status.report is None else status.report.bundle
    if served is None:
        served = served_bundles(config.repo)
    if memo is None:
        memo = ExposureMemo(served_catalog(config.repo))
    exposure = memo.of(None if status.report is None else status.report.driver_version)
    return {
        "node_id": node.node_id,
        "pool": node.pool,
        "state": node_state(status, now, config),
        "attested": node.attested,
        "attestation": node.attestation,
        "enrolled_at": node.enrolled_at,
        "last_seen": status.last_seen,
        "assigned": status.assigned,
        "report": None if status.report is None else status.report.to_dict(),
        "report_attestation": _verdict(status.report_attestation),
        "withdrawn": running is not None and running not in served,
        "advisories": None if exposure is None else exposure.to_dict(),
        "settings_drift": _drift(status),
    }


def _drift(status: NodeStatus) -> list[str]:
    """Each way the node runs otherwise than its bundle's declared driver settings."""
    settings = None if status.report is None else status.report.settings
    return [] if settings is None else [d.message for d in settings.drift]


def _verdict(verdict: AttestationVerdict | None) -> dict[str, Any] | None:
    """A report's attestation verdict as shown; None: the report was not attested."""
    return None if verdict is None else verdict.to_dict()


def fleet_json(nodes: list[NodeStatus], now: float, config: ServerConfig) -> dict[str, Any]:
    served = served_bundles(config.repo)
    memo = ExposureMemo(served_catalog(config.repo))
    shown = [node_json(n, now, config, served, memo) for n in nodes]
    states = Counter(n["state"] for n in shown)
    drivers = Counter((n["report"] or {}).get("driver_version") or "none" for n in shown)
    advisories = memo.fleet(drivers)
    return {
        "nodes": shown,
        "summary": {
            "nodes": len(shown),
            "states": {state: states.get(state, 0) for state in NODE_STATES},
            "drivers": dict(sorted(drivers.items())),
            "unattested": sum(1 for n in shown if not n["attested"]),
            "withdrawn": sum(1 for n in shown if n["withdrawn"]),
            "settings_drift": sum(1 for n in shown if n["settings_drift"]),
            "missing_after_s": config.report_interval_s * config.missing_after,
            "advisories": None if advisories is None else advisories.to_dict(),
        },
    }


def history_json(records: list[ReportRecord]) -> list[dict[str, Any]]:
    return [
        {
            "received_at": r.received_at,
            "report": r.report.to_dict(),
            "attestation": _verdict(r.attestation),
        }
        for r in records
    ]


@dataclass(frozen=True)
class FleetSummary:
    """The fleet at a glance, as the dashboard's overview shows it: counts, the choices
    its filters offer, and the newest rollouts' progress. Each reads the whole fleet
    (or whole rollouts), so the dashboard computes it at most every few seconds."""

    nodes: int
    states: dict[str, int]
    drivers: dict[str, int]  # "none": no driver reported
    enrollments: tuple[str, ...]  # how nodes enrolled: unattested, tpm2
    unattested: int
    attestation_failing: int  # their latest report's attestation failed
    differs: int  # assigned a bundle they do not report running
    pools: tuple[str, ...]
    rollouts: tuple[RolloutProgress, ...]

    @classmethod
    def of(
        cls, counts: list[FleetCount], pools: list[str], rollouts: list[RolloutProgress]
    ) -> FleetSummary:
        drivers: Counter[str] = Counter()
        for c in counts:
            drivers[c.driver] += c.nodes
        return cls(
            nodes=sum(c.nodes for c in counts),
            states={state: sum(getattr(c, state) for c in counts) for state in NODE_STATES},
            drivers=dict(sorted(drivers.items())),
            enrollments=tuple(sorted({c.attestation for c in counts})),
            unattested=sum(c.nodes for c in counts if not c.attested),
            attestation_failing=sum(c.nodes for c in counts if c.report_attested is False),
            differs=sum(c.differs for c in counts),
            pools=tuple(pools),
            rollouts=tuple(rollouts),
        )
