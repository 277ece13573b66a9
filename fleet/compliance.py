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

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
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
CONTROLS_FILE = "controls.json"
CONTROL_RESULTS = ("pass", "fail", "unknown")
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
class Control:
    """One control of the report's policy, as ``fleet/data/controls.json`` states it."""

    id: str
    title: str
    checks: str
    evidence: str
    clauses: tuple[str, ...]  # NIST SP 800-53 clause ids
    why: str


@dataclass(frozen=True)
class ControlPolicy:
    """The controls every node is judged against, and the framework clauses they map to."""

    framework: str
    framework_source: str
    clauses: Mapping[str, Mapping[str, str]]  # id -> title, source
    controls: tuple[Control, ...]
    max_attestation_intervals: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "source": self.framework_source,
            "controls": [
                {
                    "id": c.id,
                    "title": c.title,
                    "checks": c.checks,
                    "evidence": c.evidence,
                    "why": c.why,
                    "clauses": [
                        {
                            "id": k,
                            "title": self.clauses[k]["title"],
                            "source": self.clauses[k]["source"],
                        }
                        for k in c.clauses
                    ],
                }
                for c in self.controls
            ],
        }


@cache
def load_policy() -> ControlPolicy:
    """The shipped policy; a control the judging code does not know is a packaging error."""
    raw = json.loads(resources.files("fleet").joinpath("data", CONTROLS_FILE).read_text())
    controls = tuple(
        Control(c["id"], c["title"], c["checks"], c["evidence"], tuple(c["clauses"]), c["why"])
        for c in raw["controls"]
    )
    unknown = {c.id for c in controls} ^ set(_JUDGES)
    missing = {k for c in controls for k in c.clauses} - set(raw["clauses"])
    if unknown or missing:
        raise GpuwardError(
            f"{CONTROLS_FILE}: controls {sorted(unknown)} or clauses {sorted(missing)} do not "
            "match the code that judges them; reinstall gpuward"
        )
    [fresh] = [c for c in raw["controls"] if c["id"] == "attestation-fresh"]
    return ControlPolicy(
        raw["framework"], raw["framework_source"], raw["clauses"], controls, fresh["max_intervals"]
    )


@dataclass(frozen=True)
class PreviousReport:
    """The last kept report of the same subject, which a new one's trend is measured
    against: its id, its time and its document's summary (as kept)."""

    report_id: str
    generated_at: int
    summary: Mapping[str, Any]


def trend(summary: Mapping[str, Any], previous: PreviousReport | None) -> dict[str, Any]:
    """How ``summary`` moved since ``previous``: nodes, and each control's counts. A
    control the previous report did not judge (the policy grew) has no change (null)."""
    if previous is None:
        return {"previous": None, "nodes": None, "controls": {}}
    before = previous.summary.get("controls", {})
    changes: dict[str, dict[str, int] | None] = {}
    for control, counts in summary["controls"].items():
        old = before.get(control)
        valid = isinstance(old, Mapping) and all(
            isinstance(old.get(r), int) for r in CONTROL_RESULTS
        )
        changes[control] = {r: counts[r] - old[r] for r in CONTROL_RESULTS} if valid else None
    nodes = previous.summary.get("nodes")
    return {
        "previous": {"report_id": previous.report_id, "generated_at": _iso(previous.generated_at)},
        "nodes": summary["nodes"] - nodes if isinstance(nodes, int) else None,
        "controls": changes,
    }


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
class RolloutRecord:
    """A rollout that included a node, named beside the changes it made there."""

    rollout_id: str
    target_driver: str | None
    created_at: int
    started_by: str | None  # the operator's token name, as the rollout's events record it
    approved_by: tuple[str, ...]  # operators who resumed it after a pause or a halt


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
    rollouts: tuple[RolloutRecord, ...] = ()  # those that included the node, any order


def _rollout_of(facts: NodeFacts, seen: SeenReport) -> RolloutRecord | None:
    """The rollout behind a change: the newest one started before it that moved the node
    to the driver it reports; a failure or rollback is the newest one started before it."""
    before = [r for r in facts.rollouts if r.created_at <= seen.received_at]
    moved = [r for r in before if r.target_driver == seen.report.driver_version]
    if seen.report.update != "committed" and not moved:
        moved = before
    return max(moved, key=lambda r: r.created_at, default=None)


def _change(facts: NodeFacts, seen: SeenReport) -> dict[str, Any]:
    rollout = _rollout_of(facts, seen)
    return {
        "at": _iso(seen.received_at),
        "update": seen.report.update,
        "driver_version": seen.report.driver_version,
        "bundle": seen.report.bundle,
        "reason": seen.report.reason,
        "rollout": None if rollout is None else rollout.rollout_id,
        "started_by": None if rollout is None else rollout.started_by,
        "approved_by": [] if rollout is None else list(rollout.approved_by),
    }


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


def node_document(
    facts: NodeFacts,
    catalog: Catalog,
    now: int,
    policy: ControlPolicy,
    report_interval_s: int,
    exposures: dict[str | None, dict[str, Any]],
) -> dict[str, Any]:
    """One node's part; ``exposures`` keeps each driver version's advisories, which a
    fleet shares among thousands of nodes, so each is matched against the feed once."""
    today = datetime.fromtimestamp(now, UTC).date()
    latest = facts.history[0].report if facts.history else None
    version = None if latest is None else latest.driver_version
    attestation = _attestation(facts)
    updates = [seen for seen in facts.history if seen.report.update != "up-to-date"]
    ek = facts.ek_certificate
    if version not in exposures:
        exposures[version] = _advisories(catalog, version)
    node: dict[str, Any] = {
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
        "advisories": exposures[version],
        "kernel": _kernel(latest),
        "firewall": _firewall(latest),
        "updates": {
            "rollbacks": sum(1 for seen in updates if seen.report.update == "rolled-back"),
            "history": [_change(facts, seen) for seen in updates[:MAX_UPDATES_SHOWN]],
        },
    }
    limits = _Limits(now, report_interval_s * policy.max_attestation_intervals)
    node["controls"] = [
        {"control": c.id, "result": result, "evidence": evidence}
        for c in policy.controls
        for result, evidence in (_JUDGES[c.id](node, limits),)
    ]
    return node


@dataclass(frozen=True)
class _Limits:
    now: int
    max_attestation_age_s: int


Judgement = tuple[str, str]  # one of CONTROL_RESULTS, and the evidence in words


def _attested_boot(node: Mapping[str, Any], _: _Limits) -> Judgement:
    result = node["attestation"]["result"]
    policy = node["measured_boot_policy"]["policy"] or "no policy named"
    reasons = "; ".join(node["attestation"]["reasons"])
    if result == "passed":
        return "pass", f"last attested boot passed policy {policy}"
    if result == "failed":
        return "fail", f"last attested boot failed policy {policy}: {reasons or 'no reason given'}"
    if result == "no-attested-report":
        return "fail", "enrolled with a TPM but sent no attested report"
    return "unknown", "enrolled without a TPM: boot is not attested"


def _secure_boot_on(node: Mapping[str, Any], _: _Limits) -> Judgement:
    state = node["secure_boot"]
    if state == "unknown":
        return "unknown", "no attested event log shows the Secure Boot state"
    return ("pass" if state == "on" else "fail"), f"Secure Boot {state} in the attested event log"


def _driver_supported(node: Mapping[str, Any], _: _Limits) -> Judgement:
    driver = node["driver"]
    if driver["version"] is None:
        return "unknown", "no driver reported"
    if driver["status"] == "unknown":
        return "unknown", f"driver {driver['version']}: branch not in the catalog"
    eol = driver["end_of_life"] or "none announced"
    evidence = f"driver {driver['version']}, branch {driver['branch']}, end of life {eol}"
    return ("fail" if driver["status"] == "ended" else "pass"), evidence


def _no_critical_cve(node: Mapping[str, Any], _: _Limits) -> Judgement:
    advisories = node["advisories"]
    if advisories["status"] == "unknown":
        return "unknown", "no driver reported, or the catalog has no advisory feed"
    critical = [a["cve"] for a in advisories["open"] if a["severity"] == "critical"]
    if critical:
        return "fail", f"open critical: {', '.join(critical)}"
    return "pass", f"{len(advisories['open'])} open advisory(ies), none critical"


def _kernel_held(node: Mapping[str, Any], _: _Limits) -> Judgement:
    kernel = node["kernel"]
    if kernel["hold"] is None:
        return "unknown", "the applier has reported no commit"
    if kernel["hold"]:
        return "pass", f"kernel {kernel['release']} held ({', '.join(kernel['held_packages'])})"
    return (
        "fail",
        f"kernel {kernel['release']} not held: {kernel['hold_error'] or 'no error given'}",
    )


def _outbound_allowlist(node: Mapping[str, Any], _: _Limits) -> Judgement:
    firewall = node["firewall"]
    if firewall["mode"] is None:
        return "unknown", "no firewall report"
    digest = (firewall["ruleset_sha256"] or "none")[:16]
    if firewall["telemetry_off"]:
        return "pass", f"ruleset {digest} enforced ({firewall['mode']}), in sync"
    return "fail", f"ruleset {digest} ({firewall['mode']}): enforced and in sync is not both true"


def _attestation_fresh(node: Mapping[str, Any], limits: _Limits) -> Judgement:
    at = node["attestation"]["last_attested_at"]
    if at is None:
        if node["identity"]["enrollment"] == "unattested":
            return "unknown", "enrolled without a TPM: never attested"
        return "fail", "enrolled with a TPM, never attested"
    age = limits.now - int(
        datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    )
    verdict = "pass" if age <= limits.max_attestation_age_s else "fail"
    return (
        verdict,
        f"last attested {at}, {age} s before the report (limit {limits.max_attestation_age_s} s)",
    )


def _history_complete(node: Mapping[str, Any], _: _Limits) -> Judgement:
    if node["last_seen"] is None:
        return "unknown", "the node has not reported"
    history = node["updates"]["history"]
    unexplained = [
        h for h in history if h["update"] in ("rolled-back", "failed") and not h["reason"]
    ]
    if unexplained:
        return "fail", f"{len(unexplained)} failed or rolled-back update(s) without a reason"
    by_rollout = sum(1 for h in history if h["rollout"] is not None)
    return (
        "pass",
        f"{len(history)} change(s) recorded ({by_rollout} by a named rollout), "
        f"{node['updates']['rollbacks']} rollback(s), each with its reason",
    )


_JUDGES = {
    "attested-boot": _attested_boot,
    "secure-boot": _secure_boot_on,
    "driver-supported": _driver_supported,
    "no-critical-cve": _no_critical_cve,
    "kernel-held": _kernel_held,
    "outbound-allowlist": _outbound_allowlist,
    "attestation-fresh": _attestation_fresh,
    "update-history-complete": _history_complete,
}


def report_document(
    scope: str,
    nodes: Sequence[NodeFacts],
    catalog: Catalog,
    generated_at: int,
    key_id: str,
    algorithm: str,
    report_interval_s: int = 300,
    log_checkpoint: str | None = None,
    previous: PreviousReport | None = None,
) -> dict[str, Any]:
    """The whole report: ``scope`` is "fleet" or "node" (one node in ``nodes``);
    ``algorithm`` and ``key_id`` name the report key (``keys.report_key``);
    ``report_interval_s`` is how often nodes report (the freshness control counts in it);
    ``log_checkpoint``: the transparency log's signed checkpoint it was made under
    (``server.tlog``), so an auditor can tell which decisions it could see;
    ``previous``: the last kept report of the same subject, for the trend."""
    if scope not in ("fleet", "node"):
        raise GpuwardError(f"unknown report scope {scope!r}")
    policy = load_policy()
    exposures: dict[str | None, dict[str, Any]] = {}
    shown = [
        node_document(n, catalog, generated_at, policy, report_interval_s, exposures) for n in nodes
    ]
    seen = [s.received_at for n in nodes for s in n.history]
    results = {c.id: Counter[str]() for c in policy.controls}
    exceptions = []
    for node in shown:
        for judged in node["controls"]:
            results[judged["control"]][judged["result"]] += 1
            if judged["result"] == "fail":
                exceptions.append(
                    {"node_id": node["node_id"], "control": judged["control"],
                     "evidence": judged["evidence"]}
                )  # fmt: skip
    drivers = Counter(n["driver"]["version"] or "none" for n in shown)
    attestation = Counter(n["attestation"]["result"] for n in shown)
    support = Counter(n["driver"]["status"] for n in shown)
    summary = {
        "nodes": len(shown),
        "controls": {
            control: {r: counts.get(r, 0) for r in CONTROL_RESULTS}
            for control, counts in results.items()
        },
        "driver_versions": dict(sorted(drivers.items())),
        "attestation": {r: attestation.get(r, 0) for r in ATTESTATION_RESULTS},
        "end_of_life_exposure": {s: support.get(s, 0) for s in SUPPORT_STATES},
        "rollbacks": sum(n["updates"]["rollbacks"] for n in shown),
        "advisories": _fleet_advisories(catalog, drivers, shown),
    }
    return {
        "format": FORMAT,
        "scope": scope,
        "generated_at": _iso(generated_at),
        "signed_by": {"algorithm": algorithm, "key_id": key_id},
        "catalog_version": catalog.catalog_version,
        # What the evidence covers: from the oldest report read to the report's time.
        "period": {"from": _iso(min(seen, default=generated_at)), "to": _iso(generated_at)},
        "policy": policy.to_dict(),
        "summary": summary,
        "trend": trend(summary, previous),
        "exceptions": exceptions,
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
