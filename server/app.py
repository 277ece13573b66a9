"""The HTTP API (aiohttp), versioned under ``/v1``.

The repository is served read-only from its ``metadata`` and ``targets``
folders, never from its root, so the keys folder beside them cannot be reached.
Every request body is size-capped and parsed strictly before it touches the
store.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import structlog
from aiohttp import web

from fleet.errors import InvalidDocument
from fleet.report import HealthReport
from server.store import Store

log = structlog.get_logger(__name__)

MAX_REPORT_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")
STORE: web.AppKey[Store] = web.AppKey("store", Store)
REPO: web.AppKey[Path] = web.AppKey("repo", Path)
DIRECTOR: web.AppKey[Path | None] = web.AppKey("director", Path)


def create_app(repo: Path, store: Store, director: Path | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app[STORE] = store
    app[REPO] = repo.resolve()
    app[DIRECTOR] = director.resolve() if director else None
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/repo/metadata/{name}", _metadata)
    app.router.add_get("/v1/repo/targets/{path:.+}", _target)
    app.router.add_get("/v1/director/{node}/metadata/{name}", _director_metadata)
    app.router.add_post("/v1/reports", _post_report)
    app.router.add_get("/v1/fleet", _fleet)
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _safe_file(base: Path, relative: str) -> Path:
    """``base/relative`` if every component is a plain name and the file exists."""
    parts = relative.split("/")
    if not all(_NAME.fullmatch(p) for p in parts):
        raise web.HTTPNotFound()
    path = base.joinpath(*parts)
    if not path.is_file() or not path.resolve().is_relative_to(base):
        raise web.HTTPNotFound()
    return path


async def _metadata(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if not name.endswith(".json"):
        raise web.HTTPNotFound()
    path = _safe_file(request.app[REPO] / "metadata", name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def _director_metadata(request: web.Request) -> web.FileResponse:
    """A node's director metadata (per-node repositories; the root is shared)."""
    director = request.app[DIRECTOR]
    node, name = request.match_info["node"], request.match_info["name"]
    if director is None or not name.endswith(".json") or not _NAME.fullmatch(node):
        raise web.HTTPNotFound()
    path = _safe_file(director / "nodes", f"{node}/metadata/{name}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def _target(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_safe_file(request.app[REPO] / "targets", request.match_info["path"]))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _post_report(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return _error(415, "reports must be application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"report larger than {MAX_REPORT_BYTES} bytes")
    try:
        report = HealthReport.from_dict(json.loads(raw))
    except (ValueError, InvalidDocument) as exc:
        log.warning("report_rejected", remote=request.remote, reason=str(exc))
        return _error(400, str(exc))
    await request.app[STORE].add_report(report, int(time.time()), request.remote or "")
    log.info(
        "report_received",
        node=report.node_id,
        update=report.update,
        driver=report.driver_version,
        healthy=report.healthy,
    )
    return web.json_response({"accepted": True}, status=202)


async def _fleet(request: web.Request) -> web.Response:
    nodes = await request.app[STORE].fleet()
    return web.json_response(
        {
            "nodes": [
                {"node_id": n.node_id, "last_seen": n.last_seen, "report": n.report.to_dict()}
                for n in nodes
            ]
        }
    )
