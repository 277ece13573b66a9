"""``GET /v1/reports/...``: compliance reports, rendered and signed by the server.

The server renders and signs, so an auditor's copy carries the signature of the
key that holds the fleet's records, whoever fetched it (a viewer token is
enough). The body is the report file; the ``Gpuward-Report-Signature`` header
carries the base64 signature (``keys.report_key``: Ed25519, or ECDSA P-256 from
a key in a PKCS#11 token) over exactly those bytes, which the CLI stores as
``FILE.sig``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

from aiohttp import web

from fleet.compliance import EkCertificate, NodeFacts, SeenReport, report_document
from fleet.tlog import EntryKind, LogEntry, details
from server.advisories import served_catalog
from server.attestation.enrollment import EnrolledTpm
from server.fleetview import node_state
from server.http import ApiError, Route, Services, operator, services
from server.report_render import CONTENT_TYPES, render
from server.store import NodeStatus

HEADER_SIGNATURE = "Gpuward-Report-Signature"
HEADER_KEY_ID = "Gpuward-Report-Key-Id"
# Reports per node read from the store; the document shows the updates among them.
HISTORY_READ = 500


async def _facts(svc: Services, status: NodeStatus, now: float) -> NodeFacts:
    node = status.node
    records = await svc.store.history(node.node_id, HISTORY_READ)
    tpm = None if node.tpm is None else EnrolledTpm.from_dict(json.loads(node.tpm))
    return NodeFacts(
        node_id=node.node_id,
        pool=node.pool,
        state=node_state(status, now, svc.config),
        enrollment=node.attestation,
        attested=node.attested,
        enrolled_at=node.enrolled_at,
        last_seen=status.last_seen,
        ek_certificate=None
        if tpm is None
        else EkCertificate(
            tpm.ek_certificate_sha256, tpm.ek_certificate_subject, tpm.ek_certificate_serial
        ),
        history=tuple(SeenReport(r.received_at, r.report, r.attestation) for r in records),
    )


def _format(request: web.Request) -> str:
    fmt = request.query.get("format", "json")
    if fmt not in CONTENT_TYPES:
        raise ApiError(400, "format must be json, html or pdf")
    return fmt


async def _respond(request: web.Request, scope: str, statuses: list[NodeStatus]) -> web.Response:
    s = services(request)
    signer = s.report_signer
    fmt = _format(request)
    now = s.clock()
    facts = [await _facts(s, status, now) for status in statuses]
    # Rendering a large fleet's PDF takes a while: off the loop that serves nodes.
    catalog = await asyncio.to_thread(served_catalog, s.config.repo)
    log_size, checkpoint = await s.tlog.checkpoint()
    document = report_document(
        scope, facts, catalog, int(now), signer.key_id, signer.algorithm, checkpoint
    )
    body = await asyncio.to_thread(render, document, fmt)
    # A key in a PKCS#11 token signs in milliseconds, not microseconds: off the loop too.
    signature = await asyncio.to_thread(signer.sign, body)
    subject = scope if scope == "fleet" else statuses[0].node.node_id
    report = details(format=fmt, key_id=signer.key_id, under=str(log_size))
    entry = LogEntry(
        EntryKind.COMPLIANCE_REPORT, int(now), subject, hashlib.sha256(body).hexdigest(), report
    )
    await s.tlog.append([entry])
    return web.Response(
        body=body,
        content_type=CONTENT_TYPES[fmt].split(";")[0],
        charset="utf-8" if fmt == "html" else None,
        headers={
            HEADER_SIGNATURE: base64.b64encode(signature).decode(),
            HEADER_KEY_ID: signer.key_id,
            "Cache-Control": "no-store",
        },
    )


async def fleet_report(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    return await _respond(request, "fleet", await services(request).store.fleet())


async def node_report(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    node_id = request.match_info["node_id"]
    status = await services(request).store.node(node_id)
    if status is None:
        raise ApiError(404, f"no enrolled node {node_id!r}")
    return await _respond(request, "node", [status])


_RESPONSES = {
    200: (f"the report file; {HEADER_SIGNATURE}: base64 signature over it", None),
    400: ("unknown format", "Error"),
    401: ("no or unknown operator token", "Error"),
    403: ("the token's role does not allow this", "Error"),
}
_QUERY = {"format": {"type": "string", "enum": sorted(CONTENT_TYPES)}}

ROUTES = (
    Route(
        "GET",
        "/v1/reports/fleet",
        fleet_report,
        "A signed compliance report of the whole fleet (JSON, HTML or PDF)",
        "viewer",
        responses=_RESPONSES,
        query=_QUERY,
    ),
    Route(
        "GET",
        "/v1/reports/nodes/{node_id}",
        node_report,
        "A signed compliance report of one node (JSON, HTML or PDF)",
        "viewer",
        responses={**_RESPONSES, 404: ("no such node", "Error")},
        query=_QUERY,
    ),
)
