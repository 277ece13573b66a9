"""Attested reports over HTTP: challenges, verification, and the verdict kept.

A TPM-enrolled node asks ``GET /v1/challenge`` (signed) for a single-use report
challenge, quotes with qualifying data SHA-256(challenge || report digest) and
posts the report with the evidence to ``POST /v1/reports``. Evidence that fails
(an old challenge, a report changed after quoting, a signature not by the
node's AK) refuses the report; evidence that verifies is stored with the
report as its ``ReportVerdict`` summary.

The event log is large; the node sends it only when the digest the challenge
answer names (the log this server last verified for it) differs from its own,
and otherwise only the digest. The verified logs are kept in this process's
memory, at most one per node: after a restart the challenge names none, and
the next report carries its log again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog

from fleet.attestation import AttestedReport, PcrSelection
from server.attestation.challenges import Challenges
from server.attestation.enrollment import EnrolledNode as TpmNode
from server.attestation.policy import BootPolicy
from server.attestation.verifier import REPORT, QuoteVerifier

log = structlog.get_logger(__name__)

# A report with its evidence and event log: real firmware logs are tens to
# hundreds of KiB. The body is read before its signature is checked, so this is
# what anyone may make the server read; logs beyond it cannot be attested.
MAX_ATTESTED_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """What is kept with an attested report, and shown per node."""

    passed: bool  # quote and event log verified, and the policy (if any) passed
    reset_count: int  # the TPM's count of reboots: a change means the node rebooted
    event_log_sha256: str | None
    reasons: tuple[str, ...]  # why it did not pass

    def to_json(self) -> str:
        return json.dumps(
            {
                "passed": self.passed,
                "reset_count": self.reset_count,
                "event_log_sha256": self.event_log_sha256,
                "reasons": list(self.reasons),
            },
            sort_keys=True,
        )


class ReportAttestation:
    """Issues report challenges and verifies attested reports (one per process)."""

    def __init__(
        self, challenges: Challenges, required: PcrSelection, policy: BootPolicy | None = None
    ) -> None:
        self._challenges = challenges
        self._verifier = QuoteVerifier(challenges, required, policy)
        self._logs: dict[str, tuple[str, bytes]] = {}  # node -> (sha256, last verified log)

    def challenge(self, node_id: str) -> dict[str, Any]:
        known = self._logs.get(node_id)
        return {
            "challenge": self._challenges.issue(node_id, REPORT).to_dict(),
            "event_log_sha256": None if known is None else known[0],
        }

    def verify(self, tpm: str, attested: AttestedReport) -> Verdict:
        """Check ``attested`` against the node's stored AK record ``tpm``.

        Raises ``AttestationError`` or ``EventLogError`` when the evidence fails.
        """
        node = TpmNode.from_dict(json.loads(tpm))
        known = self._logs.get(node.node_id)
        verdict = self._verifier.verify_report(
            node, attested, known_log=None if known is None else known[1]
        )
        reasons: tuple[str, ...] = ()
        if verdict.log is None:
            reasons = ("no event log: the boot is unexplained; the node must send its log",)
        else:
            log_bytes = attested.evidence.event_log
            if log_bytes is not None:
                self._logs[node.node_id] = (verdict.log.sha256, log_bytes)
            if verdict.policy is not None:
                reasons = verdict.policy.reasons
        return Verdict(
            passed=verdict.passed,
            reset_count=verdict.quote.reset_count,
            event_log_sha256=None if verdict.log is None else verdict.log.sha256,
            reasons=reasons,
        )
