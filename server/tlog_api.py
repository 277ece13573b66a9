"""The transparency log's API (``server.tlog``).

Served to operators (viewer role) under ``/v1/log/`` and to nodes, with their
signed requests, under ``/v1/nodes/{node_id}/log/``: the signed checkpoint,
inclusion proofs by index or leaf hash, consistency proofs; operators also read
entries and the whole log as an export (``fleet.tlog.LogExport``) that mirrors
carry and ``gpuward log verify`` checks offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from fleet.tlog import bundle_key
from server.http import (
    OPERATOR_REFUSALS,
    SIGNED_RESPONSES,
    ApiError,
    Route,
    Services,
    operator,
    services,
    signed_request,
)
from server.tlog import LogRangeError, TransparencyLog

MAX_ENTRIES_PAGE = 1000


def _number(query: Mapping[str, str], name: str, default: int | None = None) -> int:
    given = query.get(name)
    if given is None and default is not None:
        return default
    if given is None or not (given.isascii() and given.isdigit() and len(given) <= 18):
        raise ApiError(400, f"{name} must be a whole number of entries, not {given!r}")
    return int(given)


async def _tlog(request: web.Request) -> TransparencyLog:
    """The log, once the caller may read it: an operator (viewer) under ``/v1/log``,
    or, under ``/v1/nodes/{node_id}/log``, that node by its signed request."""
    s: Services = services(request)
    if "node_id" in request.match_info:
        node, _sig, _body = await signed_request(request)
        if node.node_id != request.match_info["node_id"]:
            raise ApiError(403, f"node {node.node_id} reads the log under its own id")
    else:
        await operator(request, "viewer")
    return s.tlog


async def get_checkpoint(request: web.Request) -> web.Response:
    tlog = await _tlog(request)
    size = request.query.get("size")
    try:
        _, note = await tlog.checkpoint(None if size is None else _number(request.query, "size"))
    except LogRangeError as exc:
        raise ApiError(404, str(exc)) from None
    return web.Response(text=note, content_type="text/plain")


async def get_entries(request: web.Request) -> web.Response:
    tlog = await _tlog(request)
    start = _number(request.query, "start", 0)
    end = min(_number(request.query, "end", start + MAX_ENTRIES_PAGE), start + MAX_ENTRIES_PAGE)
    docs = await tlog.store.log_entries(start, end)
    return web.json_response({"start": start, "entries": docs})


async def get_inclusion(request: web.Request) -> web.Response:
    tlog = await _tlog(request)
    size = request.query.get("size")
    wanted = request.query.get("leaf_hash")
    bundle = request.query.get("bundle")
    if bundle is not None:
        sha256 = request.query.get("sha256", "")
        found = await tlog.store.log_once(bundle_key(bundle, sha256))
        if found is None:
            raise ApiError(
                404, f"the log has no bundle {bundle[:512]!r} with SHA-256 {sha256[:64]}"
            )
        index = found
    elif wanted is not None:
        try:
            found = await tlog.store.log_index(bytes.fromhex(wanted))
        except ValueError:
            raise ApiError(400, "leaf_hash must be 64 hex digits") from None
        if found is None:
            raise ApiError(404, f"no log entry has leaf hash {wanted[:64]}")
        index = found
    else:
        index = _number(request.query, "index")
    sized = None if size is None else _number(request.query, "size")
    try:
        proof = await tlog.inclusion(index, sized)
    except LogRangeError as exc:
        raise ApiError(404, str(exc)) from None
    if bundle is not None:
        (entry,) = await tlog.store.log_entries(index, index + 1)
        proof = replace(proof, entry=entry)
    return web.json_response(proof.to_dict())


async def get_consistency(request: web.Request) -> web.Response:
    tlog = await _tlog(request)
    try:
        proof = await tlog.consistency(_number(request.query, "old"), _number(request.query, "new"))
    except LogRangeError as exc:
        raise ApiError(404, str(exc)) from None
    return web.json_response(proof.to_dict())


async def get_export(request: web.Request) -> web.Response:
    tlog = await _tlog(request)
    return web.json_response((await tlog.export()).to_dict())


_SIZE: dict[str, Any] = {
    "type": "integer",
    "minimum": 0,
    "description": "tree size; left out: the latest",
}
_INDEX_QUERY: dict[str, dict[str, Any]] = {
    "index": {"type": "integer", "minimum": 0},
    "leaf_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "bundle": {"type": "string", "maxLength": 512, "description": "a bundle's target path"},
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "with bundle"},
    "size": _SIZE,
}
_OLD_NEW: dict[str, dict[str, Any]] = {
    "old": {"type": "integer", "minimum": 1},
    "new": {"type": "integer", "minimum": 1},
}
_ENTRIES_QUERY: dict[str, dict[str, Any]] = {
    "start": {"type": "integer", "minimum": 0},
    "end": {"type": "integer"},
}
_OPERATOR = OPERATOR_REFUSALS


def _routes(
    prefix: str, auth: str, refusals: Mapping[int, tuple[str, str | None]]
) -> tuple[Route, ...]:
    who = "the signing node" if auth == "node" else "operators"
    return (
        Route(
            "GET",
            f"{prefix}/checkpoint",
            get_checkpoint,
            f"The log's signed checkpoint (C2SP tlog-checkpoint signed note), for {who}",
            auth,
            responses={
                200: ("the signed note, text/plain", None),
                404: ("no such size", "Error"),
                **refusals,
            },
            query={"size": _SIZE},
        ),
        Route(
            "GET",
            f"{prefix}/proof/inclusion",
            get_inclusion,
            "An entry's RFC 9162 inclusion proof, by index, leaf hash, or bundle (path and "
            "SHA-256, with the entry), under a signed checkpoint",
            auth,
            responses={
                200: ("the proof", "InclusionProof"),
                404: ("no such entry", "Error"),
                **refusals,
            },
            query=_INDEX_QUERY,
        ),
        Route(
            "GET",
            f"{prefix}/proof/consistency",
            get_consistency,
            "The RFC 9162 consistency proof between two tree sizes",
            auth,
            responses={
                200: ("the proof", "ConsistencyProof"),
                404: ("no such sizes", "Error"),
                **refusals,
            },
            query=_OLD_NEW,
        ),
    )


ROUTES = (
    *_routes("/v1/log", "viewer", _OPERATOR),
    *_routes("/v1/nodes/{node_id}/log", "node", SIGNED_RESPONSES),
    Route(
        "GET",
        "/v1/log/entries",
        get_entries,
        f"Entries' canonical JSON from start, at most {MAX_ENTRIES_PAGE}",
        "viewer",
        responses={200: ("the entries", None), **_OPERATOR},
        query=_ENTRIES_QUERY,
    ),
    Route(
        "GET",
        "/v1/log/export",
        get_export,
        "The whole log with its signed checkpoint, for mirrors and 'gpuward log verify'",
        "viewer",
        responses={200: ("the export", "LogExport"), **_OPERATOR},
    ),
)
