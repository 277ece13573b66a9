"""The measured driver: the applier's measurement log, and its replay.

After the applier commits a driver bundle (and again at every boot, for the
bundle the active slot holds) it extends the driver PCR (sha256 bank, PCR 15
by default: 14 holds shim's MOK measurements) with the digest of one event
naming the bundle, and appends that event to its own log: JSON lines, one
event per line, the log of the current boot only. The server replays the log
sent with an attested report against the quoted PCR, exactly as firmware logs
are replayed, and so knows which bundle is active: an event removed, added or
edited changes the replay.

The replay alone cannot tell who extended: PCR 15 has no authorization and
the unprivileged agent reaches the TPM (it quotes). So every event is signed
with the applier's own key (root's alone), carries a per-boot sequence number
and the TPM's reset count, and the first event of each boot is a "key" event
naming that key. A verifier then rejects events the agent could add: unsigned
or signed by another key, a genuine event extended again (its sequence number
repeats), one from an earlier boot (its reset count is not the quote's), and
with the key pinned per node, a key event the agent measured first.

An event's digest is SHA-256 of the canonical JSON of what it measures, so no
field of the claim can be changed without changing the PCR; the signature is
over the same bytes (with a domain prefix), and the time is informative only.

Pure, like the rest of ``fleet``: both the applier (writing) and the server
(verifying) use these definitions; the signature scheme is passed in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fleet.attestation import MAX_DRIVER_LOG_BYTES, AttestationError
from fleet.errors import InvalidDocument
from fleet.schema import Reader, canonical_json

SCHEMA_VERSION = 2  # 2: signed, sequenced, bound to the boot
BANK = "sha256"
DIGEST_BYTES = 32
DEFAULT_DRIVER_PCR = 15
# PCRs the driver may not share: firmware and boot loader (0-9), IMA (10), shim's
# MOK lists (14). Extending one would break the replay of the firmware log.
RESERVED_PCRS = frozenset({*range(11), 14})
MAX_PCR = 23  # a PC Client TPM has 24 PCRs
MAX_EVENTS = 256
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_HEX = _SHA256_HEX  # a raw Ed25519 public key is 32 bytes too
_SIGNATURE_HEX = re.compile(r"(?:[0-9a-f]{128})?")  # empty: unsigned
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
ZERO = bytes(DIGEST_BYTES)


def driver_pcr_problem(pcr: int) -> str | None:
    """Why ``pcr`` cannot hold the driver measurements; None when it can."""
    if not 0 <= pcr <= MAX_PCR:
        return f"PCR {pcr} does not exist (0-{MAX_PCR}); use {DEFAULT_DRIVER_PCR}"
    if pcr in RESERVED_PCRS:
        return (
            f"PCR {pcr} is measured by firmware, the boot loader, IMA or shim; use "
            f"{DEFAULT_DRIVER_PCR} (or another of 11-{MAX_PCR} but 14)"
        )
    return None


class DriverLogError(AttestationError):
    """A driver measurement log that is malformed or does not prove what it claims."""


KEY = "key"  # the first event of a boot: the applier's public key
DRIVER = "driver"  # a bundle became (or, after a boot, still is) the active driver
SIGNED_PREFIX = b"gpuward driver measurement v2\n"
# Checks an Ed25519 signature: (raw public key, message, signature) -> valid.
Verify = Callable[[bytes, bytes, bytes], bool]
# What a log entry and its event may hold: every report carries its node's log.
_ENTRY_FIELDS = frozenset({"schema", "bank", "digest", "event", "signature", "measured_at"})
_BANKS = frozenset({BANK})
_EVENT_FIELDS = frozenset({"kind", "pcr", "seq", "reset_count"})
_KEY_EVENT_FIELDS = _EVENT_FIELDS | {"public_key"}
_DRIVER_EVENT_FIELDS = _EVENT_FIELDS | {"target_path", "sha256", "driver_version"}
_DRIVER_KIND = frozenset({DRIVER})


@dataclass(frozen=True)
class DriverEvent:
    """One measurement: the applier's key (``kind`` key), or an active bundle."""

    pcr: int
    target_path: str
    sha256: str  # the bundle's, as signed in the TUF metadata
    driver_version: str
    measured_at: int = 0  # seconds since the epoch; not covered by the digest
    kind: str = DRIVER
    seq: int = 0  # 0 for the boot's key event, then 1, 2, ...
    reset_count: int = 0  # the TPM's, when measured: which boot this event belongs to
    public_key: str = ""  # hex raw Ed25519 key, key events only
    signature: str = ""  # hex, by the applier key over ``signed_bytes``

    @classmethod
    def key(cls, pcr: int, reset_count: int, public_key: bytes, measured_at: int) -> DriverEvent:
        return cls(pcr, "", "", "", measured_at, KEY, 0, reset_count, public_key.hex())

    def measured(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "kind": self.kind,
            "pcr": self.pcr,
            "seq": self.seq,
            "reset_count": self.reset_count,
        }
        if self.kind == KEY:
            return {**fields, "public_key": self.public_key}
        return {
            **fields,
            "target_path": self.target_path,
            "sha256": self.sha256,
            "driver_version": self.driver_version,
        }

    @cached_property
    def _measured_json(self) -> bytes:
        # Hashed for the digest and signed: an event is checked several times.
        return canonical_json(self.measured())

    def signed_bytes(self) -> bytes:
        return SIGNED_PREFIX + self._measured_json

    @cached_property
    def digest(self) -> bytes:
        """What the PCR is extended with."""
        return hashlib.sha256(self._measured_json).digest()

    def same_bundle(self, other: DriverEvent) -> bool:
        return self.kind == other.kind == DRIVER and (
            self.target_path,
            self.sha256,
            self.driver_version,
        ) == (other.target_path, other.sha256, other.driver_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "bank": BANK,
            "digest": self.digest.hex(),
            "event": self.measured(),
            "signature": self.signature,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> DriverEvent:
        r = Reader(doc, where, allowed=_ENTRY_FIELDS)
        schema = r.integer("schema")
        if schema < SCHEMA_VERSION:
            raise DriverLogError(
                f"{where}: written before gpuward signed its driver measurements; reboot "
                "the node so its upgraded applier starts a signed log"
            )
        if schema != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported schema version; upgrade gpuward")
        r.text("bank", choices=_BANKS)
        raw = r.raw("event")
        kind = raw.get("kind") if isinstance(raw, dict) else None
        if kind == KEY:
            e = Reader(raw, f"{where}.event", allowed=_KEY_EVENT_FIELDS)
            public_key = e.text("public_key", pattern=_KEY_HEX, max_len=64)
            bundle = ("", "", "")
        else:
            e = Reader(raw, f"{where}.event", allowed=_DRIVER_EVENT_FIELDS)
            e.text("kind", choices=_DRIVER_KIND)
            public_key = ""
            bundle = (
                e.text("target_path", max_len=512),
                e.text("sha256", pattern=_SHA256_HEX, max_len=64),
                e.text("driver_version", pattern=_VERSION, max_len=16),
            )
        event = cls(
            e.integer("pcr", maximum=MAX_PCR),
            *bundle,
            measured_at=r.integer("measured_at"),
            kind=KEY if kind == KEY else DRIVER,
            seq=e.integer("seq", maximum=MAX_EVENTS),
            reset_count=e.integer("reset_count", maximum=2**32 - 1),
            public_key=public_key,
            signature=r.text("signature", pattern=_SIGNATURE_HEX, max_len=128, default=""),
        )
        if r.text("digest", pattern=_SHA256_HEX, max_len=64) != event.digest.hex():
            raise DriverLogError(
                f"{where}: its digest is not the SHA-256 of the event it records: the log "
                "was edited"
            )
        return event


def extend(value: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend in the sha256 bank."""
    return hashlib.sha256(value + digest).digest()


def replay(events: tuple[DriverEvent, ...], pcr: int) -> bytes:
    """The value ``pcr`` holds after these events, from its reset value (zeros)."""
    value = ZERO
    for event in events:
        if event.pcr == pcr:
            value = extend(value, event.digest)
    return value


def encode(events: tuple[DriverEvent, ...]) -> bytes:
    return b"".join(json.dumps(e.to_dict(), sort_keys=True).encode() + b"\n" for e in events)


def parse(data: bytes) -> tuple[DriverEvent, ...]:
    """Every event of a log; raises ``DriverLogError`` or ``InvalidDocument``."""
    if len(data) > MAX_DRIVER_LOG_BYTES:
        raise DriverLogError(f"driver log: larger than {MAX_DRIVER_LOG_BYTES} bytes")
    lines = data.splitlines()
    if len(lines) > MAX_EVENTS:
        raise DriverLogError(f"driver log: more than {MAX_EVENTS} events")
    events = []
    for number, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise DriverLogError(f"driver log line {number}: not JSON ({exc})") from None
        events.append(DriverEvent.from_dict(doc, f"driver log line {number}"))
    return tuple(events)


@dataclass(frozen=True)
class ActiveDriver:
    """What a verified driver log proves: the active bundle, and whether to trust it."""

    driver: DriverEvent | None  # the last valid bundle event; None: none measured
    public_key: bytes | None  # the applier key of the boot's key event, if valid
    problems: tuple[str, ...]  # why the log does not prove the applier measured it all


@dataclass(frozen=True)
class VerifiedDriverLog:
    """A driver log checked for one boot: all that reusing the check needs.

    What it proves depends only on the exact bytes (``sha256``), the driver PCR and
    the quote's ``reset_count``; whether it explains a quote depends on the quoted
    value too, so ``proves`` compares ``replayed`` with each quote afresh.
    """

    sha256: bytes  # of the log's exact bytes
    reset_count: int  # the quote's, which every event must carry
    replayed: bytes  # the driver PCR's value after the log's events
    events: int
    active: ActiveDriver

    def proves(self, pcr: int, quoted: bytes) -> ActiveDriver:
        """The active bundle, if this log replays to ``quoted``; raises
        ``DriverLogError`` when it does not."""
        _require_replay(self.replayed, self.events, pcr, quoted)
        return self.active


def _require_replay(replayed: bytes, events: int, pcr: int, quoted: bytes) -> None:
    if replayed != quoted:
        raise DriverLogError(
            f"the driver log ({events} events) does not replay to the quoted "
            f"{BANK} PCR {pcr}: an event was removed, added or edited, or the PCR was "
            "extended outside the log"
        )


def verified_driver_log(
    data: bytes | None, pcr: int, quoted: bytes, reset_count: int, verify: Verify
) -> VerifiedDriverLog:
    """``data`` checked against the quoted driver PCR, event by event.

    Raises ``DriverLogError`` when the log does not replay to the quoted value
    (an event was removed, added or edited). A log that replays but holds an
    event the applier did not measure (unsigned, signed by another key, a
    sequence number repeated or skipped, from another boot than the quote's
    ``reset_count``) names the first such event in ``problems``; the active
    driver is then the last valid event before it.
    """
    events = parse(data) if data else ()
    ours = tuple(e for e in events if e.pcr == pcr)
    if len(ours) != len(events):
        raise DriverLogError(f"driver log: it measures PCRs other than the driver PCR {pcr}")
    replayed = replay(ours, pcr)
    _require_replay(replayed, len(ours), pcr, quoted)  # before any signature: cheap
    return VerifiedDriverLog(
        hashlib.sha256(data or b"").digest(),
        reset_count,
        replayed,
        len(ours),
        _active(ours, reset_count, verify),
    )


def _active(events: tuple[DriverEvent, ...], reset_count: int, verify: Verify) -> ActiveDriver:
    """What the events of a log that replays prove, checked one by one."""
    if not events:
        return ActiveDriver(None, None, ())
    if events[0].kind != KEY:
        return ActiveDriver(
            None,
            None,
            (
                "driver log: its first event is not the applier's key event, so no event is "
                "proven to be the applier's",
            ),
        )
    key = bytes.fromhex(events[0].public_key)
    driver = None
    for index, event in enumerate(events):
        problem = _problem(event, index, key, reset_count, verify)
        if problem is not None:
            return ActiveDriver(
                driver,
                None if index == 0 else key,
                (f"driver log event {index + 1} ({event.kind}): {problem}",),
            )
        if event.kind == DRIVER:
            driver = event
    return ActiveDriver(driver, key, ())


def _problem(
    event: DriverEvent, index: int, key: bytes, reset_count: int, verify: Verify
) -> str | None:
    """Why ``event``, the log's ``index``-th, is not the applier's; None when it is."""
    if not event.signature:
        return "unsigned: measured by something other than the applier"
    if not verify(key, event.signed_bytes(), bytes.fromhex(event.signature)):
        return "not signed by the applier key of this boot's key event"
    if event.reset_count != reset_count:
        return (
            f"measured in another boot (TPM reset count {event.reset_count}, the quote's "
            f"{reset_count}): a replayed event"
        )
    if index > 0 and event.kind == KEY:
        return "a second key event in one boot"
    if event.seq < index:
        return f"sequence number {event.seq} repeats an earlier event's: a replayed event"
    if event.seq > index:
        return f"sequence number {event.seq} where {index} was due: events are missing"
    return None
