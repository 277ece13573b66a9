"""The transparency log's checkpoint key: C2SP signed-note signatures, Ed25519.

A checkpoint is signed by the server as it is served, so the key is an online
key, held like the report key (``keys.report_key``): unencrypted in the
repository's ``keys/`` folder, owner-only, made by the first replica to start.
Its public half is published as a C2SP verifier key (``NAME+HASH+BASE64``,
``tlog.vkey``): what a node pins and ``gpuward log verify`` checks with, and what
Go's ``golang.org/x/mod/sumdb/note`` reads as is.

The key name is the log's origin, so one line identifies both. The key hash is
C2SP's: the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet import merkle
from fleet.errors import GpuwardError, InvalidDocument
from fleet.tlog import KEY_NAME, Checkpoint, LogEntry, LogExport, NoteSignature, SignedNote
from keys.durable_files import atomic_write, read_bounded
from keys.report_key import MAX_KEY_BYTES, create_private_key

ED25519_ALGORITHM = b"\x01"  # C2SP signed-note's signature type for Ed25519


def default_path(repo: Path) -> Path:
    return repo / "keys" / "tlog.key"


def vkey_path(private: Path) -> Path:
    return private.with_suffix(".vkey")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_hash(name: str, public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALGORITHM + _raw(public)).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    """A verifier key: the name signatures carry, and the Ed25519 key they verify with."""

    name: str
    public: Ed25519PublicKey

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, self.public)

    def vkey(self) -> str:
        """The C2SP verifier key text."""
        blob = base64.b64encode(ED25519_ALGORITHM + _raw(self.public)).decode()
        return f"{self.name}+{self.key_hash.hex()}+{blob}"

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        name, _, rest = vkey.strip().partition("+")
        hash_hex, _, blob = rest.partition("+")
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not KEY_NAME.fullmatch(name) or len(raw) != 33 or raw[:1] != ED25519_ALGORITHM:
            raise GpuwardError(
                "not a C2SP Ed25519 verifier key (NAME+HASH+BASE64): give the log's "
                "tlog.vkey, as the server publishes it"
            )
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_hash.hex() != hash_hex:
            raise GpuwardError(f"verifier key {name}: its key hash does not match its key")
        return verifier

    def verify(self, text: str) -> Checkpoint:
        """The checkpoint in signed note ``text``, if this key signed it; else raise."""
        try:
            note = SignedNote.parse(text)
            checkpoint = Checkpoint.parse(note.body)
        except InvalidDocument as exc:
            raise GpuwardError(f"not a log checkpoint: {exc}") from None
        for sig in note.signatures:
            if sig.name == self.name and sig.key_hash == self.key_hash:
                try:
                    self.public.verify(sig.signature, note.body.encode())
                except InvalidSignature:
                    break
                if checkpoint.origin != self.name:
                    break
                return checkpoint
        raise GpuwardError(
            f"the checkpoint is not signed by the log key {self.name}: it was changed, or "
            "comes from another log (check the verifier key you gave)"
        )


@dataclass(frozen=True)
class NoteSigner:
    verifier: NoteVerifier
    private: Ed25519PrivateKey = field(repr=False)

    def sign(self, checkpoint: Checkpoint) -> str:
        """The checkpoint as a signed note."""
        body = checkpoint.body()
        sig = NoteSignature(
            self.verifier.name, self.verifier.key_hash, self.private.sign(body.encode())
        )
        return SignedNote(body, (sig,)).text()

    def checkpoint(self, size: int, root: bytes) -> str:
        return self.sign(Checkpoint(self.verifier.name, size, root))


def origin(public: Ed25519PublicKey) -> str:
    """The log's origin (and key name): unique to its key, so two servers' logs
    never pass for each other."""
    return f"gpuward.tlog/{hashlib.sha256(_raw(public)).hexdigest()[:16]}"


def load_or_create(path: Path) -> NoteSigner:
    """The checkpoint key at ``path``, made (with ``tlog.vkey`` beside it) if there is none."""
    if not path.exists():
        create_private_key(path)
    data = read_bounded(path, MAX_KEY_BYTES, "log checkpoint key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise GpuwardError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise GpuwardError(f"{path}: the log checkpoint key must be Ed25519")
    public = private.public_key()
    signer = NoteSigner(NoteVerifier(origin(public), public), private)
    vkey = (signer.verifier.vkey() + "\n").encode()
    target = vkey_path(path)
    if not target.exists() or target.read_bytes() != vkey:
        atomic_write(target, vkey)
    return signer


@dataclass(frozen=True)
class VerifiedTransparencyLog:
    """A log export that verified: its checkpoint and the tree rebuilt from its entries."""

    checkpoint: Checkpoint
    tree: merkle.Tree


def verify_export(export: LogExport, verifier: NoteVerifier) -> VerifiedTransparencyLog:
    """Rebuild the whole tree from the export's entries and check it is the one its
    checkpoint signs; raise ``GpuwardError`` naming what differs."""
    checkpoint = verifier.verify(export.checkpoint)
    if len(export.entries) != checkpoint.size:
        raise GpuwardError(
            f"the export has {len(export.entries)} entries, its checkpoint {checkpoint.size}: "
            "export it again"
        )
    tree = merkle.Tree()
    for index, doc in enumerate(export.entries):
        data = doc.encode()
        try:
            entry = LogEntry.from_dict(json.loads(data), f"log entry {index}")
        except (InvalidDocument, ValueError) as exc:
            raise GpuwardError(f"log entry {index} is not a log entry: {exc}") from None
        if entry.data != data:
            raise GpuwardError(f"log entry {index} is not in canonical JSON: it was changed")
        tree.append(merkle.leaf_hash(data))
    if tree.root() != checkpoint.root:
        raise GpuwardError(
            f"the {checkpoint.size} entries do not make the tree the checkpoint signs: "
            "an entry was changed, added, removed or reordered"
        )
    return VerifiedTransparencyLog(checkpoint, tree)


def check_consistent(log: VerifiedTransparencyLog, older: Checkpoint) -> None:
    """Raise unless ``older`` (a checkpoint of the same log, verified) is a prefix
    of the verified log: what a node or auditor saw before was not rewritten."""
    if older.origin != log.checkpoint.origin:
        raise GpuwardError(f"the checkpoint is of log {older.origin}, not {log.checkpoint.origin}")
    if older.size > log.checkpoint.size:
        raise GpuwardError(
            f"the older checkpoint has {older.size} entries, the log only "
            f"{log.checkpoint.size}: the log was truncated, or the export is stale"
        )
    try:
        merkle.verify_consistency(
            older.size,
            log.checkpoint.size,
            older.root,
            log.checkpoint.root,
            log.tree.consistency(older.size, log.checkpoint.size) if older.size else [],
        )
    except merkle.ProofError as exc:
        raise GpuwardError(str(exc)) from None
