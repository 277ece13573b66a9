"""Attested reports over HTTP: challenges, verification, and the verdict kept.

A TPM-enrolled node asks ``GET /v1/challenge`` (signed) for a single-use report
challenge, quotes with qualifying data SHA-256(challenge || report digest) and
posts the report with the evidence to ``POST /v1/reports``. The answer to an
accepted report carries the challenge for the node's next one, so in the steady
state a report is one request; a node holds one pending report challenge, and
asking for another replaces it. The next is put in place of the one a report
answered as that one is taken, in one trip to the store; a report then refused
leaves the node a challenge nobody knows, which its next request for one
replaces. Evidence that fails (an old challenge, a report changed after
quoting, a signature not by the node's AK) refuses the report; evidence that
verifies is stored with the report as its verdict
(``fleet.attestation_verdict``): whether the boot its event log records passes
the measured-boot policy of the node's pool, and every reason it does not.

The driver PCR (15 by default) is explained by the applier's measurement log,
sent whole with every report: it must replay to the quoted value or the report
is refused (each node's last verified log is kept, so the same bytes again are
not parsed and their signatures not checked again; the replay is compared with
every quote), and its last event names the driver bundle that is active, which
the verdict records and checks against the bundle the report claims. Every
event must also be the applier's (signed with the key of the boot's key event,
numbered, of the quoted boot), and that key must be the one pinned for the node
by its first attested report; otherwise the report is kept but not attested,
with the reason.

Each GPU's attestation evidence in the report (``fleet.gpu_attestation``) is
judged offline (``server.gpu_attestation``) against the challenge the quote
answered: the quote binds the evidence (it is in the report digest), the GPU's
signature binds the challenge, so evidence replayed from an earlier report, or
put in after quoting, cannot pass. A GPU that does not pass (a mismatched
measurement, a missing RIM, a driver other than the one the report names)
keeps the report unattested, with the reason.

The event log is large; the node sends it only when the digest the challenge
answer names (the log the server last verified for it) differs from its own,
and otherwise only the digest. Challenges and verified logs live in the store,
so a node may ask one replica for a challenge and report to another. Each
process also keeps the logs it verified, parsed and replayed, by digest: nodes
that boot alike share one, so in the steady state a report naming its log by
digest costs neither reading the log from the store nor replaying it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from fleet.attestation import AttestedReport, PcrSelection, ReportChallenge
from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.driverlog import (
    BANK,
    DEFAULT_DRIVER_PCR,
    ActiveDriver,
    VerifiedDriverLog,
    Verify,
    verified_driver_log,
)
from fleet.errors import GpuwardError, InvalidDocument
from fleet.gpu_attestation import GpuAttestationVerdict, GpuOutcome
from fleet.report import HealthReport
from keys.ed25519 import VerifiedCache
from server.attestation.challenges import Challenges
from server.attestation.enrollment import EnrolledTpm
from server.attestation.policy import BootPolicy, secure_boot
from server.attestation.verifier import REPORT, QuoteVerifier, ReplayedLog
from server.gpu_attestation.verifier import GpuEvidenceVerifier, GpuTrust
from server.store import EnrolledNode, Store

log = structlog.get_logger(__name__)

# A report with its evidence and event log: real firmware logs are tens to
# hundreds of KiB. The body is read before its signature is checked, so this is
# what anyone may make the server read; logs beyond it cannot be attested.
MAX_ATTESTED_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_POLICY = "default"
# Distinct replayed logs kept per process: one per firmware and boot chain.
MAX_REPLAYED_LOGS = 1024
# Parsed AK records kept per process, with their key objects: a fleet of 100,000
# nodes reporting in turn must fit, or an LRU would miss on every report. About
# 3.3 KB each with the RSA key built (measured), so some 330 MB for 100,000 nodes.
MAX_ENROLLED_TPMS = 131_072
# Verified driver logs kept per process, one per node: the same fleet must fit.
# About 1.6 KB each with a key event and a driver event (measured), so some 210 MB
# when full; a log of 256 events keeps no more, as only what it proves is kept.
MAX_DRIVER_LOGS = 131_072


def _gpu_problems(
    report: HealthReport, verdicts: Iterable[GpuAttestationVerdict]
) -> tuple[str, ...]:
    """Why the GPUs' evidence does not attest the report: one reason per GPU."""
    problems = []
    for evidence, verdict in zip(report.gpu_evidence, verdicts, strict=True):
        gpu = f"GPU {evidence.index} ({evidence.uuid})"
        if verdict.verdict is not GpuOutcome.PASS:
            problems.append(f"{gpu} attestation {verdict.verdict}: {'; '.join(verdict.reasons())}")
        elif report.driver_version is not None and verdict.driver_version != report.driver_version:
            problems.append(
                f"{gpu} states driver {verdict.driver_version} in its signed report, but the "
                f"report names {report.driver_version}"
            )
    return tuple(problems)


def load_policy(path: Path) -> BootPolicy:
    """A policy file written by ``gpuward policy from-eventlog`` (and edited)."""
    try:
        return BootPolicy.from_dict(json.loads(path.read_text()), str(path))
    except OSError as exc:
        raise GpuwardError(f"cannot read boot policy {path}: {exc.strerror}") from None
    except (ValueError, InvalidDocument) as exc:
        raise GpuwardError(
            f"boot policy {path} is not valid: {exc}; write it with "
            "'gpuward policy from-eventlog' and edit only the lists"
        ) from None


@dataclass(frozen=True)
class BootPolicies:
    """The measured-boot policies: one per pool, and a default for the other pools.

    A node with neither has its event log checked against its quote, not judged.
    """

    default: BootPolicy | None = None
    pools: Mapping[str, BootPolicy] = field(default_factory=dict)

    @classmethod
    def load(cls, default: Path | None, pools: Iterable[tuple[str, Path]]) -> BootPolicies:
        return cls(
            None if default is None else load_policy(default),
            {pool: load_policy(path) for pool, path in pools},
        )

    def for_pool(self, pool: str) -> tuple[str, BootPolicy] | None:
        """The policy judging ``pool``'s nodes, and its name as shown."""
        if pool in self.pools:
            return f"pool {pool}", self.pools[pool]
        return None if self.default is None else (DEFAULT_POLICY, self.default)


@dataclass(frozen=True)
class VerifiedReport:
    verdict: AttestationVerdict
    # The node's next report challenge, issued as this report's was taken: it
    # lives ``next_ttl_s``, from one report to the next; answered with the report.
    next: ReportChallenge


class DriverLogs:
    """Each node's last verified driver log, so that a report sending the same bytes
    again (every report does, until the node reboots or switches driver) does not
    parse it and check its signatures again.

    An entry serves only the node it was verified for, while that node keeps its
    request key, AK record and pinned applier key (a re-enrolled node, or one whose
    key was pinned by another log, starts afresh), and only for the exact bytes (by
    SHA-256) and boot (the quote's reset count) it was verified with: what the log
    proves depends on nothing else. Whether it explains the quote does, so its
    replay is compared with every report's quote.
    Least recently used nodes are forgotten first, beyond ``capacity``.
    """

    def __init__(self, pcr: int, verify: Verify, capacity: int = MAX_DRIVER_LOGS) -> None:
        self._pcr = pcr
        self._verify = verify
        self._capacity = capacity
        self._logs: OrderedDict[
            str, tuple[tuple[bytes, bytes, bytes | None], VerifiedDriverLog]
        ] = OrderedDict()

    def active(
        self,
        node: EnrolledNode,
        enrollment: bytes,  # SHA-256 of the node's AK record
        data: bytes | None,
        quoted: bytes,
        reset_count: int,
    ) -> ActiveDriver:
        """What ``data`` proves against the quoted driver PCR; raises
        ``DriverLogError`` when it does not replay to ``quoted``."""
        holder = (node.public_key, enrollment, node.driver_key)
        known = self._logs.get(node.node_id)
        if (
            known is not None
            and known[0] == holder
            and known[1].reset_count == reset_count
            and known[1].sha256 == hashlib.sha256(data or b"").digest()
        ):
            self._logs.move_to_end(node.node_id)
            return known[1].proves(self._pcr, quoted)
        checked = verified_driver_log(data, self._pcr, quoted, reset_count, self._verify)
        # A node's first attested report pins the key its log names: the entry then
        # serves the node as pinned by this very log, and no other key.
        pinned = node.driver_key or checked.active.public_key
        self._logs[node.node_id] = ((node.public_key, enrollment, pinned), checked)
        self._logs.move_to_end(node.node_id)
        while len(self._logs) > self._capacity:
            self._logs.popitem(last=False)
        return checked.active


class ReportAttestation:
    """Issues report challenges and verifies attested reports."""

    def __init__(
        self,
        challenges: Challenges,
        required: PcrSelection,
        store: Store,
        policies: BootPolicies | None = None,
        driver_pcr: int = DEFAULT_DRIVER_PCR,
        *,
        next_ttl_s: float,  # ``ServerConfig.next_challenge_ttl_s``
        gpus: GpuEvidenceVerifier | None = None,  # None: no RIMs, NVIDIA's roots
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gpus = gpus or GpuEvidenceVerifier((), GpuTrust.nvidia(), waive_revocation=False)
        self._clock = clock
        self._challenges = challenges
        self._next_ttl_s = next_ttl_s
        self._driver_pcr = driver_pcr
        # Every quote must cover the driver PCR, or the active driver is unproven.
        banks = {bank: set(pcrs) for bank, pcrs in required.banks}
        banks.setdefault(BANK, set()).add(driver_pcr)
        self._verifier = QuoteVerifier(challenges, PcrSelection.of(banks))
        self._store = store
        self._policies = policies or BootPolicies()
        self._replayed: OrderedDict[str, ReplayedLog] = OrderedDict()  # by sha256, LRU
        self._tpms: OrderedDict[bytes, EnrolledTpm] = OrderedDict()  # by record sha256, LRU
        self._driver_logs = DriverLogs(driver_pcr, VerifiedCache().verify)

    async def challenge(self, node_id: str) -> ReportChallenge:
        """A challenge for the node's report, replacing any it holds."""
        return ReportChallenge(
            await self._challenges.issue_replacing(node_id, REPORT),
            await self._store.event_log_sha256(node_id),
        )

    async def verify(self, node: EnrolledNode, attested: AttestedReport) -> VerifiedReport:
        """Check ``attested`` against the node's stored AK record; with the verdict,
        the challenge for the node's next report.

        Raises ``AttestationError`` or ``EventLogError`` when the evidence fails,
        ``DriverLogError`` when the driver log does not replay to the quote.
        """
        if node.tpm is None:
            raise GpuwardError(f"node {node.node_id} has no enrolled TPM")
        enrollment = hashlib.sha256(node.tpm.encode()).digest()
        tpm = self._enrolled_tpm(enrollment, node.tpm)
        sent = attested.evidence.event_log
        known: bytes | ReplayedLog | None = self._replayed_log(attested.evidence.event_log_sha256)
        if known is None and sent is None:
            kept = await self._store.event_log(node.node_id)
            known = None if kept is None else kept[1]
        chosen = self._policies.for_pool(node.pool)
        verdict = await self._verifier.verify_report(
            tpm,
            attested,
            known_log=known,
            policy=None if chosen is None else chosen[1],
            next_ttl_s=self._next_ttl_s,
        )
        evidence = attested.evidence
        active = self._driver_logs.active(
            node,
            enrollment,
            evidence.driver_log,
            evidence.pcrs[BANK][self._driver_pcr],
            verdict.quote.reset_count,
        )
        driver, driver_problems = active.driver, active.problems
        if active.public_key is not None:
            pinned = node.driver_key or await self._store.pin_driver_key(
                node.node_id, active.public_key
            )
            if pinned is None:
                driver = None
                driver_problems += (
                    f"node {node.node_id} was removed while its report was checked; "
                    "enroll it again",
                )
            elif pinned != active.public_key:
                driver = None
                driver_problems += (
                    f"the driver log is signed by applier key {active.public_key.hex()[:16]}, "
                    f"not the key {pinned.hex()[:16]} pinned for this node: something else "
                    "measured first this boot, or the applier's key was replaced (then "
                    "re-enroll the node to pin the new one)",
                )
        claimed = attested.report.bundle
        if driver is not None and claimed != driver.target_path:
            driver_problems += (
                f"the report names bundle {claimed or 'none'}, but the TPM shows "
                f"{driver.target_path} ({driver.sha256[:12]}) active",
            )
        gpus = self._judge_gpus(attested)
        gpu_problems = _gpu_problems(attested.report, gpus)
        reasons: tuple[str, ...] = ()
        if verdict.log is None:
            reasons = ("no event log: the boot is unexplained; the node must send its log",)
        else:
            if sent is not None:
                await self._store.keep_event_log(node.node_id, sent)
            self._remember(verdict.log.replayed)
            if verdict.policy is not None:
                reasons = verdict.policy.reasons
        if reasons:
            log.warning("boot_not_attested", node=node.node_id, reasons=list(reasons))
        if gpu_problems:
            log.warning("gpus_not_attested", node=node.node_id, reasons=list(gpu_problems))
        judged = AttestationVerdict(
            passed=verdict.passed and not driver_problems and not gpu_problems,
            reset_count=verdict.quote.reset_count,
            event_log_sha256=None if verdict.log is None else verdict.log.sha256,
            policy=None if chosen is None or verdict.log is None else chosen[0],
            reasons=reasons + driver_problems + gpu_problems,
            secure_boot=None
            if verdict.log is None
            else secure_boot(verdict.log.log, verdict.log.verified),
            driver=None if driver is None else AttestedDriver.of(driver),
            gpus=gpus,
        )
        following = verdict.quote.next_challenge
        assert following is not None  # asked for with ``next_ttl_s``
        # The log named is the one this report was verified with, which the store holds.
        return VerifiedReport(judged, ReportChallenge(following, judged.event_log_sha256))

    def _judge_gpus(self, attested: AttestedReport) -> tuple[GpuAttestationVerdict, ...]:
        """Each GPU's verdict; its nonce must be the challenge the quote answered
        (``verify_report`` redeemed it)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        return tuple(
            self._gpus.verify(evidence, attested.evidence.nonce, now)
            for evidence in attested.report.gpu_evidence
        )

    def _enrolled_tpm(self, digest: bytes, record: str) -> EnrolledTpm:
        """The node's AK record (``digest``: its SHA-256), parsed once and kept with
        its key object (built on first use) for as long as the stored record is the
        same text: a record changed in any way (a re-enrollment) is parsed afresh."""
        found = self._tpms.get(digest)
        if found is not None:
            self._tpms.move_to_end(digest)
            return found
        found = EnrolledTpm.from_dict(json.loads(record))
        self._tpms[digest] = found
        while len(self._tpms) > MAX_ENROLLED_TPMS:
            self._tpms.popitem(last=False)
        return found

    def _replayed_log(self, sha256: str | None) -> ReplayedLog | None:
        """A log this process replayed before; the same bytes whichever node sent it."""
        found = None if sha256 is None else self._replayed.get(sha256)
        if found is not None:
            self._replayed.move_to_end(found.sha256)
        return found

    def _remember(self, log: ReplayedLog) -> None:
        self._replayed[log.sha256] = log
        self._replayed.move_to_end(log.sha256)
        while len(self._replayed) > MAX_REPLAYED_LOGS:
            self._replayed.popitem(last=False)
