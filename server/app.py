"""The HTTP app (aiohttp): the route table, and the middleware every request passes.

The repository is served read-only from its ``metadata`` and ``targets``
folders, never from its root, so the keys folder beside them cannot be reached.
Every request body is size-capped and parsed strictly before it touches the
store; every request has a deadline; errors are JSON ``{"error": ...}`` and an
unexpected exception is logged and answered 500 without its details.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import structlog
from aiohttp import web

from server import (
    attribution,
    checkpoint,
    dashboard,
    metrics_api,
    node_api,
    operator_api,
    reports,
    stragglers,
    tlog_api,
)
from server.http import (
    SERVICES,
    SIGNED_RESPONSES,
    ApiError,
    Handler,
    Route,
    Services,
    services,
    signed_request,
)
from server.openapi import document
from server.remediation import api as remediation_api
from server.report_attestation import MAX_ATTESTED_BODY_BYTES

log = structlog.get_logger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _safe_file(base: Path, relative: str) -> Path:
    """``base/relative`` if every component is a plain name and the file exists."""
    parts = relative.split("/")
    if not all(_NAME.fullmatch(p) for p in parts):
        raise ApiError(404, "not found")
    path = base.joinpath(*parts)
    if not path.is_file() or not path.resolve().is_relative_to(base):
        raise ApiError(404, "not found")
    return path


async def metadata(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if not name.endswith(".json"):
        raise ApiError(404, "not found")
    path = _safe_file(services(request).config.repo.resolve() / "metadata", name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def director_metadata(request: web.Request) -> web.FileResponse:
    """A node's director metadata (one small repository per node; the root is shared),
    to that node only: it names the bundle the node is to run, which is no one
    else's business, so the request must be signed by the node it names."""
    node, _sig, _body = await signed_request(request, bucket="director")
    director = services(request).config.director
    wanted, name = request.match_info["node"], request.match_info["name"]
    if wanted != node.node_id:
        raise ApiError(403, f"node {node.node_id} may only read its own director metadata")
    if director is None or not name.endswith(".json"):
        raise ApiError(404, "not found")
    path = _safe_file(director.resolve() / "nodes", f"{wanted}/metadata/{name}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def target(request: web.Request) -> web.FileResponse:
    base = services(request).config.repo.resolve() / "targets"
    return web.FileResponse(_safe_file(base, request.match_info["path"]))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(ROUTES))


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "Liveness", "public", responses={200: ("ok", None)}),
    Route(
        "GET",
        "/v1/openapi.json",
        openapi,
        "This document",
        "public",
        responses={200: ("the OpenAPI document", None)},
    ),
    Route(
        "GET",
        "/v1/repo/metadata/{name}",
        metadata,
        "Signed TUF metadata of the image repository",
        "public",
        responses={200: ("the metadata file", None), 404: ("no such file", "Error")},
    ),
    Route(
        "GET",
        "/v1/repo/targets/{path:.+}",
        target,
        "A target file (bundle) of the image repository",
        "public",
        responses={200: ("the file", None), 404: ("no such file", "Error")},
        in_openapi=False,  # a multi-segment path; TUF clients know the layout
    ),
    Route(
        "GET",
        "/v1/director/{node}/metadata/{name}",
        director_metadata,
        "Signed TUF metadata of the signing node's director repository (its own only)",
        "node",
        responses={
            200: ("the metadata file", None),
            401: SIGNED_RESPONSES[401],
            403: ("another node's director metadata", "Error"),
            404: ("no such file", "Error"),
            413: SIGNED_RESPONSES[413],
            429: SIGNED_RESPONSES[429],
        },
    ),
    *node_api.ROUTES,
    *operator_api.ROUTES,
    *reports.ROUTES,
    *stragglers.ROUTES,
    *checkpoint.ROUTES,
    *tlog_api.ROUTES,
    *attribution.ROUTES,
    *remediation_api.ROUTES,
    *dashboard.ROUTES,
    *metrics_api.ROUTES,
)


# Each route's own timeout, by handler, where it has one (``Route.timeout_s``).
_TIMEOUTS: web.AppKey[dict[Handler, float]] = web.AppKey("timeouts", dict)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    timeout = request.app[_TIMEOUTS].get(
        request.match_info.route.handler, request.app[SERVICES].config.request_timeout_s
    )
    try:
        async with asyncio.timeout(timeout):
            return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
    except TimeoutError:
        log.warning("request_timed_out", path=request.path, timeout_s=timeout)
        return web.json_response({"error": "the request took too long"}, status=503)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
    except Exception as exc:
        log.exception("request_failed", path=request.path, error=type(exc).__name__)
        return web.json_response({"error": "internal error; see the server log"}, status=500)


def create_app(svc: Services, routes: tuple[Route, ...] = ROUTES) -> web.Application:
    """The app serving ``routes``: every route, or those of another listener (metrics)."""
    # Each route reads at most its own limit (read_body); attested reports need most.
    app = web.Application(client_max_size=MAX_ATTESTED_BODY_BYTES, middlewares=[_guard])
    app[SERVICES] = svc
    app[_TIMEOUTS] = {r.handler: r.timeout_s for r in routes if r.timeout_s is not None}
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    return app
