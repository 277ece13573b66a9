"""Measured-boot policy: the reference state a node must have booted into.

``from_eventlog`` writes the state of a known-good node's log as an editable
JSON document: Secure Boot on or off, the digests of the PK, KEK, db and dbx
variables, the digests of the boot applications the firmware ran (shim, grub,
the kernel: their Authenticode hashes, as measured), and the kernel command
lines. Operators then add the digests of the next shim or kernel before rolling
it out. ``evaluate`` judges a verified log against it and returns every reason
it fails, not just the first.

Only events in PCRs the quote verified are trusted (see ``VerifiedLog``), and an
event's data is trusted only where it is bound to its measured digest: variable
data by its hash, grub's and systemd-boot's command lines by theirs.

Pure logic on parsed logs (no I/O): the server and ``gpuward policy`` share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import InvalidDocument
from fleet.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EfiVariable,
    Event,
    EventLog,
)
from fleet.schema import Reader

SCHEMA_VERSION = 1
KEY_VARIABLES = ("PK", "KEK", "db", "dbx")
PCR_SECURE_BOOT = 7
PCR_BOOT_APPLICATIONS = 4
GRUB_CMDLINE_PCR = 8
GRUB_CMDLINE_PREFIX = b"kernel_cmdline: "
SYSTEMD_BOOT_CMDLINE_PCR = 12
MAX_ENTRIES = 1024


@dataclass(frozen=True)
class BootPolicy:
    """The reference state. Digests are lowercase hex in ``bank``."""

    bank: str
    secure_boot: bool
    variables: Mapping[str, tuple[str, ...]]  # PK/KEK/db/dbx -> allowed SHA-256 of its data
    boot_applications: tuple[str, ...]
    kernel_cmdlines: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "bank": self.bank,
            "secure_boot": self.secure_boot,
            "variables": {name: list(self.variables[name]) for name in KEY_VARIABLES},
            "boot_applications": list(self.boot_applications),
            "kernel_cmdlines": list(self.kernel_cmdlines),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "boot policy") -> BootPolicy:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "schema",
                    "bank",
                    "secure_boot",
                    "variables",
                    "boot_applications",
                    "kernel_cmdlines",
                }
            ),
        )
        if r.integer("schema") != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported schema version")
        variables_doc = r.raw("variables")
        v = Reader(variables_doc, f"{where}.variables", allowed=frozenset(KEY_VARIABLES))
        return cls(
            bank=r.text("bank", choices=frozenset({"sha1", "sha256", "sha384", "sha512"})),
            secure_boot=r.boolean("secure_boot"),
            variables={name: _strings(v, name, hexadecimal=True) for name in KEY_VARIABLES},
            boot_applications=_strings(r, "boot_applications", hexadecimal=True),
            kernel_cmdlines=_strings(r, "kernel_cmdlines", hexadecimal=False),
        )


def _strings(r: Reader, key: str, *, hexadecimal: bool) -> tuple[str, ...]:
    items = r.items(key, max_items=MAX_ENTRIES)
    for item in items:
        if not isinstance(item, str) or len(item) > 4096:
            raise InvalidDocument(f"{r.where}: {key!r} must list strings")
        if hexadecimal and (not item or item.strip("0123456789abcdef")):
            raise InvalidDocument(f"{r.where}: {key!r} must list lowercase hex digests")
    return tuple(items)


@dataclass(frozen=True)
class PolicyResult:
    reasons: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class _BootState:
    """What a log says about the boot, each item with the event that says it."""

    secure_boot: list[tuple[Event, bool]]
    variables: list[tuple[Event, EfiVariable]]
    applications: list[Event]
    cmdlines: list[tuple[Event, str | None]]  # None: the text is not bound to the digest


def _boot_state(log: EventLog, bank: str) -> _BootState:
    state = _BootState([], [], [], [])
    for event in log.events:
        decoded = event.decoded
        if (
            event.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG
            and event.pcr == PCR_SECURE_BOOT
            and isinstance(decoded, EfiVariable)
        ):
            if decoded.name == "SecureBoot":
                state.secure_boot.append((event, decoded.data == b"\x01"))
            elif decoded.name in KEY_VARIABLES:
                state.variables.append((event, decoded))
        elif (
            event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
            and event.pcr == PCR_BOOT_APPLICATIONS
        ):
            state.applications.append(event)
        elif event.event_type == EV_IPL and event.pcr == GRUB_CMDLINE_PCR:
            if event.data.startswith(GRUB_CMDLINE_PREFIX):
                measured = event.data[len(GRUB_CMDLINE_PREFIX) :].rstrip(b"\x00")
                bound = _hash(bank, measured) == event.digests.get(bank)
                text = measured.decode("utf-8", "replace")
                state.cmdlines.append((event, text if bound else None))
        elif event.event_type == EV_IPL and event.pcr == SYSTEMD_BOOT_CMDLINE_PCR:
            bound = _hash(bank, event.data) == event.digests.get(bank)
            text = event.data.decode("utf-16-le", "replace").rstrip("\x00").strip()
            state.cmdlines.append((event, text if bound else None))
    return state


def _hash(bank: str, data: bytes) -> bytes:
    return hashlib.new(bank, data).digest()


def from_eventlog(log: EventLog) -> BootPolicy:
    """The reference state of the boot ``log`` records."""
    bank = "sha256" if "sha256" in log.digest_sizes else next(iter(log.digest_sizes))
    state = _boot_state(log, bank)
    variables: dict[str, list[str]] = {name: [] for name in KEY_VARIABLES}
    for _, variable in state.variables:
        if variable.data_sha256 not in variables[variable.name]:
            variables[variable.name].append(variable.data_sha256)
    return BootPolicy(
        bank=bank,
        secure_boot=any(on for _, on in state.secure_boot),
        variables={name: tuple(digests) for name, digests in variables.items()},
        boot_applications=tuple(dict.fromkeys(e.digests[bank].hex() for e in state.applications)),
        kernel_cmdlines=tuple(dict.fromkeys(text for _, text in state.cmdlines if text)),
    )


def secure_boot(log: EventLog, verified: Mapping[str, frozenset[int]]) -> bool | None:
    """Whether the boot ``log`` records ran with Secure Boot on, counting only events
    in PCRs the quote verified (``verified``: bank -> PCRs); None: not measured there."""
    bank = "sha256" if "sha256" in log.digest_sizes else next(iter(log.digest_sizes))
    trusted = verified.get(bank, frozenset())
    states = [on for event, on in _boot_state(log, bank).secure_boot if event.pcr in trusted]
    return (states == [True]) if states else None


def evaluate(
    policy: BootPolicy, log: EventLog, verified: Mapping[str, frozenset[int]]
) -> PolicyResult:
    """Every way ``log`` departs from ``policy``; ``verified`` names the PCRs (per
    bank) whose replay matched a quote, the only ones whose events count."""
    bank = policy.bank
    trusted = verified.get(bank, frozenset())
    reasons: list[str] = []
    for pcr in (PCR_BOOT_APPLICATIONS, PCR_SECURE_BOOT):
        if pcr not in trusted:
            reasons.append(
                f"PCR {pcr} ({bank}) is not verified by the quote: its events cannot count"
            )
    state = _boot_state(log, bank)

    def counts(event: Event) -> bool:
        return event.pcr in trusted

    secure_boot = [on for event, on in state.secure_boot if counts(event)]
    if policy.secure_boot and secure_boot != [True]:
        reasons.append("Secure Boot is not on" if secure_boot else "Secure Boot is not measured")
    for event, variable in state.variables:
        if not counts(event):
            continue
        if _hash(bank, event.data) != event.digests.get(bank):
            reasons.append(f"event {event.index}: {variable.name} data does not match its digest")
        elif variable.data_sha256 not in policy.variables[variable.name]:
            reasons.append(
                f"event {event.index}: {variable.name} has data SHA-256 {variable.data_sha256}, "
                "not an allowed one"
            )
    for event in state.applications:
        digest = event.digests.get(bank)
        if counts(event) and (digest is None or digest.hex() not in policy.boot_applications):
            name = event.decoded.summary() if event.decoded else "boot application"
            shown = digest.hex() if digest else "none"
            reasons.append(f"event {event.index}: {name} has digest {shown}, not an allowed one")
    if policy.kernel_cmdlines:
        cmdlines = [(event, text) for event, text in state.cmdlines if counts(event)]
        if not cmdlines:
            reasons.append("no kernel command line is measured in a verified PCR")
        for event, text in cmdlines:
            if text is None:
                reasons.append(f"event {event.index}: the command line is not what was measured")
            elif text not in policy.kernel_cmdlines:
                reasons.append(f"event {event.index}: kernel command line {text!r} is not allowed")
    return PolicyResult(tuple(reasons))
