"""Posting health reports to the server, signed with the node's enrolled key.

The agent's only outbound connections are to its configured server: metadata,
bundles and this report. A report that cannot be delivered is logged and
dropped; the next cycle sends a fresh one, which supersedes it.

With an ``[attestation]`` table the report is attested: the TPM quotes a server
challenge bound to the report (``server.report_attestation``). The server
answers each accepted report with the challenge for the next one, which is
kept in the state folder until then, so a report is one request; the agent
asks ``GET /v1/challenge`` only when it holds none that is still live (the
first report, after a failure, or after a pause longer than the server keeps
it), and once more if the server refuses a report quoted over a kept one. The
event log goes along only when the server does not already hold this one; the
applier's driver measurement log always does.

On a node that reads NVML, each GPU that attests (Hopper and later in
confidential-computing mode) is asked for its SPDM report over the same
challenge's nonce, and the evidence goes in the report before it is quoted: the
server checks the GPU answered this challenge, and the quote proves the
evidence is the one the node collected.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import load_key, signed_request
from fleet.attestation import MAX_DRIVER_LOG_BYTES, AttestedReport, ReportChallenge
from fleet.errors import GpuwardError, InvalidDocument
from fleet.report import HealthReport
from keys.durable_files import atomic_write, read_bounded
from node.attest.config import AttestConfig
from node.channel import ChannelUnavailable
from node.config import AgentConfig

log = structlog.get_logger(__name__)

# A kept challenge this close to expiring is not used: quoting and sending take
# time, and the server's clock may run ahead of ours.
EXPIRY_MARGIN_S = 30
MAX_CHALLENGE_FILE_BYTES = 4096


class ReportRefused(ChannelUnavailable):
    """The server refused the report (HTTP 403): its attestation failed."""


def post_report(config: AgentConfig, report: HealthReport) -> None:
    """Raises ``ChannelUnavailable`` if not delivered, ``NotEnrolled`` without a key,
    ``AttestationError`` when the TPM cannot quote."""
    key = load_key(config)
    # The report as the server will read it: text its reader cleans (a lone
    # surrogate from an OS error naming an undecodable file) is cleaned before
    # the quote covers its digest, or the server's digest would differ.
    report = HealthReport.from_dict(report.to_dict())
    if config.attestation is None:
        _post(config, key, report.to_dict())
        return
    kept = _take_kept_challenge(config)
    if kept is not None:
        try:
            _post_attested(config, config.attestation, key, report, kept)
            return
        except ReportRefused as exc:
            log.warning("report_refused_with_kept_challenge", reason=str(exc))
    _post_attested(config, config.attestation, key, report, _ask_challenge(config, key))


def _post(config: AgentConfig, key: Ed25519PrivateKey, doc: dict[str, Any]) -> bytes:
    """The server's answer to an accepted report."""
    response = signed_request(config, key, "POST", config.reports_url, json.dumps(doc).encode())
    if response.status == 202:
        return bytes(response.data)
    refused = ReportRefused if response.status == 403 else ChannelUnavailable
    raise refused(
        f"posting report to {config.reports_url}: HTTP {response.status} {response.data[:200]!r}"
    )


def _post_attested(
    config: AgentConfig,
    attest: AttestConfig,
    key: Ed25519PrivateKey,
    report: HealthReport,
    challenge: ReportChallenge,
) -> None:
    if config.health_backend == "nvml":
        report = _with_gpu_evidence(report, challenge.challenge.nonce)
    answer = _post(config, key, _attest(config, attest, report, challenge).to_dict())
    try:
        doc = json.loads(answer)
        following = ReportChallenge.from_dict(doc["next"]) if "next" in doc else None
    except (ValueError, TypeError, InvalidDocument) as exc:
        log.warning("next_challenge_malformed", reason=str(exc))
        return
    if following is not None:
        atomic_write(
            config.report_challenge_file, json.dumps(following.to_dict()).encode(), mode=0o600
        )


def _with_gpu_evidence(report: HealthReport, nonce: bytes) -> HealthReport:
    """``report`` with each attesting GPU's evidence answering ``nonce``. Without
    NVML the report goes without: the server then has no GPU evidence to judge."""
    from node.nvml import NvmlUnavailable, attestation_evidence

    try:
        evidence, errors = attestation_evidence(nonce)
    except NvmlUnavailable as exc:
        log.warning("gpu_evidence_unavailable", reason=str(exc))
        return report
    for error in errors:
        log.warning("gpu_evidence_failed", reason=error)
    return dataclasses.replace(report, gpu_evidence=evidence)


def _ask_challenge(config: AgentConfig, key: Ed25519PrivateKey) -> ReportChallenge:
    response = signed_request(config, key, "GET", config.challenge_url)
    if response.status != 200:
        raise ChannelUnavailable(
            f"asking {config.challenge_url} for a challenge: HTTP {response.status} "
            f"{response.data[:200]!r}"
        )
    try:
        return ReportChallenge.from_dict(json.loads(response.data))
    except (ValueError, InvalidDocument) as exc:
        raise ChannelUnavailable(f"the server's challenge is malformed: {exc}") from None


def _take_kept_challenge(config: AgentConfig) -> ReportChallenge | None:
    """The challenge the server answered the last report with, if it is still live.
    Taken: the file is removed first, so a challenge is never quoted twice."""
    path = config.report_challenge_file
    if not path.exists():
        return None
    try:
        kept = ReportChallenge.from_dict(
            json.loads(read_bounded(path, MAX_CHALLENGE_FILE_BYTES, "kept report challenge"))
        )
    except (OSError, ValueError, GpuwardError) as exc:  # InvalidDocument is a GpuwardError
        log.warning("kept_challenge_unusable", path=str(path), reason=str(exc))
        return None
    finally:
        path.unlink(missing_ok=True)
    if kept.challenge.expires_at - time.time() < EXPIRY_MARGIN_S:
        return None
    return kept


def _attest(
    config: AgentConfig, attest: AttestConfig, report: HealthReport, challenge: ReportChallenge
) -> AttestedReport:
    from node.attest.attestor import Attestor  # tpm2-pytss: only on hosts that attest

    # The root applier's measurement log explains the driver PCR (applier.measure).
    driver_log = None
    if config.measurement_log.exists():
        driver_log = read_bounded(
            config.measurement_log, MAX_DRIVER_LOG_BYTES, "driver measurement log"
        )
    with Attestor(attest, config.state_dir) as attestor:
        attested = attestor.attest_report(report, challenge.challenge, driver_log)
    if attested.evidence.event_log_sha256 == challenge.event_log_sha256:
        return AttestedReport(report, attested.evidence.without_log())
    return attested
