"""The fleet's stragglers, for operators: ``GET /v1/fleet/stragglers`` and the dashboard.

Reports from NVML agents carry every GPU's health sample; the store keeps each
node's latest window of them. Here the windows of every node heard from
recently (not missing) go through ``fleet.stragglers.detect``, which compares
each GPU with the GPUs of the same model and power limit fleet-wide (and each
node as a whole with its peers), and the nodes come back ranked, the most
deviant first. The comparison runs in a worker thread: it is CPU work
proportional to the fleet; and at most once per report interval
(``server.periodic``), however many operators ask.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from fleet.stragglers import WINDOW, RankedNode, detect
from server.http import OPERATOR_REFUSALS, Route, Services, operator, services
from server.store import Store

log = structlog.get_logger(__name__)


async def fleet_stragglers(s: Services) -> dict[str, Any]:
    """The ranked stragglers, computed at most once per report interval (nodes report
    no faster), with ``computed_at``: the server time the ranking is from."""
    missing_after_s = s.config.report_interval_s * s.config.missing_after

    async def compute(now: float) -> dict[str, Any]:
        return await _stragglers_json(s.store, now, missing_after_s)

    computed = await s.stragglers.get(s.clock, s.config.report_interval_s, compute)
    return {**computed.value, "computed_at": computed.at}


async def straggler_reasons(s: Services) -> dict[str, str]:
    """Why each ranked straggler is one, by node (for remediation): its worst GPUs."""
    ranked = (await fleet_stragglers(s))["nodes"]
    return {n["node_id"]: "; ".join(g["message"] for g in n["stragglers"][:2]) for n in ranked}


async def _stragglers_json(store: Store, now: float, missing_after_s: int) -> dict[str, Any]:
    started = time.monotonic()
    windows = await store.gpu_windows(int(now) - missing_after_s)
    ranked = await asyncio.to_thread(detect, windows)
    log.info(
        "stragglers_computed",
        nodes_compared=len(windows),
        stragglers=len(ranked),
        seconds=round(time.monotonic() - started, 3),
    )
    return {
        "window_reports": WINDOW,
        "nodes_compared": len(windows),
        "nodes": [_node_json(rank, node) for rank, node in enumerate(ranked, start=1)],
    }


def _node_json(rank: int, node: RankedNode) -> dict[str, Any]:
    return {
        "rank": rank,
        "node_id": node.node_id,
        "score": round(node.score, 2),
        "stragglers": [
            {
                "gpu": s.gpu,
                "model": s.pool,
                "metric": s.metric,
                "value": s.value,
                "pool_median": s.pool_median,
                "score": round(s.score, 2),
                "message": s.message(),
            }
            for s in node.stragglers
        ],
    }


async def get_stragglers(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    return web.json_response(await fleet_stragglers(services(request)))


ROUTES = (
    Route(
        "GET",
        "/v1/fleet/stragglers",
        get_stragglers,
        "Nodes whose GPUs are persistently slower than their peers of the same model, "
        "most deviant first",
        "viewer",
        responses={
            200: ("the ranked stragglers", "Stragglers"),
            **OPERATOR_REFUSALS,
        },
    ),
)
