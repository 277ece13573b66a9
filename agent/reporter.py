"""Posting health reports to the server, signed with the node's enrolled key.

The agent's only outbound connections are to its configured server: metadata,
bundles and this report. A report that cannot be delivered is logged and
dropped; the next cycle sends a fresh one, which supersedes it.

With an ``[attestation]`` table the report is attested: the TPM quotes a fresh
server challenge bound to the report (``server.report_attestation``). The
event log goes along only when the server does not already hold this one; the
applier's driver measurement log always does.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.attest.config import AttestConfig
from agent.channel import ChannelUnavailable
from agent.config import AgentConfig
from agent.identity import load_key, signed_request
from fleet.attestation import MAX_DRIVER_LOG_BYTES, AttestedReport, Challenge
from fleet.errors import InvalidDocument
from fleet.report import HealthReport
from keys.storage import read_bounded


def post_report(config: AgentConfig, report: HealthReport) -> None:
    """Raises ``ChannelUnavailable`` if not delivered, ``NotEnrolled`` without a key,
    ``AttestationError`` when the TPM cannot quote."""
    key = load_key(config)
    doc = (
        report.to_dict()
        if config.attestation is None
        else _attest(config, config.attestation, key, report).to_dict()
    )
    body = json.dumps(doc).encode()
    response = signed_request(config, key, "POST", config.reports_url, body)
    if response.status != 202:
        raise ChannelUnavailable(
            f"posting report to {config.reports_url}: HTTP {response.status} "
            f"{response.data[:200]!r}"
        )


def _attest(
    config: AgentConfig, attest: AttestConfig, key: Ed25519PrivateKey, report: HealthReport
) -> AttestedReport:
    from agent.attest.attestor import Attestor  # tpm2-pytss: only on hosts that attest

    response = signed_request(config, key, "GET", config.challenge_url)
    if response.status != 200:
        raise ChannelUnavailable(
            f"asking {config.challenge_url} for a challenge: HTTP {response.status} "
            f"{response.data[:200]!r}"
        )
    try:
        doc = json.loads(response.data)
        challenge = Challenge.from_dict(doc["challenge"])
        known = doc["event_log_sha256"]
    except (ValueError, KeyError, TypeError, InvalidDocument) as exc:
        raise ChannelUnavailable(f"the server's challenge is malformed: {exc}") from None
    # The root applier's measurement log explains the driver PCR (agent.measure).
    driver_log = None
    if config.measurement_log.exists():
        driver_log = read_bounded(
            config.measurement_log, MAX_DRIVER_LOG_BYTES, "driver measurement log"
        )
    with Attestor(attest, config.state_dir) as attestor:
        attested = attestor.attest_report(report, challenge, driver_log)
    if attested.evidence.event_log_sha256 == known:
        return AttestedReport(report, attested.evidence.without_log())
    return attested
