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
import re
from typing import Any

from aiohttp import web

from fleet.compliance import (
    EkCertificate,
    NodeFacts,
    RolloutRecord,
    SeenReport,
    report_document,
)
from fleet.tlog import EntryKind, LogEntry, details
from server.advisories import served_catalog
from server.attestation.enrollment import EnrolledTpm
from server.config import ServerConfig
from server.fleetview import node_state
from server.http import ApiError, Route, operator, services
from server.report_render import CONTENT_TYPES, file_name, render
from server.store import NodeStatus, ReportRecord, Store

HEADER_SIGNATURE = "Gpuward-Report-Signature"
HEADER_KEY_ID = "Gpuward-Report-Key-Id"
# Reports per node read from the store; the document shows the updates among them.
HISTORY_READ = 500
MAX_FILE_NAME = 200


# The rollout engine's events name operators so (server.rollout.engine, fleet.rollout.command);
# a token's name holds no colon.
_STARTED = re.compile(r"started by ([^:]+): ")
_RESUMED = re.compile(r"resume by (.+)")


async def rollouts_by_node(store: Store) -> dict[str, tuple[RolloutRecord, ...]]:
    """Each node's rollouts, with the operators their events name."""
    found: dict[str, list[RolloutRecord]] = {}
    for rollout in await store.rollouts():
        events = [e.event for e in await store.rollout_events(rollout.id)]
        started = next((m.group(1) for e in events if (m := _STARTED.match(e))), None)
        resumed = tuple(m.group(1) for e in events if (m := _RESUMED.fullmatch(e)))
        record = RolloutRecord(
            rollout.id, rollout.target_driver, rollout.created_at, started, resumed
        )
        for node in rollout.nodes:
            found.setdefault(node.node_id, []).append(record)
    return {node_id: tuple(records) for node_id, records in found.items()}


def facts(
    status: NodeStatus,
    records: list[ReportRecord],
    now: float,
    config: ServerConfig,
    rollouts: tuple[RolloutRecord, ...] = (),
) -> NodeFacts:
    """What the report says of one node: its enrollment and its reports, newest first."""
    node = status.node
    tpm = None if node.tpm is None else EnrolledTpm.from_dict(json.loads(node.tpm))
    return NodeFacts(
        node_id=node.node_id,
        pool=node.pool,
        state=node_state(status, now, config),
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
        rollouts=rollouts,
    )


async def fleet_facts(store: Store, now: float, config: ServerConfig) -> list[NodeFacts]:
    """Every enrolled node's facts, read in two queries whatever the fleet's size."""
    statuses = await store.fleet()
    histories = await store.histories(HISTORY_READ)
    rollouts = await rollouts_by_node(store)
    return [
        facts(s, histories.get(s.node.node_id, []), now, config, rollouts.get(s.node.node_id, ()))
        for s in statuses
    ]


def _format(request: web.Request) -> str:
    fmt = request.query.get("format", "json")
    if fmt not in CONTENT_TYPES:
        raise ApiError(400, "format must be json, html, pdf or csv (the evidence file)")
    return fmt


def _file(request: web.Request) -> str | None:
    """The name the reader saves the report under, which the HTML and PDF print beside
    its signature file's; a plain file name, so it cannot smuggle markup or a path."""
    name = request.query.get("file")
    if name is not None and not (
        0 < len(name) <= MAX_FILE_NAME
        and name not in (".", "..")
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    ):
        raise ApiError(
            400,
            f"file must be a plain file name of letters, digits, '-', '_' and '.', "
            f"at most {MAX_FILE_NAME} characters",
        )
    return name


async def _respond(request: web.Request, scope: str, found: list[NodeFacts]) -> web.Response:
    s = services(request)
    signer = s.report_signer
    fmt = _format(request)
    name = _file(request)
    now = s.clock()
    # Rendering a large fleet's PDF takes a while: off the loop that serves nodes.
    catalog = await asyncio.to_thread(served_catalog, s.config.repo)
    log_size, checkpoint = await s.tlog.checkpoint()
    document = report_document(
        scope, found, catalog, int(now), signer.key_id, signer.algorithm,
        s.config.report_interval_s, checkpoint,
    )  # fmt: skip
    name = name or file_name(document, fmt)
    body = await asyncio.to_thread(render, document, fmt, name)
    # A key in a PKCS#11 token signs in milliseconds, not microseconds: off the loop too.
    signature = await asyncio.to_thread(signer.sign, body)
    subject = scope if scope == "fleet" else found[0].node_id
    report = details(format=fmt, key_id=signer.key_id, under=str(log_size))
    entry = LogEntry(
        EntryKind.COMPLIANCE_REPORT, int(now), subject, hashlib.sha256(body).hexdigest(), report
    )
    await s.tlog.append([entry])
    return web.Response(
        body=body,
        content_type=CONTENT_TYPES[fmt].split(";")[0],
        charset="utf-8" if fmt in ("html", "csv") else None,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            HEADER_SIGNATURE: base64.b64encode(signature).decode(),
            HEADER_KEY_ID: signer.key_id,
            "Cache-Control": "no-store",
        },
    )


async def fleet_report(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    s = services(request)
    return await _respond(request, "fleet", await fleet_facts(s.store, s.clock(), s.config))


async def node_report(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    node_id = request.match_info["node_id"]
    s = services(request)
    status = await s.store.node(node_id)
    if status is None:
        raise ApiError(404, f"no enrolled node {node_id!r}")
    records = await s.store.history(node_id, HISTORY_READ)
    rollouts = (await rollouts_by_node(s.store)).get(node_id, ())
    return await _respond(request, "node", [facts(status, records, s.clock(), s.config, rollouts)])


_RESPONSES = {
    200: (f"the report file; {HEADER_SIGNATURE}: base64 signature over it", None),
    400: ("unknown format", "Error"),
    401: ("no or unknown operator token", "Error"),
    403: ("the token's role does not allow this", "Error"),
}
_QUERY: dict[str, dict[str, Any]] = {
    "format": {"type": "string", "enum": sorted(CONTENT_TYPES)},
    "file": {"type": "string", "maxLength": MAX_FILE_NAME, "pattern": "^[A-Za-z0-9._-]+$"},
}

ROUTES = (
    Route(
        "GET",
        "/v1/reports/fleet",
        fleet_report,
        "A signed compliance report of the whole fleet (JSON, HTML, PDF, or the CSV evidence)",
        "viewer",
        responses=_RESPONSES,
        query=_QUERY,
    ),
    Route(
        "GET",
        "/v1/reports/nodes/{node_id}",
        node_report,
        "A signed compliance report of one node (JSON, HTML, PDF, or the CSV evidence)",
        "viewer",
        responses={**_RESPONSES, 404: ("no such node", "Error")},
        query=_QUERY,
    ),
)
