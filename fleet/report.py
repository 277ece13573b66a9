"""The health report an agent posts after every cycle.

Every report doubles as a heartbeat. It says which slot and driver the node
runs, what the last update attempt did and why, and what each GPU looked like.
Reports come from the network, so ``from_dict`` is strict and bounded.

A report from an agent that reads NVML also carries ``health``: the node's
status with its reasons, each GPU's health sample with the rules' findings,
and the XIDs seen since the previous report. The server compares the samples
across the fleet to find stragglers. The section is optional (and omitted when
absent), so reports without it read, and digest, exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

from fleet.errors import InvalidDocument
from fleet.firewall import FirewallReport
from fleet.gpu import GpuSample, XidEvent
from fleet.gpu_rules import FAILED, STATUSES, Finding
from fleet.schema import Reader, canonical_json
from fleet.text import unicode_texts

SCHEMA_VERSION = 1
MAX_GPUS = 64
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
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SLOT = re.compile(r"[ab]")
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
_FAMILY = re.compile(r"apt|dnf")


@dataclass(frozen=True)
class GpuHealth:
    index: int
    name: str
    uuid: str
    driver_version: str | None
    healthy: bool
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "driver_version": self.driver_version,
            "healthy": self.healthy,
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> GpuHealth:
        r = Reader(
            doc,
            where,
            allowed=frozenset({"index", "name", "uuid", "driver_version", "healthy", "problems"}),
        )
        problems = r.items("problems", max_items=MAX_PROBLEMS)
        if not all(isinstance(p, str) and len(p) <= 512 for p in problems):
            raise InvalidDocument(f"{where}: problems must be short strings")
        return cls(
            index=r.integer("index", maximum=MAX_GPUS),
            name=r.text("name", max_len=128),
            uuid=r.text("uuid", max_len=128),
            driver_version=r.optional_text("driver_version", max_len=16, pattern=_VERSION),
            healthy=r.boolean("healthy"),
            problems=tuple(problems),
        )


def _short_texts(r: Reader, key: str, max_items: int) -> tuple[str, ...]:
    items = r.items(key, max_items=max_items)
    if not all(isinstance(i, str) and len(i) <= 512 for i in items):
        raise InvalidDocument(f"{r.where}: {key} must be short strings")
    return tuple(items)


@dataclass(frozen=True)
class GpuReport:
    """One GPU's health sample and what the rules found in it."""

    sample: GpuSample
    findings: tuple[Finding, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"sample": self.sample.to_dict(), "findings": [f.to_dict() for f in self.findings]}

    @classmethod
    def from_dict(cls, doc: object, where: str) -> GpuReport:
        r = Reader(doc, where, allowed=frozenset({"sample", "findings"}))
        return cls(
            sample=GpuSample.from_dict(r.raw("sample"), f"{where}.sample"),
            findings=tuple(
                Finding.from_dict(item, r.item_where("findings", i))
                for i, item in enumerate(r.items("findings", max_items=MAX_FINDINGS))
            ),
        )


@dataclass(frozen=True)
class NodeHealth:
    status: str  # fleet.gpu_rules.STATUSES: healthy, degraded or failed
    reasons: tuple[str, ...]
    gpus: tuple[GpuReport, ...]
    xids: tuple[XidEvent, ...]  # received since the previous report, oldest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "gpus": [g.to_dict() for g in self.gpus],
            "xids": [x.to_dict() for x in self.xids],
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> NodeHealth:
        r = Reader(doc, where, allowed=frozenset({"status", "reasons", "gpus", "xids"}))
        return cls(
            status=r.text("status", choices=frozenset(STATUSES)),
            reasons=_short_texts(r, "reasons", MAX_PROBLEMS),
            gpus=tuple(
                GpuReport.from_dict(item, r.item_where("gpus", i))
                for i, item in enumerate(r.items("gpus", max_items=MAX_GPUS))
            ),
            xids=tuple(
                XidEvent.from_dict(item, r.item_where("xids", i))
                for i, item in enumerate(r.items("xids", max_items=MAX_XIDS))
            ),
        )


@dataclass(frozen=True)
class KernelHoldReport:
    """The kernel hold as the applier left it after its last commit."""

    kernel: str  # the kernel release the hold is for
    family: str | None  # "apt" or "dnf"; None when the package manager is unknown
    applied: bool
    held: tuple[str, ...]  # the packages held or version-locked
    error: str  # why the hold could not be applied; "" when it was

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "family": self.family,
            "applied": self.applied,
            "held": list(self.held),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> KernelHoldReport:
        r = Reader(doc, where, allowed=frozenset({"kernel", "family", "applied", "held", "error"}))
        held = r.items("held", max_items=MAX_HELD)
        if not all(isinstance(p, str) and len(p) <= 256 for p in held):
            raise InvalidDocument(f"{where}: held must be package names")
        return cls(
            kernel=r.text("kernel", max_len=128),
            family=r.optional_text("family", pattern=_FAMILY, max_len=3),
            applied=r.boolean("applied"),
            held=tuple(held),
            error=r.text("error", max_len=1024),
        )


@dataclass(frozen=True)
class HealthReport:
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

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "node_id": self.node_id,
            "sent_at": self.sent_at,
            "active_slot": self.active_slot,
            "driver_version": self.driver_version,
            "bundle": self.bundle,
            "update": self.update,
            "reason": self.reason,
            "gpus": [g.to_dict() for g in self.gpus],
            "firewall": None if self.firewall is None else self.firewall.to_dict(),
            "kernel_hold": None if self.kernel_hold is None else self.kernel_hold.to_dict(),
        }
        if self.health is not None:
            doc["health"] = self.health.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: object, where: str = "report") -> HealthReport:
        """The report in ``doc``, its strings made Unicode text (``fleet.text``).

        Every renderer then can write what is stored, whatever a node sent. An
        attested report is bound to its exact text: one a node sends with a lone
        surrogate no longer matches its quote, like any report altered on its way.
        """
        report = cls._read(doc, where)
        as_read = report.to_dict()
        as_text = unicode_texts(as_read)
        return report if as_text == as_read else cls._read(as_text, where)

    @classmethod
    def _read(cls, doc: object, where: str) -> HealthReport:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "schema",
                    "node_id",
                    "sent_at",
                    "active_slot",
                    "driver_version",
                    "bundle",
                    "update",
                    "reason",
                    "gpus",
                    "firewall",
                    "kernel_hold",
                    "health",
                }
            ),
        )
        if r.integer("schema") != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported schema version")
        # Reader checked it is a mapping.
        firewall = cast(Mapping[str, Any], doc).get("firewall")
        kernel_hold = cast(Mapping[str, Any], doc).get("kernel_hold")
        health = cast(Mapping[str, Any], doc).get("health")
        gpus = tuple(
            GpuHealth.from_dict(item, r.item_where("gpus", i))
            for i, item in enumerate(r.items("gpus", max_items=MAX_GPUS))
        )
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            sent_at=r.integer("sent_at"),
            active_slot=r.optional_text("active_slot", max_len=1, pattern=_SLOT),
            driver_version=r.optional_text("driver_version", max_len=16, pattern=_VERSION),
            bundle=r.optional_text("bundle", max_len=512),
            update=r.text("update", choices=UPDATE_OUTCOMES),
            reason=r.text("reason", max_len=1024),
            gpus=gpus,
            firewall=None
            if firewall is None
            else FirewallReport.from_dict(firewall, f"{where}.firewall"),
            kernel_hold=None
            if kernel_hold is None
            else KernelHoldReport.from_dict(kernel_hold, f"{where}.kernel_hold"),
            health=None if health is None else NodeHealth.from_dict(health, f"{where}.health"),
        )
