"""Compliance reports: what an auditor is shown about each node and the fleet.

An auditor asks which node runs what, attested how, whether that is
supported, and which published security advisories are open on it. This
module turns what the server knows (enrollment, reports with their
attestation verdicts, the catalog and its advisory feed) into one document,
without I/O, so the JSON, HTML and PDF forms all say the same thing. The
document's shape is ``fleet/data/compliance-report.schema.json``; a field the
server cannot know yet is ``null`` (shown as "unknown"), never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

from fleet.advisories import SEVERITIES
from fleet.attestation_verdict import AttestationVerdict
from fleet.catalog import Catalog
from fleet.errors import GpuwardError
from fleet.report import HealthReport
from fleet.versions import DriverVersion

FORMAT = "gpuward-compliance-report/1"
SCHEMA_FILE = "compliance-report.schema.json"
# A branch whose end of life is this close is flagged before it ends.
ENDING_SOON = timedelta(days=180)
MAX_UPDATES_SHOWN = 50
ATTESTATION_RESULTS = ("passed", "failed", "no-attested-report", "unattested")
SUPPORT_STATES = ("supported", "ending-soon", "ended", "unknown")
# A node's exposure: unknown when it reported no driver or the catalog has no feed.
ADVISORY_STATES = ("exposed", "none-open", "unknown")


def schema_text() -> str:
    """The JSON Schema of the document, as shipped with the package."""
    return resources.files("fleet").joinpath("data", SCHEMA_FILE).read_text()


@dataclass(frozen=True)
class SeenReport:
    """A stored report, with its attestation verdict if it was attested."""

    received_at: int
    report: HealthReport
    verdict: AttestationVerdict | None


@dataclass(frozen=True)
class EkCertificate:
    """The TPM's endorsement certificate, as the server checked it at enrollment."""

    sha256: str
    subject: str | None  # RFC 4514; None where enrollment predates keeping it
    serial: str | None  # hexadecimal


@dataclass(frozen=True)
class NodeFacts:
    node_id: str
    pool: str
    state: str  # as the fleet view shows it (healthy, unhealthy, missing, new)
    enrollment: str  # how enrollment was verified: "tpm2", "unattested"
    attested: bool
    enrolled_at: int
    last_seen: int | None
    ek_certificate: EkCertificate | None  # None: no TPM vouched for the node
    history: tuple[SeenReport, ...]  # newest first


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _support(catalog: Catalog, version: str | None, today: date) -> dict[str, Any]:
    branch = None if version is None else catalog.branch(DriverVersion.parse(version).branch)
    if branch is None:
        return {"branch": None, "type": None, "status": "unknown", "end_of_life": None}
    if branch.ended(today):
        status = "ended"
    elif branch.eol is not None and branch.ended(today + ENDING_SOON):
        status = "ending-soon"
    else:
        status = "supported"
    return {
        "branch": branch.name,
        "type": branch.type,
        "status": status,
        "end_of_life": branch.eol_text(),
    }


def _last_attested(facts: NodeFacts) -> SeenReport | None:
    return next((seen for seen in facts.history if seen.verdict is not None), None)


def _attestation(facts: NodeFacts) -> dict[str, Any]:
    attested = _last_attested(facts)
    if attested is None or attested.verdict is None:
        result = "no-attested-report" if facts.attested else "unattested"
        return {"result": result, "last_attested_at": None, "reasons": []}
    return {
        "result": "passed" if attested.verdict.passed else "failed",
        "last_attested_at": _iso(attested.received_at),
        "reasons": list(attested.verdict.reasons),
    }


def _boot_policy(facts: NodeFacts, attestation: Mapping[str, Any]) -> dict[str, Any]:
    """The measured-boot policy's judgement of the last attested boot, if one judged it."""
    attested = _last_attested(facts)
    policy = None if attested is None or attested.verdict is None else attested.verdict.policy
    if policy is None:
        return {"policy": None, "result": "not-evaluated", "reasons": []}
    return {
        "policy": policy,
        "result": attestation["result"],
        "reasons": attestation["reasons"],
    }


def _secure_boot(facts: NodeFacts) -> str:
    attested = _last_attested(facts)
    state = None if attested is None or attested.verdict is None else attested.verdict.secure_boot
    return "unknown" if state is None else ("on" if state else "off")


def _firewall(report: HealthReport | None) -> dict[str, Any]:
    firewall = None if report is None else report.firewall
    if firewall is None:
        return {
            "enforced": False,
            "mode": None,
            "ruleset_sha256": None,
            "in_sync": None,
            "telemetry_off": None,
        }
    return {
        "enforced": firewall.digest is not None,
        "mode": firewall.mode,
        "ruleset_sha256": firewall.digest,
        "in_sync": firewall.in_sync,
        # Outbound traffic is an allowlist: when it is enforced as published,
        # nothing else (telemetry included) leaves the node.
        "telemetry_off": firewall.digest is not None and firewall.in_sync,
    }


def _kernel(report: HealthReport | None) -> dict[str, Any]:
    """The kernel and its hold as the applier left them after its last commit."""
    hold = None if report is None else report.kernel_hold
    if hold is None:
        return {"release": None, "hold": None, "held_packages": [], "hold_error": None}
    return {
        "release": hold.kernel,
        "hold": hold.applied,
        "held_packages": list(hold.held),
        "hold_error": hold.error or None,
    }


def _advisories(catalog: Catalog, version: str | None) -> dict[str, Any]:
    """The advisories open on the node's driver, worst first, each with its bulletin."""
    exposure = catalog.exposure(version)
    if exposure is None:
        return {"status": "unknown", "worst": None, "fixed_by": None, "open": []}
    return {
        "status": "exposed" if exposure.open else "none-open",
        "worst": exposure.worst,
        "fixed_by": exposure.fixed_by,
        "open": [
            {
                "cve": a.cve,
                "severity": a.severity,
                "score": a.score,
                "status": a.status,
                "fixed": a.fixed,
                "bulletin": a.bulletin,
            }
            for a in exposure.open
        ],
    }


def _fleet_advisories(
    catalog: Catalog, drivers: Mapping[str, int], shown: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    states = Counter(n["advisories"]["status"] for n in shown)
    worst = Counter(n["advisories"]["worst"] for n in shown if n["advisories"]["worst"])
    feed = catalog.advisories
    cves = () if feed is None else feed.fleet(drivers, catalog.catalog_version).cves
    return {
        "bulletins": None if feed is None else len(feed.bulletins),
        **{s: states.get(s, 0) for s in ADVISORY_STATES},
        "worst": {s: worst.get(s, 0) for s in SEVERITIES},
        "cves": [
            {
                "cve": c.cve,
                "severity": c.severity,
                "score": c.score,
                "bulletin": c.bulletin,
                "nodes": c.nodes,
            }
            for c in cves
        ],
    }


def node_document(facts: NodeFacts, catalog: Catalog, today: date) -> dict[str, Any]:
    latest = facts.history[0].report if facts.history else None
    version = None if latest is None else latest.driver_version
    attestation = _attestation(facts)
    updates = [seen for seen in facts.history if seen.report.update != "up-to-date"]
    ek = facts.ek_certificate
    return {
        "node_id": facts.node_id,
        "pool": facts.pool,
        "state": facts.state,
        "enrolled_at": _iso(facts.enrolled_at),
        "last_seen": _iso(facts.last_seen),
        "identity": {
            "enrollment": facts.enrollment,
            "ek_certificate": {
                "sha256": None if ek is None else ek.sha256,
                "subject": None if ek is None else ek.subject,
                "serial": None if ek is None else ek.serial,
            },
        },
        "attestation": attestation,
        "secure_boot": _secure_boot(facts),
        "measured_boot_policy": _boot_policy(facts, attestation),
        "driver": {"version": version, **_support(catalog, version, today)},
        "advisories": _advisories(catalog, version),
        "kernel": _kernel(latest),
        "firewall": _firewall(latest),
        "updates": {
            "rollbacks": sum(1 for seen in updates if seen.report.update == "rolled-back"),
            "history": [
                {
                    "at": _iso(seen.received_at),
                    "update": seen.report.update,
                    "driver_version": seen.report.driver_version,
                    "bundle": seen.report.bundle,
                    "reason": seen.report.reason,
                }
                for seen in updates[:MAX_UPDATES_SHOWN]
            ],
        },
    }


def report_document(
    scope: str,
    nodes: Sequence[NodeFacts],
    catalog: Catalog,
    generated_at: int,
    key_id: str,
    algorithm: str,
    log_checkpoint: str | None = None,
) -> dict[str, Any]:
    """The whole report: ``scope`` is "fleet" or "node" (one node in ``nodes``);
    ``algorithm`` and ``key_id`` name the report key (``keys.report_key``);
    ``log_checkpoint``: the transparency log's signed checkpoint it was made under
    (``server.tlog``), so an auditor can tell which decisions it could see."""
    if scope not in ("fleet", "node"):
        raise GpuwardError(f"unknown report scope {scope!r}")
    today = datetime.fromtimestamp(generated_at, UTC).date()
    shown = [node_document(n, catalog, today) for n in nodes]
    drivers = Counter(n["driver"]["version"] or "none" for n in shown)
    attestation = Counter(n["attestation"]["result"] for n in shown)
    support = Counter(n["driver"]["status"] for n in shown)
    return {
        "format": FORMAT,
        "scope": scope,
        "generated_at": _iso(generated_at),
        "signed_by": {"algorithm": algorithm, "key_id": key_id},
        "catalog_version": catalog.catalog_version,
        "summary": {
            "nodes": len(shown),
            "driver_versions": dict(sorted(drivers.items())),
            "attestation": {r: attestation.get(r, 0) for r in ATTESTATION_RESULTS},
            "end_of_life_exposure": {s: support.get(s, 0) for s in SUPPORT_STATES},
            "rollbacks": sum(n["updates"]["rollbacks"] for n in shown),
            "advisories": _fleet_advisories(catalog, drivers, shown),
        },
        "nodes": shown,
        **({} if log_checkpoint is None else {"log_checkpoint": log_checkpoint}),
    }


@dataclass(frozen=True)
class Chart:
    """One bar chart of the summary, drawn the same way in HTML and PDF."""

    title: str
    bars: tuple[tuple[str, int], ...]


def charts(document: Mapping[str, Any]) -> list[Chart]:
    summary = document["summary"]
    advisories = summary["advisories"]
    return [
        Chart("Driver versions", tuple(summary["driver_versions"].items())),
        Chart("Attestation results", tuple(summary["attestation"].items())),
        Chart("End-of-life exposure", tuple(summary["end_of_life_exposure"].items())),
        Chart(
            "Worst open security advisory",
            (
                *advisories["worst"].items(),
                ("none open", advisories["none-open"]),
                ("unknown", advisories["unknown"]),
            ),
        ),
    ]
