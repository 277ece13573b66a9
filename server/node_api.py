"""The API nodes call: enrollment, reports, and reading their own assignment.

Every request is signed by the node's enrolled key (``fleet.nodeauth``); the
enrollment request is signed by the key it enrolls, proving possession of it. A
node acts only on its own behalf: a report naming another node, or a read of
another node's assignment, is refused even when the signature is valid.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import structlog
from aiohttp import web

from fleet import attestation as tpm
from fleet.errors import GpuwardError, InvalidDocument
from fleet.nodeauth import ENROLLMENT_TOKEN_HEADER, KeyEnrollmentRequest, RequestSignature
from fleet.report import HealthReport
from keys.director_repo import DirectorRepository
from server.attestation.challenges import ChallengesFull
from server.attestation.enrollment import ek_digests
from server.http import (
    MAX_BODY_BYTES,
    SIGNED_RESPONSES,
    ApiError,
    Route,
    Services,
    parse_json,
    preauth_rate_limit,
    rate_limit,
    read_body,
    services,
    signed_request,
)
from server.limits import retry_after
from server.metrics import refusal
from server.nodeauth import NodeAuthError, verify_signature
from server.report_attestation import MAX_ATTESTED_BODY_BYTES, VerifiedReport
from server.store import EkInUse, EnrolledNode, ek_bound_message

log = structlog.get_logger(__name__)

# The largest TPM enrollment request the schema admits, base64 and all.
MAX_TPM_BEGIN_BYTES = 24 * 1024
# Pending challenges expire within their lifetime; a retry sooner may find room.
CHALLENGE_RETRY_S = 30.0


async def enroll(request: web.Request) -> web.Response:
    s = services(request)
    preauth_rate_limit(request)
    try:
        sig = s.requests.parse(request.headers)
    except NodeAuthError as exc:
        raise ApiError(exc.status, str(exc)) from None
    body = await read_body(request)
    try:
        enrollment = KeyEnrollmentRequest.from_dict(parse_json(request, body))
    except InvalidDocument as exc:
        raise ApiError(400, str(exc)) from None
    _check_possession(enrollment, sig, request, body)
    try:
        with s.metrics.attestation_verification.labels("enrollment").time():
            attestation = await s.verifier.verify(enrollment)
        # Per node id, not per address (a whole site behind one NAT enrolls at once),
        # and only once the evidence is accepted: a caller without the token spends
        # its address's budget, never that of a node id it names.
        rate_limit(request, f"enroll:{enrollment.node_id}")
        s.requests.claim(sig)
    except NodeAuthError as exc:
        log.warning("enrollment_refused", node=enrollment.node_id, reason=str(exc))
        raise ApiError(exc.status, str(exc)) from None
    wanted = EnrolledNode(
        enrollment.node_id,
        enrollment.public_key,
        enrollment.pool,
        attestation.attested,
        attestation.method,
        int(s.clock()),
        attestation.tpm,
    )
    try:
        stored, created = await s.store.enroll(wanted)
    except EkInUse as exc:
        log.warning("enrollment_refused_ek_bound", node=enrollment.node_id, holder=exc.holder)
        raise ApiError(409, str(exc)) from None
    if stored.public_key != enrollment.public_key:
        raise ApiError(
            409,
            f"node {enrollment.node_id} is enrolled with another key; an admin must remove it "
            f"('gpuward nodes remove {enrollment.node_id}', or DELETE "
            f"/v1/nodes/{enrollment.node_id}) before it can enroll again",
        )
    log.info(
        "node_enrolled" if created else "node_reenrolled",
        node=stored.node_id,
        pool=stored.pool,
        attestation=stored.attestation,
    )
    if s.config.director is not None:
        # An empty director repository: the node can verify "nothing assigned yet".
        director = DirectorRepository(s.config.director)
        await asyncio.to_thread(director.enroll, stored.node_id)
    return web.json_response(
        {
            "node_id": stored.node_id,
            "pool": stored.pool,
            "attested": stored.attested,
            "attestation": stored.attestation,
            "enrolled_at": stored.enrolled_at,
        },
        status=201 if created else 200,
    )


async def enroll_tpm_begin(request: web.Request) -> web.Response:
    """The first half of TPM enrollment (``server.tpm_enrollment``); unsigned, as the
    node has no enrolled key yet: the TPM's answer in ``POST /v1/enroll`` proves it.

    Checks run cheapest first, and no TPM work is done before the caller has
    shown the enrollment token: the address's rate, the token, the body's size.
    """
    s = services(request)
    if s.tpm is None:
        raise ApiError(
            404, "this server does not enroll TPMs; the operator enables it with --ek-ca"
        )
    preauth_rate_limit(request)
    _check_enrollment_token(request, s)
    body = await read_body(request, MAX_TPM_BEGIN_BYTES)
    try:
        wanted = tpm.TpmEnrollmentRequest.from_dict(parse_json(request, body))
    except InvalidDocument as exc:
        raise ApiError(400, str(exc)) from None
    rate_limit(request, f"enroll:{wanted.node_id}")
    try:
        # Before any TPM work: a TPM bound to another node gets no credential.
        holder = await s.store.ek_holder(*ek_digests(wanted))
        if holder is not None and holder != wanted.node_id:
            log.warning("tpm_enrollment_refused_ek_bound", node=wanted.node_id, holder=holder)
            raise ApiError(409, ek_bound_message(wanted.node_id, holder))
        begun = await s.tpm.begin(wanted)
    except ChallengesFull as exc:
        log.warning("tpm_enrollment_busy", node=wanted.node_id, reason=str(exc))
        raise _busy(exc) from None
    except tpm.AttestationError as exc:
        log.warning("tpm_enrollment_refused", node=wanted.node_id, reason=str(exc))
        raise ApiError(403, str(exc)) from None
    return web.json_response(begun.to_dict())


def _check_enrollment_token(request: web.Request, s: Services) -> None:
    expected = s.config.tpm_enrollment_token
    given = request.headers.get(ENROLLMENT_TOKEN_HEADER, "")
    if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
        log.warning("tpm_enrollment_token_refused", remote=request.remote, given=bool(given))
        raise ApiError(
            401,
            f"TPM enrollment needs the enrollment token in the {ENROLLMENT_TOKEN_HEADER} "
            "header: set enrollment_token_file in the agent config",
        )


def _busy(exc: ChallengesFull) -> ApiError:
    return ApiError(503, str(exc), {"Retry-After": retry_after(CHALLENGE_RETRY_S)})


def _check_possession(
    enrollment: KeyEnrollmentRequest, sig: RequestSignature, request: web.Request, body: bytes
) -> None:
    if sig.node_id != enrollment.node_id:
        raise ApiError(403, "the signature's node id differs from the enrollment's")
    try:
        verify_signature(enrollment.public_key, sig, request.method, request.raw_path, body)
    except NodeAuthError as exc:
        raise ApiError(401, f"{exc}: sign the enrollment with the key it enrolls") from None


async def post_report(request: web.Request) -> web.Response:
    """A plain report, or with a TPM-enrolled node an attested one, verified first;
    counted in the metrics, accepted or refused (why)."""
    metrics = services(request).metrics
    try:
        return await _take_report(request)
    except ApiError as exc:
        metrics.reports_refused.labels(refusal(exc.status, exc.reason)).inc()
        raise
    except Exception:
        metrics.reports_refused.labels("error").inc()
        raise


async def _take_report(request: web.Request) -> web.Response:
    s = services(request)
    arrived = time.perf_counter()
    limit = MAX_BODY_BYTES if s.reports is None else MAX_ATTESTED_BODY_BYTES
    node, sig, body = await signed_request(request, limit)
    doc = parse_json(request, body)
    attested: tpm.AttestedReport | None = None
    try:
        if isinstance(doc, dict) and "evidence" in doc:
            attested = tpm.AttestedReport.from_dict(doc)
            report = attested.report
        else:
            report = HealthReport.from_dict(doc)
    except InvalidDocument as exc:
        log.warning("report_rejected", node=node.node_id, reason=str(exc))
        raise ApiError(400, str(exc)) from None
    if report.node_id != node.node_id:
        log.warning("report_for_another_node", node=node.node_id, claimed=report.node_id)
        raise ApiError(403, f"node {node.node_id} may only report for itself", reason="wrong_node")
    verified = await _verify(s, node, attested)
    verdict = None if verified is None else verified.verdict
    s.metrics.report_verification.observe(time.perf_counter() - arrived)
    stored = await s.store.add_report(
        report,
        int(s.clock()),
        request.remote or "",
        sig.nonce,
        verdict,
        node.public_key,
    )
    if not stored:
        current = await s.store.enrolled(node.node_id)
        if current is None or current.public_key != node.public_key:
            raise ApiError(
                401,
                f"node {node.node_id} was removed while its report was checked; the report "
                "is not kept: run 'gpuward agent enroll' if it is to rejoin",
                reason="node_removed",
            )
        raise ApiError(401, "replayed request (nonce already used)", reason="replayed")
    log.debug(
        "report_received",
        node=report.node_id,
        update=report.update,
        driver=report.driver_version,
        healthy=report.healthy,
        attested=None if verdict is None else verdict.passed,
    )
    if report.log_checkpoint is not None:
        await s.tlog.check_node_checkpoint(node.node_id, report.log_checkpoint, int(s.clock()))
    s.tally.count(s.clock(), report.healthy, None if verdict is None else verdict.passed)
    s.metrics.reports_accepted.labels(report.update).inc()
    answer: dict[str, object] = {"accepted": True}
    if verified is not None:
        # The node's next report needs no GET /v1/challenge first.
        answer["next"] = verified.next.to_dict()
    return web.json_response(answer, status=202)


async def _verify(
    s: Services, node: EnrolledNode, attested: tpm.AttestedReport | None
) -> VerifiedReport | None:
    """The verdict on a report's evidence; a TPM-enrolled node must attest every report,
    so that its request key alone (stolen from disk) cannot speak for it."""
    if s.reports is None or node.tpm is None:
        if attested is not None:
            raise ApiError(
                409,
                f"node {node.node_id} is not enrolled with a TPM on this server: send the "
                "report without evidence, or enroll with the TPM",
                reason="not_tpm_enrolled",
            )
        return None
    if attested is None:
        raise ApiError(
            403,
            f"node {node.node_id} is enrolled with a TPM: its reports must carry a quote "
            "over a challenge from GET /v1/challenge",
            reason="attestation_missing",
        )
    try:
        with s.metrics.attestation_verification.labels("report").time():
            return await s.reports.verify(node, attested)
    except GpuwardError as exc:  # AttestationError, EventLogError
        log.warning("attested_report_refused", node=node.node_id, reason=str(exc))
        raise ApiError(
            403, f"report refused: its attestation failed: {exc}", reason="attestation_failed"
        ) from None


async def get_challenge(request: web.Request) -> web.Response:
    node, _sig, _body = await signed_request(request)
    s = services(request)
    if s.reports is None or node.tpm is None:
        raise ApiError(409, f"node {node.node_id} is not enrolled with a TPM on this server")
    return web.json_response((await s.reports.challenge(node.node_id)).to_dict())


async def get_assignment(request: web.Request) -> web.Response:
    node, _sig, _body = await signed_request(request)
    wanted = request.match_info["node_id"]
    if wanted != node.node_id:
        raise ApiError(403, f"node {node.node_id} may only read its own assignment")
    found = await services(request).store.assignment(node.node_id)
    return web.json_response(
        {
            "node_id": node.node_id,
            "target": found.target if found else None,
            "rollout_id": found.rollout_id if found else None,
            "assigned_at": found.assigned_at if found else None,
        }
    )


ROUTES = (
    Route(
        "POST",
        "/v1/enroll",
        enroll,
        "Enroll a node's request key (signed by that key), vouched for by evidence",
        "node",
        request="EnrollmentRequest",
        responses={
            200: ("already enrolled with this key", "Enrollment"),
            201: ("enrolled", "Enrollment"),
            400: ("malformed enrollment", "Error"),
            403: ("evidence refused", "Error"),
            409: ("node enrolled with another key, or its TPM bound to another node", "Error"),
            415: ("not JSON", "Error"),
            **SIGNED_RESPONSES,
        },
    ),
    Route(
        "POST",
        "/v1/enroll/tpm/begin",
        enroll_tpm_begin,
        "Start TPM enrollment: a credential for the TPM to activate, a challenge to quote",
        "public",
        request="TpmEnrollmentRequest",
        responses={
            200: ("the credential and the session-key challenge", "TpmEnrollmentBegin"),
            400: ("malformed request", "Error"),
            401: ("no or a wrong enrollment token (X-Gpuward-Enrollment-Token)", "Error"),
            403: ("EK certificate or AK refused", "Error"),
            404: ("this server does not enroll TPMs", "Error"),
            409: ("the TPM's EK is bound to another node", "Error"),
            413: ("body too large", "Error"),
            415: ("not JSON", "Error"),
            429: ("rate limited (per address and per node id); see Retry-After", "Error"),
            503: ("too many enrollments pending; see Retry-After", "Error"),
        },
    ),
    Route(
        "POST",
        "/v1/reports",
        post_report,
        "Submit the signing node's health report (also its heartbeat); a TPM-enrolled "
        "node sends it as an AttestedReport",
        "node",
        request="HealthReport",
        responses={
            202: ("stored; an attested one is answered with the next challenge", "Accepted"),
            400: ("malformed report", "Error"),
            403: ("report names another node, or its attestation failed or is missing", "Error"),
            409: ("evidence from a node not enrolled with a TPM", "Error"),
            415: ("not JSON", "Error"),
            **SIGNED_RESPONSES,
        },
    ),
    Route(
        "GET",
        "/v1/challenge",
        get_challenge,
        "A single-use challenge for the signing TPM-enrolled node's next report quote, "
        "replacing the one it held",
        "node",
        responses={
            200: (
                "the challenge, and the digest of the event log the server keeps",
                "ReportChallenge",
            ),
            409: ("the node is not enrolled with a TPM", "Error"),
            **SIGNED_RESPONSES,
        },
    ),
    Route(
        "GET",
        "/v1/nodes/{node_id}/assignment",
        get_assignment,
        "The bundle a rollout assigned to the signing node (its own only)",
        "node",
        responses={
            200: ("the assignment; target null when none", "Assignment"),
            403: ("another node's assignment", "Error"),
            **SIGNED_RESPONSES,
        },
    ),
)
