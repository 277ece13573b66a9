"""What every handler shares: the services, the route table, errors, and the two
ways a caller proves who it is (a node's signature, an operator's bearer token).

Routes are declared once, as ``Route`` values carrying what the OpenAPI document
says about them, so the router and the document cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleet.nodeauth import RequestSignature
from keys.report_key import ReportSigner
from server.config import ServerConfig
from server.fleetview import FleetSummary
from server.limits import RateLimiter, retry_after
from server.metrics import ServerMetrics
from server.nodeauth import KeyEnrollmentVerifier, NodeAuthError, RequestVerifier
from server.operators import TokenRefused, allows, check_token
from server.periodic import Periodic
from server.remediation.engine import RemediationEngine
from server.renewal import Renewer
from server.report_attestation import ReportAttestation
from server.reportlog import ReportTally
from server.rollout.engine import RolloutEngine
from server.store import EnrolledNode, OperatorToken, Store
from server.tlog import TransparencyLog
from server.tpm_enrollment import TpmEnrollment
from server.webhooks import WebhookService

MAX_BODY_BYTES = 64 * 1024
# What any signed node request may be answered besides its own outcomes.
SIGNED_RESPONSES: Mapping[int, tuple[str, str | None]] = {
    401: ("unsigned, stale, replayed or badly signed request", "Error"),
    413: ("body too large", "Error"),
    429: ("rate limited; see Retry-After", "Error"),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status`` by the error middleware.

    ``reason`` names the refusal for the metrics where the status alone does not
    (``server.metrics.REFUSALS``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.reason = reason


@dataclass
class Services:
    config: ServerConfig
    store: Store
    verifier: KeyEnrollmentVerifier
    clock: Callable[[], float]
    requests: RequestVerifier
    limiter: RateLimiter
    engine: RolloutEngine
    preauth_limiter: RateLimiter  # per source address, before authentication
    report_signer: ReportSigner  # signs compliance reports (``server.reports``)
    tlog: TransparencyLog  # the fleet's transparency log (``server.tlog``)
    # Both set when the server enrolls TPMs (--ek-ca), sharing one challenge store.
    tpm: TpmEnrollment | None = None
    reports: ReportAttestation | None = None
    tally: ReportTally = field(default_factory=ReportTally)
    # The fleet's ranked stragglers (``server.stragglers``), once per report interval.
    stragglers: Periodic[dict[str, Any]] = field(default_factory=Periodic)
    # The dashboard's fleet summary (``server.dashboard``), at most every few seconds.
    fleet_summary: Periodic[FleetSummary] = field(default_factory=Periodic)
    # The process that re-signs online metadata (worker 0, or the only one) has one.
    renewer: Renewer | None = None
    # The process with the background duties has one when webhooks are configured.
    webhooks: WebhookService | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    # Where GET /metrics is served without a token (``metrics_listen``), once bound.
    metrics_port: int | None = None
    # Set when server.toml has [remediation]; only the duties process ticks it.
    remediation: RemediationEngine | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


# The answers every route behind an operator token may give, for its OpenAPI entry.
OPERATOR_REFUSALS: Mapping[int, tuple[str, str | None]] = {
    401: ("no or unknown operator token", "Error"),
    403: ("the token's role does not allow this", "Error"),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    # "public", "node" (signed request), or the operator role needed.
    auth: str
    request: str | None = None  # component schema name of the JSON body
    responses: Mapping[int, tuple[str, str | None]] = field(default_factory=dict)
    query: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # name -> schema
    in_openapi: bool = True
    # Longer than the server's request timeout, for the few routes that need it.
    timeout_s: float | None = None


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, at most ``limit`` bytes (the app's own cap is the largest route's)."""
    too_large = ApiError(413, f"body larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    return body


def parse_json(request: web.Request, body: bytes) -> object:
    if request.content_type != "application/json":
        raise ApiError(415, "the body must be application/json")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


async def read_json(request: web.Request) -> object:
    return parse_json(request, await read_body(request))


def rate_limit(request: web.Request, key: str) -> None:
    wait = services(request).limiter.acquire(key)
    if wait:
        raise ApiError(429, "too many requests", {"Retry-After": retry_after(wait)})


def preauth_rate_limit(request: web.Request) -> None:
    """The per-address limit of requests answered before their caller is known.

    Keyed by the TCP peer: behind a reverse proxy every node shares its address,
    so raise ``preauth_burst`` there or limit at the proxy.
    """
    wait = services(request).preauth_limiter.acquire(f"addr:{request.remote}")
    if wait:
        raise ApiError(
            429,
            "too many unauthenticated requests from this address",
            {"Retry-After": retry_after(wait)},
        )


async def signed_request(
    request: web.Request, max_body: int = MAX_BODY_BYTES, *, bucket: str = "node"
) -> tuple[EnrolledNode, RequestSignature, bytes]:
    """The enrolled node that signed this request, and the body it signed.

    The node's rate limit in ``bucket`` is charged once the signature is checked
    (no one else can spend it) and before the nonce is recorded (a flood is
    refused before it costs memory). Metadata reads have a bucket of their own,
    as a TUF refresh makes several at once and must not starve the node's reports.
    """
    verifier = services(request).requests
    try:
        sig = verifier.parse(request.headers)
        node = await verifier.sender(sig)
        body = await read_body(request, max_body)
        verifier.check(node, sig, request.method, request.raw_path, body)
        rate_limit(request, f"{bucket}:{node.node_id}")
        verifier.claim(sig)
    except NodeAuthError as exc:
        raise ApiError(
            exc.status, str(exc), {"WWW-Authenticate": "Gpuward-Signature"}, reason=exc.reason
        ) from None
    return node, sig, body


async def operator(request: web.Request, role: str) -> OperatorToken:
    """The operator token in ``Authorization: Bearer``, if its role allows ``role``.

    The API never reads the dashboard's cookie, so a page on another site cannot
    make a browser call it with the operator's credentials.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        raise ApiError(
            401,
            "an operator token is required: 'Authorization: Bearer TOKEN' "
            "(create one with 'gpuward server token create')",
            {"WWW-Authenticate": "Bearer"},
        )
    s = services(request)
    try:
        found = await check_token(s.store, token.strip(), int(s.clock()))
    except TokenRefused as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    if not allows(found.role, role):
        raise ApiError(403, f"this needs the {role} role; the token has {found.role}")
    return found
