"""Checkpoint advice for operators: ``GET /v1/fleet/checkpoint-advice``.

The interruptions and GPU-hours come from the reports the store retains
(``report_retention_count`` per node, at most ``report_retention_days`` old),
counted by ``fleet.checkpoint.exposure``, the same function the CLI's offline
mode and the tests use; the advice is ``fleet.checkpoint.advise``.
"""

from __future__ import annotations

import math
import time

import structlog
from aiohttp import web

from fleet.checkpoint import MAX_JOB_GPUS, CheckpointAdvice, advise, exposure
from fleet.report import HealthReport
from server.http import ApiError, Route, operator, services

log = structlog.get_logger(__name__)

MAX_CHECKPOINT_COST_S = 7 * 24 * 3600.0


def _query(request: web.Request) -> tuple[str | None, int, float]:
    pool = request.query.get("pool") or None
    gpus = request.query.get("gpus", "")
    if not gpus.isdigit() or not 1 <= int(gpus) <= MAX_JOB_GPUS:
        raise ApiError(400, f"gpus must be a whole number between 1 and {MAX_JOB_GPUS}")
    try:
        cost = float(request.query.get("checkpoint_cost", ""))
    except ValueError:
        cost = math.nan
    if not 0 < cost <= MAX_CHECKPOINT_COST_S:  # also refuses NaN
        raise ApiError(
            400, f"checkpoint_cost must be seconds, above 0 and at most {MAX_CHECKPOINT_COST_S:.0f}"
        )
    return pool, int(gpus), cost


async def get_checkpoint_advice(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    pool, gpus, cost = _query(request)
    s = services(request)
    started = time.monotonic()
    histories: list[list[tuple[float, HealthReport]]] = []
    for status in await s.store.fleet():
        if pool is not None and status.node.pool != pool:
            continue
        records = await s.store.history(status.node.node_id, s.config.report_retention_count)
        histories.append([(r.received_at, r.report) for r in reversed(records)])
    if pool is not None and not histories:
        raise ApiError(404, f"no enrolled node in pool {pool!r}")
    seen = exposure(histories)
    advice: CheckpointAdvice = advise(seen.interruptions, seen.gpu_hours, gpus, cost, pool)
    log.info(
        "checkpoint_advice",
        pool=pool,
        nodes=seen.nodes,
        interruptions=seen.interruptions,
        gpu_hours=round(seen.gpu_hours, 1),
        seconds=round(time.monotonic() - started, 3),
    )
    return web.json_response(advice.to_dict())


ROUTES = (
    Route(
        "GET",
        "/v1/fleet/checkpoint-advice",
        get_checkpoint_advice,
        "The mean time between failures of a job of N GPUs and its Young/Daly checkpoint "
        "interval, from the interruptions (node-fault XIDs, nodes turning failed) a pool's "
        "retained reports show",
        "viewer",
        responses={
            200: ("the advice", "CheckpointAdvice"),
            400: ("bad gpus or checkpoint_cost", "Error"),
            404: ("no node in the pool", "Error"),
            401: ("no or unknown operator token", "Error"),
            403: ("the token's role does not allow this", "Error"),
        },
        query={
            "pool": {"type": "string", "description": "the pool; left out: the whole fleet"},
            "gpus": {"type": "integer", "minimum": 1, "maximum": MAX_JOB_GPUS},
            "checkpoint_cost": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_CHECKPOINT_COST_S,
                "description": "seconds one checkpoint takes",
            },
        },
    ),
)
