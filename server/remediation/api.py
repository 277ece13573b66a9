"""The remediation API: boards and audit log for viewers, approvals and releases
for operators (``gpuward fleet remediation``)."""

from __future__ import annotations

from aiohttp import web

from fleet.inventory import NODE_ID
from fleet.remediation import MAX_AUDIT_READ, RemediationAuditLog, RemediationOverview
from server.http import OPERATOR_REFUSALS, ApiError, Route, operator, services
from server.remediation.engine import NotUnderRemediation, OperatorCommand, RemediationEngine

DEFAULT_AUDIT_READ = 200


def _engine(request: web.Request) -> RemediationEngine:
    engine = services(request).remediation
    if engine is None:
        raise ApiError(
            404, "remediation is not configured: add [remediation] to the server's server.toml"
        )
    return engine


async def get_boards(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    boards = await _engine(request).boards()
    return web.json_response(RemediationOverview(tuple(boards)).to_dict())


async def get_audit(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    node = request.query.get("node")
    if node is not None and not NODE_ID.fullmatch(node):
        raise ApiError(400, "node must be a node id")
    raw_limit = request.query.get("limit", str(DEFAULT_AUDIT_READ))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_AUDIT_READ:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_AUDIT_READ}")
    entries = await services(request).store.remediation_audit(node, int(raw_limit))
    return web.json_response(RemediationAuditLog(tuple(entries)).to_dict())


async def post_command(request: web.Request) -> web.Response:
    who = await operator(request, "operator")
    node_id, name = request.match_info["node_id"], request.match_info["command"]
    engine = _engine(request)
    command = OperatorCommand(node_id, f"{who.name} ({who.role})")
    try:
        if name == "approve":
            board = await engine.approve(command)
        elif name == "release":
            board = await engine.release(command)
        else:
            raise ApiError(404, f"unknown command {name!r}: approve or release")
    except NotUnderRemediation as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(RemediationOverview((board,)).to_dict())


_OPERATOR = {
    **OPERATOR_REFUSALS,
    404: ("remediation is not configured", "Error"),
}

ROUTES = (
    Route(
        "GET",
        "/v1/remediation",
        get_boards,
        "Every pool's remediation board: the nodes under remediation and those held back",
        "viewer",
        responses={200: ("the boards, by pool", "RemediationOverview"), **_OPERATOR},
    ),
    Route(
        "GET",
        "/v1/remediation/audit",
        get_audit,
        "The remediation audit log, newest entries (oldest first), each with its finding",
        "viewer",
        responses={
            200: ("the entries", "RemediationAuditLog"),
            400: ("a bad node or limit", "Error"),
            **_OPERATOR,
        },
        query={
            "node": {"type": "string", "description": "one node's entries only"},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_READ},
        },
    ),
    Route(
        "POST",
        "/v1/remediation/nodes/{node_id}/{command}",
        post_command,
        "approve (an action waiting for approval) or release (end a node's remediation: "
        "drop a waiting action, or resume the node now, one marked for service included)",
        "operator",
        responses={
            200: ("the node's pool's board after the command", "RemediationOverview"),
            409: ("the node is not under remediation, or not awaiting approval", "Error"),
            **_OPERATOR,
        },
    ),
)
