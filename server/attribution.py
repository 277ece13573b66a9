"""Why nodes degrade, for operators and for rollouts: ``GET /v1/fleet/attribution``.

Each node heard from recently (not missing) counts with its latest report: its
health, driver version and topology labels (``fleet.topology``).
``fleet.attribution.attribute`` names the racks, rows, PDUs, NVLink domains or
driver versions the degraded nodes concentrate on, and the single cards. The
rollout engine asks the same question on every tick and halts a rollout moving
nodes to a driver named here (``server.rollout.engine``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from fleet.attribution import Attribution, NodeCondition, attribute
from server.http import OPERATOR_REFUSALS, Route, operator, services
from server.store import Store

log = structlog.get_logger(__name__)


async def fleet_attribution(
    store: Store, clock: Callable[[], float], missing_after_s: int
) -> Attribution:
    """The attribution of the degradations of the nodes heard from in the last
    ``missing_after_s`` seconds (as ``clock`` tells them)."""
    since = clock() - missing_after_s
    conditions = [
        NodeCondition.of(status.report)
        for status in await store.fleet()
        if status.report is not None and status.last_seen is not None and status.last_seen >= since
    ]
    found = await asyncio.to_thread(attribute, conditions)
    if found.clusters:
        log.info(
            "degradations_attributed",
            nodes=found.nodes,
            degraded=found.degraded,
            clusters=[f"{c.cause} {c.label}" for c in found.clusters],
        )
    return found


async def get_attribution(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    missing_after_s = s.config.report_interval_s * s.config.missing_after
    found = await fleet_attribution(s.store, s.clock, missing_after_s)
    return web.json_response(found.to_dict())


ROUTES = (
    Route(
        "GET",
        "/v1/fleet/attribution",
        get_attribution,
        "What the degraded nodes have in common: a rack, row, PDU or NVLink domain "
        "(cooling, power, fabric), a driver version, or a single card, with the evidence",
        "viewer",
        responses={
            200: ("the clusters, strongest evidence first, and the suspect cards", "Attribution"),
            **OPERATOR_REFUSALS,
        },
    ),
)
