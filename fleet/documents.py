"""Every wire document, in one list.

``server.openapi`` publishes a component schema for each, and
``tests/wire/test_wire_documents.py`` checks each against the schema the server
serves and refuses a fleet class with ``from_dict`` and ``to_dict`` that is not
listed here, so a new document cannot be left out of either.
"""

from __future__ import annotations

from fleet.advisories import AdvisoryExposure, CveExposure, FleetAdvisories, OpenAdvisory
from fleet.attestation import (
    AttestationEvidence,
    AttestedReport,
    Challenge,
    CredentialAnswer,
    CredentialChallenge,
    PcrSelection,
    ReportChallenge,
    SessionKeyCertification,
    TpmEnrollmentRequest,
)
from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.attribution import Attribution, Cluster, SuspectCard
from fleet.checkpoint import CheckpointAdvice
from fleet.driver_settings import Drift, DriverSettings, SettingsReport
from fleet.firewall import FirewallReport
from fleet.gpu import ClockEvents, GpuProcess, GpuSample, RemappedRows, XidEvent
from fleet.gpu_attestation import (
    GpuAttestationVerdict,
    GpuCheck,
    GpuEvidence,
    GpuMeasurementVerdict,
)
from fleet.gpu_rules import Finding
from fleet.inventory import Gpu, NodeInventory
from fleet.kept_reports import KeptFileInfo, KeptReportInfo, KeptReportList
from fleet.nodeauth import KeyEnrollmentRequest
from fleet.remediation import (
    NodeRemediation,
    RemediationAudit,
    RemediationAuditLog,
    RemediationBoard,
    RemediationOverview,
    Symptom,
)
from fleet.report import GpuHealth, GpuReport, HealthReport, KernelHoldReport, NodeHealth
from fleet.rollout import NodeState, Policy, Rollout
from fleet.tlog import ConsistencyProof, InclusionProof, LogEntry, LogExport
from fleet.topology import Topology
from fleet.webhook import WebhookEvent
from fleet.wire import Wire

WIRE_DOCUMENTS: tuple[type[Wire], ...] = (
    RemediationOverview,
    RemediationBoard,
    NodeRemediation,
    Symptom,
    RemediationAuditLog,
    RemediationAudit,
    HealthReport,
    GpuHealth,
    KernelHoldReport,
    NodeHealth,
    SettingsReport,
    DriverSettings,
    Drift,
    GpuReport,
    GpuSample,
    ClockEvents,
    RemappedRows,
    GpuProcess,
    XidEvent,
    Finding,
    FirewallReport,
    KeyEnrollmentRequest,
    TpmEnrollmentRequest,
    CredentialChallenge,
    CredentialAnswer,
    Challenge,
    ReportChallenge,
    SessionKeyCertification,
    AttestedReport,
    AttestationEvidence,
    PcrSelection,
    AttestationVerdict,
    AttestedDriver,
    GpuAttestationVerdict,
    GpuCheck,
    GpuMeasurementVerdict,
    GpuEvidence,
    NodeInventory,
    Gpu,
    Rollout,
    Policy,
    NodeState,
    WebhookEvent,
    CheckpointAdvice,
    Topology,
    Attribution,
    Cluster,
    SuspectCard,
    AdvisoryExposure,
    OpenAdvisory,
    FleetAdvisories,
    CveExposure,
    LogEntry,
    InclusionProof,
    ConsistencyProof,
    LogExport,
    KeptReportList,
    KeptReportInfo,
    KeptFileInfo,
)
