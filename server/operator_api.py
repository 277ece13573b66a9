"""The API operators call with a bearer token: fleet, nodes, pools, rollouts, and
the server's own status.

Reading needs the viewer role, steering rollouts the operator role, removing a
node (so that it can enroll again with a new key) the admin role.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import structlog
from aiohttp import web

from fleet.errors import InvalidDocument
from fleet.rollout import ROLLOUT_ID, Policy, Rollout, RolloutError
from fleet.schema import Reader
from server.fleetview import fleet_json, history_json, node_json
from server.http import OPERATOR_REFUSALS, ApiError, Route, operator, read_json, services
from server.renewal import status_json, statuses
from server.rollout.engine import NotFound
from server.store import Conflict

log = structlog.get_logger(__name__)

MAX_HISTORY = 500


async def get_fleet(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    return web.json_response(fleet_json(await s.store.fleet(), s.clock(), s.config))


def _limit(request: web.Request, default: int) -> int:
    text = request.query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= MAX_HISTORY:
        raise ApiError(400, f"limit must be between 1 and {MAX_HISTORY}")
    return int(text)


async def get_node(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    node_id = request.match_info["node_id"]
    limit = _limit(request, 50)
    status = await s.store.node(node_id)
    if status is None:
        raise ApiError(404, f"no enrolled node {node_id!r}")
    return web.json_response(
        {
            **node_json(status, s.clock(), s.config),
            "history": history_json(await s.store.history(node_id, limit)),
        }
    )


async def delete_node(request: web.Request) -> web.Response:
    """Remove a node and all it left (``Store.remove_node``), freeing its TPM to enroll
    again, under this id or another: the one way to move a TPM, so it is audited."""
    who = await operator(request, "admin")
    node_id = request.match_info["node_id"]
    s = services(request)
    removed = await s.store.remove_node(node_id)
    if removed is None:
        raise ApiError(404, f"no enrolled node {node_id!r}")
    s.stragglers.forget()  # a removed node leaves this replica's ranking at once
    log.info(
        "node_removed",
        audit=True,
        node=node_id,
        by=f"{who.name} ({who.role})",
        pool=removed.pool,
        attestation=removed.attestation,
        ek_released=removed.ek_certificate_sha256,
        reports_deleted=removed.reports,
    )
    return web.json_response(
        {
            "removed": node_id,
            "reports_deleted": removed.reports,
            "ek_released": removed.ek_certificate_sha256,
        }
    )


async def get_pools(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    pools = await services(request).store.pools()
    return web.json_response({"pools": [{"pool": p, "nodes": n} for p, n in pools.items()]})


def rollout_json(rollout: Rollout) -> dict[str, Any]:
    """The stored rollout, plus counts per wave for people and dashboards."""
    waves = []
    for wave in range(rollout.wave_count):
        members = rollout.wave_nodes(wave)
        counts = {p: sum(1 for n in members if n.progress == p) for p in _PROGRESS}
        waves.append({"wave": wave, "nodes": len(members), **counts})
    return {**rollout.to_dict(), "waves": waves}


_PROGRESS = ("pending", "assigned", "done", "failed")


async def list_rollouts(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    rollouts = await services(request).store.rollouts()
    return web.json_response({"rollouts": [rollout_json(r) for r in rollouts]})


async def start_rollout(request: web.Request) -> web.Response:
    who = await operator(request, "operator")
    doc = await read_json(request)
    try:
        r = Reader(doc, "rollout", allowed=frozenset({"id", "pool", "target", "policy"}))
        rollout_id = r.optional_text("id", max_len=64, pattern=ROLLOUT_ID)
        pool = r.text("pool", max_len=64)
        target = r.text("target", max_len=512)
        policy = Policy.from_dict(cast(Mapping[str, Any], doc).get("policy", {}))
        rollout = await services(request).engine.start(
            pool, target, policy, f"{who.name} ({who.role})", rollout_id
        )
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    except InvalidDocument as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response(rollout_json(rollout), status=201)


async def get_rollout(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    rollout_id = request.match_info["rollout_id"]
    rollout = await s.store.rollout(rollout_id)
    if rollout is None:
        raise ApiError(404, f"no rollout {rollout_id!r}")
    events = await s.store.rollout_events(rollout_id)
    return web.json_response(
        {**rollout_json(rollout), "events": [{"at": e.at, "event": e.event} for e in events]}
    )


async def rollout_command(request: web.Request) -> web.Response:
    who = await operator(request, "operator")
    rollout_id, name = request.match_info["rollout_id"], request.match_info["command"]
    try:
        rollout = await services(request).engine.command(
            rollout_id, name, f"{who.name} ({who.role})"
        )
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except RolloutError as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(rollout_json(rollout))


async def get_server_status(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    return web.json_response(status_json(await statuses(s.store), s.clock(), s.config))


_OPERATOR = OPERATOR_REFUSALS

ROUTES = (
    Route(
        "GET",
        "/v1/fleet",
        get_fleet,
        "Every enrolled node with its state (heartbeats), attestation and latest report",
        "viewer",
        responses={200: ("the fleet", "Fleet"), **_OPERATOR},
    ),
    Route(
        "GET",
        "/v1/nodes/{node_id}",
        get_node,
        "One node and its report history, newest first",
        "viewer",
        responses={
            200: ("the node", "Node"),
            400: ("bad limit", "Error"),
            404: ("no such node", "Error"),
            **_OPERATOR,
        },
        query={"limit": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY}},
    ),
    Route(
        "DELETE",
        "/v1/nodes/{node_id}",
        delete_node,
        "Remove a node with its history (reports, samples, event log, challenges, "
        "pinned keys), freeing its TPM's EK: the id and the TPM may enroll again",
        "admin",
        responses={200: ("removed", "Removed"), 404: ("no such node", "Error"), **_OPERATOR},
    ),
    Route(
        "GET",
        "/v1/server/status",
        get_server_status,
        "The server's own health: each re-signer's last renewal of online metadata "
        "(outcome, problems, next try) and the served metadata that lapses first",
        "viewer",
        responses={200: ("the status", "ServerStatus"), **_OPERATOR},
    ),
    Route(
        "GET",
        "/v1/pools",
        get_pools,
        "Pools and how many nodes each has",
        "viewer",
        responses={200: ("the pools", "Pools"), **_OPERATOR},
    ),
    Route(
        "GET",
        "/v1/rollouts",
        list_rollouts,
        "Every rollout, newest first",
        "viewer",
        responses={200: ("the rollouts", "Rollouts"), **_OPERATOR},
    ),
    Route(
        "POST",
        "/v1/rollouts",
        start_rollout,
        "Start a rollout of a published bundle to a pool, in waves",
        "operator",
        request="RolloutRequest",
        responses={
            201: ("started", "Rollout"),
            400: ("malformed request", "Error"),
            404: ("unknown target", "Error"),
            409: ("the pool has an active rollout, or the id is taken", "Error"),
            413: ("body too large", "Error"),
            415: ("not JSON", "Error"),
            **_OPERATOR,
        },
    ),
    Route(
        "GET",
        "/v1/rollouts/{rollout_id}",
        get_rollout,
        "A rollout with its waves and audit events",
        "viewer",
        responses={200: ("the rollout", "Rollout"), 404: ("no such rollout", "Error"), **_OPERATOR},
    ),
    Route(
        "POST",
        "/v1/rollouts/{rollout_id}/{command}",
        rollout_command,
        "pause, resume, abort, or rollback (re-assign every touched node its previous bundle)",
        "operator",
        responses={
            200: ("the rollout after the command", "Rollout"),
            404: ("no such rollout", "Error"),
            409: ("not allowed in the rollout's phase, or unknown command", "Error"),
            **_OPERATOR,
        },
    ),
)
