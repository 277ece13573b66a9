"""``/v1/reports/...``: compliance reports, rendered and signed by the server.

The server renders and signs, so an auditor's copy carries the signature of the
key that holds the fleet's records, whoever fetched it (a viewer token is
enough). The body is the report file; the ``Gpuward-Report-Signature`` header
carries the base64 signature (``keys.report_key``: Ed25519, or ECDSA P-256 from
a key in a PKCS#11 token) over exactly those bytes, which the CLI stores as
``FILE.sig``. ``GET`` makes one file now; ``POST`` (operator) makes and keeps
every format (``server.report_runs``), listed under ``/v1/reports/kept`` and
fetched from there file by file with its signature.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from fleet.compliance import NodeFacts
from fleet.kept_reports import (
    MAX_LISTED,
    REPORT_ID,
    REPORT_SCOPES,
    KeptFileInfo,
    KeptReportInfo,
    KeptReportList,
)
from server.http import OPERATOR_REFUSALS, ApiError, Route, operator, services
from server.report_facts import fleet_facts, node_facts
from server.report_render import CONTENT_TYPES
from server.report_runs import issue, make_report
from server.store import KeptReport

HEADER_SIGNATURE = "Gpuward-Report-Signature"
HEADER_KEY_ID = "Gpuward-Report-Key-Id"
MAX_FILE_NAME = 200
# Judging and rendering 100,000 nodes takes a minute or two here, beyond the
# request timeout other routes have; a reverse proxy in front must allow as long.
REPORT_TIMEOUT_S = 900.0


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


async def _found(request: web.Request) -> tuple[str, list[NodeFacts]]:
    """The report's scope and the facts it covers: the fleet, or the node in the path."""
    s = services(request)
    if "node_id" not in request.match_info:
        return "fleet", await fleet_facts(s.store, s.clock(), s.config)
    node_id = request.match_info["node_id"]
    found = await node_facts(s.store, node_id, s.clock(), s.config)
    if found is None:
        raise ApiError(404, f"no enrolled node {node_id!r}")
    return "node", [found]


def _file_headers(name: str, signature: bytes, key_id: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{name}"',
        HEADER_SIGNATURE: base64.b64encode(signature).decode(),
        HEADER_KEY_ID: key_id,
        "Cache-Control": "no-store",
    }


async def get_report(request: web.Request) -> web.Response:
    token = await operator(request, "viewer")
    fmt, name = _format(request), _file(request)
    scope, found = await _found(request)
    svc = services(request)
    made = await make_report(
        svc, scope, found, made_by=token.name, formats=(fmt,), names={fmt: name} if name else None
    )
    await issue(svc, made, keep=False)
    record = made.record
    [file] = record.files
    return web.Response(
        body=made.bodies[fmt],
        content_type=CONTENT_TYPES[fmt].split(";")[0],
        charset="utf-8" if fmt in ("html", "csv") else None,
        headers=_file_headers(file.name, file.signature, record.key_id),
    )


def info(record: KeptReport) -> KeptReportInfo:
    files = tuple(KeptFileInfo(f.fmt, f.name, f.sha256, f.size) for f in record.files)
    return KeptReportInfo(
        record.report_id, record.scope, record.subject, record.generated_at,
        record.made_by, record.key_id, files,
    )  # fmt: skip


async def keep_report(request: web.Request) -> web.Response:
    token = await operator(request, "operator")
    scope, found = await _found(request)
    svc = services(request)
    made = await make_report(svc, scope, found, made_by=token.name)
    await issue(svc, made, keep=True)
    return web.json_response(info(made.record).to_dict(), status=201)


async def list_kept(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    scope = request.query.get("scope")
    if scope is not None and scope not in REPORT_SCOPES:
        raise ApiError(400, f"scope must be one of {', '.join(REPORT_SCOPES)}")
    limit = request.query.get("limit", "100")
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit[:6]) <= MAX_LISTED):
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LISTED}")
    kept = await services(request).store.kept_reports(scope, int(limit))
    return web.json_response(KeptReportList(tuple(info(k) for k in kept)).to_dict())


async def get_kept(request: web.Request) -> web.StreamResponse:
    await operator(request, "viewer")
    report_id, fmt = request.match_info["report_id"], request.match_info["format"]
    store = services(request).store
    record = await store.kept_report(report_id) if REPORT_ID.fullmatch(report_id) else None
    file = None if record is None else next((f for f in record.files if f.fmt == fmt), None)
    if record is None or file is None:
        raise ApiError(404, f"no kept report {report_id[:80]!r} with a {fmt[:8]!r} file")
    response = web.StreamResponse(headers=_file_headers(file.name, file.signature, record.key_id))
    response.content_type = CONTENT_TYPES[fmt].split(";")[0]
    if fmt in ("html", "csv"):
        response.charset = "utf-8"
    response.content_length = file.size
    await response.prepare(request)
    seq = 0
    while (piece := await store.kept_chunk(report_id, fmt, seq)) is not None:
        await response.write(piece)
        seq += 1
    await response.write_eof()
    return response


_FILE = (f"the report file; {HEADER_SIGNATURE}: base64 signature over it", None)
_QUERY: dict[str, dict[str, Any]] = {
    "format": {"type": "string", "enum": sorted(CONTENT_TYPES)},
    "file": {"type": "string", "maxLength": MAX_FILE_NAME, "pattern": "^[A-Za-z0-9._-]+$"},
}
_NO_NODE = {404: ("no such node", "Error")}
_KEPT = {201: ("the kept report: its files and who made it", "KeptReportInfo")}

ROUTES = (
    Route(
        "GET",
        "/v1/reports/fleet",
        get_report,
        "A signed compliance report of the whole fleet (JSON, HTML, PDF, or the CSV evidence)",
        "viewer",
        responses={200: _FILE, 400: ("unknown format", "Error"), **OPERATOR_REFUSALS},
        query=_QUERY,
        timeout_s=REPORT_TIMEOUT_S,
    ),
    Route(
        "GET",
        "/v1/reports/nodes/{node_id}",
        get_report,
        "A signed compliance report of one node (JSON, HTML, PDF, or the CSV evidence)",
        "viewer",
        responses={200: _FILE, 400: ("unknown format", "Error"), **OPERATOR_REFUSALS, **_NO_NODE},
        query=_QUERY,
        timeout_s=REPORT_TIMEOUT_S,
    ),
    Route(
        "POST",
        "/v1/reports/fleet",
        keep_report,
        "Make and keep a signed fleet report in every format, with its trend",
        "operator",
        responses={**_KEPT, **OPERATOR_REFUSALS},
        timeout_s=REPORT_TIMEOUT_S,
    ),
    Route(
        "POST",
        "/v1/reports/nodes/{node_id}",
        keep_report,
        "Make and keep a signed report of one node in every format, with its trend",
        "operator",
        responses={**_KEPT, **OPERATOR_REFUSALS, **_NO_NODE},
        timeout_s=REPORT_TIMEOUT_S,
    ),
    Route(
        "GET",
        "/v1/reports/kept",
        list_kept,
        "Kept compliance reports, newest first",
        "viewer",
        responses={
            200: ("the kept reports", "KeptReportList"),
            400: ("bad scope or limit", "Error"),
            **OPERATOR_REFUSALS,
        },
        query={
            "scope": {"type": "string", "enum": list(REPORT_SCOPES)},
            "limit": {"type": "string", "pattern": "^[0-9]{1,4}$"},
        },
    ),
    Route(
        "GET",
        "/v1/reports/kept/{report_id}/{format}",
        get_kept,
        "A file of a kept report, with its signature",
        "viewer",
        responses={200: _FILE, **OPERATOR_REFUSALS, 404: ("no such report or file", "Error")},
        timeout_s=REPORT_TIMEOUT_S,
    ),
)
