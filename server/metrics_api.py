"""``GET /metrics``: the Prometheus exposition (``server.metrics``), as the operator
chooses to guard it.

On the server's port it needs a viewer token (Prometheus sends it with
``authorization: {credentials_file: ...}``): the fleet's shape is no stranger's
business. Or the operator names a separate address (``metrics_listen``, e.g.
``127.0.0.1:9464``) that serves ``/metrics`` alone without a token, guarded by
where it listens, as node_exporter is.
"""

from __future__ import annotations

from aiohttp import web

from server.http import OPERATOR_REFUSALS, Route, operator, services
from server.metrics import CONTENT_TYPE, exposition, read_snapshot


async def _exposition(request: web.Request) -> web.Response:
    s = services(request)
    snapshot = await read_snapshot(s.store, s.config, s.clock())
    return web.Response(
        body=exposition(s.metrics, snapshot), headers={"Content-Type": CONTENT_TYPE}
    )


async def get_metrics(request: web.Request) -> web.Response:
    await operator(request, "viewer")
    return await _exposition(request)


_EXPOSITION = "the metrics, in Prometheus' text format (version 0.0.4)"

ROUTES = (
    Route(
        "GET",
        "/metrics",
        get_metrics,
        "Prometheus metrics: nodes by state and attestation, rollouts and their waves, "
        "reports accepted and refused, verification latency, metadata expiry, re-signers, "
        "the store's connections, remediation by pool and stage",
        "viewer",
        responses={
            200: (_EXPOSITION, None),
            **OPERATOR_REFUSALS,
        },
    ),
)

# The whole of the ``metrics_listen`` address: no token, nothing else served.
LISTENER_ROUTES = (
    Route(
        "GET",
        "/metrics",
        _exposition,
        "Prometheus metrics, on the metrics address alone",
        "public",
        responses={200: (_EXPOSITION, None)},
        in_openapi=False,
    ),
)
