"""Checkpoint advice for operators: ``GET /v1/fleet/checkpoint-advice``.

The interruptions and GPU-hours come from the reports the store retains
(``report_retention_count`` per node, at most ``report_retention_days`` old),
counted by ``fleet.checkpoint.exposure``, the same function the CLI's offline
mode and the tests use; the advice is ``fleet.checkpoint.advise``. The
dashboard's checkpoint page (``server.dashboard``) shows what
``fleet_checkpoint_advice`` answers here, pool by pool, and refuses a job the
same way (``job``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from fleet.checkpoint import MAX_JOB_GPUS, CheckpointAdvice, advise, combined, exposure
from fleet.report import HealthReport
from server.http import OPERATOR_REFUSALS, ApiError, Route, Services, operator, services

log = structlog.get_logger(__name__)

MAX_CHECKPOINT_COST_S = 7 * 24 * 3600.0


class BadJob(ValueError):
    """A job size or checkpoint cost that cannot be advised on (answered 400, or
    shown on the dashboard's page)."""


def job(query: Mapping[str, str]) -> tuple[int, float]:
    """The job's GPUs and checkpoint cost from a query string (the API's, or the
    dashboard form's: the same names), refused with a message that says what fits."""
    gpus = query.get("gpus", "")
    # isascii: str.isdigit also accepts "²", which int() then refuses; and a bound on
    # the length before int(), which refuses over 4,300 digits with an error of its own.
    digits = gpus.isascii() and gpus.isdigit() and len(gpus) <= len(str(MAX_JOB_GPUS))
    if not digits or not 1 <= int(gpus) <= MAX_JOB_GPUS:
        raise BadJob(f"gpus must be a whole number between 1 and {MAX_JOB_GPUS}, not {gpus[:40]!r}")
    given = query.get("checkpoint_cost", "")
    try:
        cost = float(given)
    except ValueError:
        cost = math.nan
    if not 0 < cost <= MAX_CHECKPOINT_COST_S:  # also refuses NaN
        raise BadJob(
            f"checkpoint_cost must be seconds, above 0 and at most {MAX_CHECKPOINT_COST_S:.0f}, "
            f"not {given[:40]!r}"
        )
    return int(gpus), cost


@dataclass(frozen=True)
class PoolAdvice:
    """The advice for one pool (``advice.pool``; None: the whole fleet) and the
    number of nodes whose reports it rests on."""

    nodes: int
    advice: CheckpointAdvice


async def fleet_checkpoint_advice(
    s: Services, gpus: int, checkpoint_cost_s: float, pool: str | None = None
) -> tuple[PoolAdvice, tuple[PoolAdvice, ...]]:
    """The advice for ``pool`` (None: the whole fleet), and for each pool in it,
    by name: what the API answers and the dashboard's page shows. Each node's
    retained reports are read once. Raises ``ApiError`` 404 for a pool with no node."""
    started = time.monotonic()
    histories: dict[str, list[list[tuple[float, HealthReport]]]] = defaultdict(list)
    for status in await s.store.fleet():
        if pool is not None and status.node.pool != pool:
            continue
        records = await s.store.history(status.node.node_id, s.config.report_retention_count)
        histories[status.node.pool].append([(r.received_at, r.report) for r in reversed(records)])
    if pool is not None and not histories:
        raise ApiError(404, f"no enrolled node in pool {pool!r}")
    seen = {name: exposure(found) for name, found in sorted(histories.items())}
    pools = tuple(
        PoolAdvice(e.nodes, advise(e.interruptions, e.gpu_hours, gpus, checkpoint_cost_s, name))
        for name, e in seen.items()
    )
    whole = combined(seen.values())
    selected = PoolAdvice(
        whole.nodes, advise(whole.interruptions, whole.gpu_hours, gpus, checkpoint_cost_s, pool)
    )
    log.info(
        "checkpoint_advice",
        pool=pool,
        pools=len(pools),
        nodes=whole.nodes,
        interruptions=whole.interruptions,
        gpu_hours=round(whole.gpu_hours, 1),
        seconds=round(time.monotonic() - started, 3),
    )
    return selected, pools


async def get_checkpoint_advice(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    try:
        gpus, cost = job(request.query)
    except BadJob as exc:
        raise ApiError(400, str(exc)) from None
    pool = request.query.get("pool") or None
    selected, _ = await fleet_checkpoint_advice(services(request), gpus, cost, pool)
    return web.json_response(selected.advice.to_dict())


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
            **OPERATOR_REFUSALS,
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
