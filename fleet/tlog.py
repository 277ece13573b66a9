"""What the transparency log holds and how its checkpoints are written.

Each entry is one decision of the fleet (a published bundle, a metadata
version, an assignment, a rollout step, a remediation action, a compliance
report) as a ``LogEntry``, hashed as its canonical JSON (``fleet.merkle``
makes the tree). A checkpoint is the C2SP ``tlog-checkpoint`` body (origin
line, tree size, base64 root hash) carried in a C2SP signed note: the body,
a blank line, and one line per signature, "— NAME BASE64(KEYHASH || SIG)".
So any tlog tool reads our checkpoints, and a witness can cosign them.

The signatures themselves are made and checked outside this package
(``keys.tlog_key``): here is only the text.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from fleet.errors import InvalidDocument
from fleet.merkle import HASH_BYTES, leaf_hash
from fleet.remediation import RemediationAudit
from fleet.rollout import Rollout
from fleet.schema import canonical_json
from fleet.wire import Bytes, Choice, Document, Field, Integer, ListOf, MapOf, Text, Wire

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# C2SP signed-note: a key name is non-empty, without whitespace or "+".
KEY_NAME = re.compile(r"[^\s+]{1,128}")
MAX_NOTE = 16 * 1024
MAX_SIGNATURES = 16
MAX_EXPORT_ENTRIES = 10_000_000
MAX_ENTRY_BYTES = 16 * 1024
MAX_SUBJECT = 512  # a target path's bound (fleet.rollout)
MAX_DETAIL = 1024
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space


class EntryKind(enum.StrEnum):
    BUNDLE = "bundle"  # a target published in the image repository
    METADATA = "metadata"  # a version of a role's metadata, signed or re-signed
    ASSIGNMENT = "assignment"  # a director assignment of a bundle to a node
    ROLLOUT = "rollout"  # a rollout's start, or a step of it
    REMEDIATION = "remediation"  # a remediation audit entry
    COMPLIANCE_REPORT = "compliance-report"  # a compliance report issued
    # A node showed a checkpoint, signed with the log's key, that this log does not
    # extend: someone showed it another tree (a split view).
    SPLIT_VIEW = "split-view"


@dataclass(frozen=True)
class LogEntry(Wire):
    """One entry of the transparency log: what was decided, about what, and the
    digest of the exact bytes decided on (a bundle, a metadata file, a report)."""

    kind: EntryKind
    at: int
    subject: str  # the target path, role, node, rollout or report it is about
    sha256: str = ""  # hex; empty where there are no bytes to name
    detail: dict[str, str] | None = None

    WIRE = Document(
        Field("kind", Choice(EntryKind)),
        Field("at", Integer(), description="epoch seconds"),
        Field("subject", Text(max_len=MAX_SUBJECT)),
        Field("sha256", Text(max_len=64), default="", omit_default=True),
        Field(
            "detail",
            MapOf(Text(max_len=64), Text(max_len=MAX_DETAIL), max_items=16),
            default=None,
            omit_default=True,
        ),
        where="log entry",
    )

    def __post_init__(self) -> None:
        if self.sha256 and not SHA256_HEX.fullmatch(self.sha256):
            raise InvalidDocument("log entry: sha256 must be 64 lowercase hex digits")

    @property
    def data(self) -> bytes:
        """The bytes the log hashes: the canonical JSON."""
        return canonical_json(self.to_dict())

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.data)

    @property
    def once_key(self) -> str:
        """What the entry says, without when: the same bundle or metadata file seen
        again on a later pass is the same decision, logged once."""
        if self.kind is EntryKind.BUNDLE:
            return bundle_key(self.subject, self.sha256)
        return f"{self.kind.value}|{self.subject}|{self.sha256}"


def bundle_key(target_path: str, sha256: str) -> str:
    """The ``once_key`` of a bundle's entry: how a node asks for its proof."""
    return f"{EntryKind.BUNDLE.value}|{target_path}|{sha256}"


def details(**values: str) -> dict[str, str]:
    """An entry's details, each cut to what the entry admits (a rollout's reason is
    free text): the log keeps what was decided, the store keeps the whole story."""
    return {key: value[:MAX_DETAIL] for key, value in values.items()}


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def rollout_entry(rollout: Rollout, at: int, event: str) -> LogEntry:
    """A rollout's start or step: the event, and the digest of the rollout after it."""
    return LogEntry(
        EntryKind.ROLLOUT,
        at,
        rollout.id,
        _digest(rollout.to_dict()),
        details(event=event, pool=rollout.pool, target=rollout.target, phase=rollout.phase.value),
    )


def assignment_entry(rollout: Rollout, node_id: str, target: str | None, at: int) -> LogEntry:
    """The director's assignment of ``target`` to a node (None: the assignment ends)."""
    return LogEntry(
        EntryKind.ASSIGNMENT,
        at,
        node_id,
        detail=details(target=target or "", rollout=rollout.id, pool=rollout.pool),
    )


def remediation_entry(audit: RemediationAudit) -> LogEntry:
    return LogEntry(
        EntryKind.REMEDIATION,
        audit.at,
        audit.node_id,
        _digest(audit.to_dict()),
        details(pool=audit.pool, event=audit.event.value, action=audit.action.value, by=audit.by),
    )


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: C2SP tlog-checkpoint's origin, size and root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise InvalidDocument("checkpoint: needs an origin, a size and a root hash line")
        if not re.fullmatch(r"0|[1-9][0-9]{0,18}", lines[1]):
            raise InvalidDocument("checkpoint: the tree size must be a decimal number")
        try:
            root = base64.b64decode(lines[2], validate=True)
        except (binascii.Error, ValueError):
            root = b""
        if len(root) != HASH_BYTES:
            raise InvalidDocument("checkpoint: the root hash must be 32 bytes of base64")
        return cls(lines[0], int(lines[1]), root)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note."""

    name: str
    key_hash: bytes  # 4 bytes that pick the key among those named ``name``
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_hash + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {blob}\n"


@dataclass(frozen=True)
class SignedNote:
    """A C2SP signed note: the text signed, and its signatures."""

    body: str
    signatures: tuple[NoteSignature, ...]

    def text(self) -> str:
        return self.body + "\n" + "".join(s.line() for s in self.signatures)

    @classmethod
    def parse(cls, text: str) -> SignedNote:
        if len(text) > MAX_NOTE:
            raise InvalidDocument(f"signed note: longer than {MAX_NOTE} characters")
        body, sep, block = text.rpartition("\n\n")
        if not sep or not block.endswith("\n"):
            raise InvalidDocument("signed note: no signature block after a blank line")
        signatures = []
        for line in block[:-1].split("\n"):
            name, _, blob = line.removeprefix(SIGNATURE_PREFIX).partition(" ")
            try:
                raw = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if not line.startswith(SIGNATURE_PREFIX) or not KEY_NAME.fullmatch(name):
                raise InvalidDocument(f"signed note: not a signature line: {line[:80]!r}")
            if len(raw) < 5:
                raise InvalidDocument(f"signed note: signature of {name} is too short")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        if len(signatures) > MAX_SIGNATURES:
            raise InvalidDocument(f"signed note: more than {MAX_SIGNATURES} signatures")
        return cls(body + "\n", tuple(signatures))


_HASH = Bytes(max_bytes=HASH_BYTES, exact=HASH_BYTES)
_HASHES = ListOf(_HASH, max_items=63)
_NOTE = Text(max_len=MAX_NOTE)


@dataclass(frozen=True)
class InclusionProof(Wire):
    """Leaf ``index``'s inclusion proof under a signed checkpoint of ``size`` leaves."""

    index: int
    size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note of the tree the proof is under
    entry: str = ""  # the entry's canonical JSON, when asked for by what it says

    WIRE = Document(
        Field("index", Integer()),
        Field("size", Integer()),
        Field("leaf_hash", _HASH),
        Field("hashes", _HASHES, description="RFC 9162 inclusion path, bottom up"),
        Field("checkpoint", _NOTE, description="C2SP signed note"),
        Field(
            "entry",
            Text(max_len=MAX_ENTRY_BYTES),
            default="",
            omit_default=True,
            description="the entry's canonical JSON, when looked up by bundle",
        ),
    )


@dataclass(frozen=True)
class ConsistencyProof(Wire):
    """The proof that the tree of ``old`` leaves is a prefix of the one of ``new``."""

    old: int
    new: int
    hashes: tuple[bytes, ...]

    WIRE = Document(
        Field("old", Integer()),
        Field("new", Integer()),
        Field("hashes", _HASHES, description="RFC 9162 consistency proof"),
    )


@dataclass(frozen=True)
class LogExport(Wire):
    """The whole log as a mirror carries it: every entry's exact bytes, in order, and
    the signed checkpoint of the tree they make, for ``gpuward log verify``."""

    checkpoint: str
    entries: tuple[str, ...]  # each the entry's canonical JSON

    WIRE = Document(
        Field("checkpoint", _NOTE, description="C2SP signed note"),
        Field("entries", ListOf(Text(max_len=MAX_ENTRY_BYTES), max_items=MAX_EXPORT_ENTRIES)),
        version=1,
        where="log export",
    )
