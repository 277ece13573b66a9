"""The health report an agent posts after every cycle.

Every report doubles as a heartbeat. It says which slot and driver the node
runs, what the last update attempt did and why, and what each GPU looked like.
Reports come from the network, so ``from_dict`` is strict and bounded.

A report from an agent that reads NVML also carries ``health``: the node's
status with its reasons, each GPU's health sample with the rules' findings,
and the XIDs seen since the previous report. The server compares the samples
across the fleet to find stragglers. The section is optional (and omitted when
absent), so reports without it read, and digest, exactly as before.

It also carries the node's inventory (``fleet.inventory``): what the agent's own
compatibility gate judges bundles by, so a fleet plan from the server's view
(``gpuward compat plan --from-server``) judges each node as its agent does.
Optional and omitted when absent, as ``health`` is.

And its topology labels (``fleet.topology``: rack, row, PDU, NVLink domain),
when its config gives any, for ``fleet.attribution``; omitted when absent too.

And, when the active bundle declares driver settings (``fleet.driver_settings``),
those settings with every way the node differs from them; omitted when it
declares none.

An attested report carries each GPU's attestation evidence (``gpu_evidence``,
``fleet.gpu_attestation``), its SPDM report answering the same challenge the TPM
quotes; omitted when empty, so the quote over the report covers the evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Self

from fleet.driver_settings import SettingsReport
from fleet.errors import InvalidDocument
from fleet.firewall import FirewallReport
from fleet.gpu import GpuSample, XidEvent
from fleet.gpu_attestation import GpuEvidence
from fleet.gpu_rules import FAILED, STATUSES, Finding
from fleet.inventory import MAX_GPUS, NODE_ID, NodeInventory
from fleet.schema import canonical_json
from fleet.text import unicode_texts
from fleet.topology import Topology
from fleet.wire import (
    Boolean,
    Document,
    Field,
    Integer,
    ListOf,
    Nullable,
    Ref,
    Text,
    Wire,
    optional,
)

SCHEMA_VERSION = 1
MAX_PROBLEMS = 32
MAX_HELD = 64
MAX_FINDINGS = 32  # per GPU
MAX_XIDS = 64  # per report: an XID storm is summed up by its first ones

# What the last cycle did with updates.
UPDATE_OUTCOMES = frozenset(
    {
        "up-to-date",  # nothing newer to install
        "staged",  # a verified bundle waits for the root applier, or is being applied
        "committed",  # a new bundle was installed and passed the health gate
        "rolled-back",  # a new bundle failed the health gate; the old slot runs again
        "refused",  # metadata or bundle failed verification; nothing was touched
        "failed",  # something went wrong locally; see reason
    }
)
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")


@dataclass(frozen=True)
class GpuHealth(Wire):
    index: int
    name: str
    uuid: str
    driver_version: str | None
    healthy: bool
    problems: tuple[str, ...]

    WIRE = Document(
        Field("index", Integer(maximum=MAX_GPUS)),
        Field("name", Text(max_len=128)),
        Field("uuid", Text(max_len=128)),
        optional("driver_version", Text(max_len=16, pattern=_VERSION)),
        Field("healthy", Boolean()),
        Field("problems", ListOf(Text(max_len=512), MAX_PROBLEMS)),
        where="gpu",
    )


@dataclass(frozen=True)
class GpuReport(Wire):
    """One GPU's health sample and what the rules found in it."""

    sample: GpuSample
    findings: tuple[Finding, ...]

    WIRE = Document(
        Field("sample", Ref(GpuSample)),
        Field("findings", ListOf(Ref(Finding), MAX_FINDINGS)),
    )


@dataclass(frozen=True)
class NodeHealth(Wire):
    """From agents that read NVML: the node's status (healthy, degraded or failed)
    with its reasons, each GPU's sample with the rules' findings, and the XIDs
    received since the previous report, oldest first."""

    status: str  # fleet.gpu_rules.STATUSES: healthy, degraded or failed
    reasons: tuple[str, ...]
    gpus: tuple[GpuReport, ...]
    xids: tuple[XidEvent, ...]  # received since the previous report, oldest first

    WIRE = Document(
        Field("status", Text(choices=frozenset(STATUSES))),
        Field("reasons", ListOf(Text(max_len=512), MAX_PROBLEMS)),
        Field("gpus", ListOf(Ref(GpuReport), MAX_GPUS)),
        Field("xids", ListOf(Ref(XidEvent), MAX_XIDS)),
        where="health",
    )


@dataclass(frozen=True)
class KernelHoldReport(Wire):
    """The kernel hold as the applier left it after its last commit."""

    kernel: str  # the kernel release the hold is for
    family: str | None  # "apt" or "dnf"; None when the package manager is unknown
    applied: bool
    held: tuple[str, ...]  # the packages held or version-locked
    error: str  # why the hold could not be applied; "" when it was

    WIRE = Document(
        Field("kernel", Text(max_len=128)),
        optional("family", Text(max_len=3, choices=frozenset({"apt", "dnf"}))),
        Field("applied", Boolean()),
        Field("held", ListOf(Text(max_len=256), MAX_HELD)),
        Field("error", Text(max_len=1024)),
        where="kernel_hold",
    )


@dataclass(frozen=True)
class HealthReport(Wire):
    node_id: str
    sent_at: int  # seconds since the epoch, UTC
    active_slot: str | None
    driver_version: str | None
    bundle: str | None  # TUF target path of the bundle in the active slot
    update: str  # one of UPDATE_OUTCOMES
    reason: str
    gpus: tuple[GpuHealth, ...]
    firewall: FirewallReport | None = None  # None on a node without the firewall enabled
    kernel_hold: KernelHoldReport | None = None  # None until the applier first commits
    health: NodeHealth | None = None  # None from an agent that does not read NVML
    inventory: NodeInventory | None = None  # None from an agent that does not send it
    topology: Topology | None = None  # None: the node's config gives no labels
    settings: SettingsReport | None = None  # None: the active bundle declares no settings
    # Each GPU's attestation evidence, answering the report's TPM challenge; empty
    # from GPUs without confidential computing, and in reports that are not attested.
    gpu_evidence: tuple[GpuEvidence, ...] = ()
    # The transparency log's signed checkpoint the node last saw (server.tlog): the
    # one it accepted, or one it refused as inconsistent with it. None: no log pinned.
    log_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.update not in UPDATE_OUTCOMES:
            raise InvalidDocument(f"report: unknown update outcome {self.update!r}")

    @property
    def healthy(self) -> bool:
        failed = self.health is not None and self.health.status == FAILED
        return bool(self.gpus) and all(g.healthy for g in self.gpus) and not failed

    @cached_property
    def canonical_json(self) -> bytes:
        """``to_dict()`` canonically encoded: what a quote's report digest binds
        (``fleet.attestation``), and what the server stores; encoded once."""
        return canonical_json(self.to_dict())

    WIRE = Document(
        Field("node_id", Text(max_len=128, pattern=NODE_ID)),
        Field("sent_at", Integer(), description="seconds since the epoch, UTC"),
        optional("active_slot", Text(max_len=1, choices=frozenset({"a", "b"}))),
        optional("driver_version", Text(max_len=16, pattern=_VERSION)),
        optional("bundle", Text(max_len=512), "TUF target path of the active slot's bundle"),
        Field("update", Text(choices=UPDATE_OUTCOMES)),
        Field("reason", Text(max_len=1024)),
        Field("gpus", ListOf(Ref(GpuHealth), MAX_GPUS)),
        optional("firewall", Ref(FirewallReport)),
        optional("kernel_hold", Ref(KernelHoldReport)),
        Field("health", Nullable(Ref(NodeHealth)), default=None, omit_default=True),
        Field(
            "inventory",
            Nullable(Ref(NodeInventory)),
            default=None,
            omit_default=True,
            description="what the agent's compatibility gate judges bundles by",
        ),
        Field(
            "topology",
            Nullable(Ref(Topology)),
            default=None,
            omit_default=True,
            description="where the node sits (rack, row, PDU, NVLink domain), from its config",
        ),
        Field(
            "settings",
            Nullable(Ref(SettingsReport)),
            default=None,
            omit_default=True,
            description="the active bundle's declared driver settings, and the node's drift",
        ),
        Field(
            "gpu_evidence",
            ListOf(Ref(GpuEvidence), MAX_GPUS),
            default=(),
            omit_default=True,
            description="each GPU's SPDM report answering the report's TPM challenge",
        ),
        Field(
            "log_checkpoint",
            Nullable(Text(max_len=16 * 1024)),
            default=None,
            omit_default=True,
            description="the transparency log checkpoint (C2SP signed note) the node last saw",
        ),
        where="report",
        version=SCHEMA_VERSION,
        version_refusal="unsupported schema version",
    )

    @classmethod
    def from_dict(cls, doc: object, where: str | None = None) -> Self:
        """The report in ``doc``, its strings made Unicode text (``fleet.text``).

        Every renderer then can write what is stored, whatever a node sent. An
        attested report is bound to its exact text: one a node sends with a lone
        surrogate no longer matches its quote, like any report altered on its way.
        """
        report = super().from_dict(doc, where)
        as_read = report.to_dict()
        encoded = canonical_json(as_read)
        # Canonical JSON is ASCII: it writes every surrogate (lone, or half of a pair
        # for a character beyond U+FFFF) as an escape \ud800 to \udfff. Without one,
        # no string of the report, key or value, holds a lone surrogate, and none
        # needs looking at; with one, each is looked at.
        if b"\\ud" in encoded:
            as_text = unicode_texts(as_read)
            if as_text != as_read:
                return super().from_dict(as_text, where)
        # What the report's digest binds, from the same to_dict(): encoded once.
        object.__setattr__(report, "canonical_json", encoded)
        return report
