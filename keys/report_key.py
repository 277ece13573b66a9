"""The server's report key: Ed25519 signatures an auditor can check offline.

Compliance reports leave the operators' hands; whoever reads one must be able
to tell it came from this server unchanged, without gpuward and without the
network. Each report is signed as the exact bytes of the file (JSON, HTML or
PDF alike) and the signature travels beside it as ``FILE.sig``: 64 raw bytes,
the form ``openssl pkeyutl -verify -pubin -inkey report.pub -rawin -in FILE
-sigfile FILE.sig`` checks. The public key is a PEM file, ``report.pub``.

Like the server's online TUF keys, the private key lives unencrypted in the
repository's ``keys/`` folder (never served), readable only by its owner; it is
made the first time a server starts, by whichever replica gets there first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet.errors import GpuwardError
from keys.durable_files import atomic_write, fsync_dir, read_bounded

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_BYTES = 64
MAX_KEY_BYTES = 16 * 1024


def default_path(repo: Path) -> Path:
    return repo / "keys" / "report.key"


def public_path(private: Path) -> Path:
    return private.with_suffix(".pub")


def key_id(public: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key: short enough to compare by eye or over the phone."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class ReportSigner:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def load_or_create(path: Path) -> ReportSigner:
    """The key at ``path``; made (with ``report.pub`` beside it) if there is none yet."""
    if not path.exists():
        _create(path)
    data = read_bounded(path, MAX_KEY_BYTES, "report key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise GpuwardError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise GpuwardError(f"{path}: the report key must be Ed25519")
    signer = ReportSigner(private)
    public_file = public_path(path)
    pem = public_pem(signer.public)
    if not public_file.exists() or public_file.read_bytes() != pem:
        atomic_write(public_file, pem)
    return signer


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp_name = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        # A link, unlike a rename, never replaces: a replica that lost the race
        # keeps the key the winner made.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public(path: Path) -> Ed25519PublicKey:
    data = read_bounded(path, MAX_KEY_BYTES, "report public key")
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise GpuwardError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise GpuwardError(f"{path}: a report key is Ed25519")
    return public


def verify(data: bytes, signature: bytes, public: Ed25519PublicKey) -> None:
    """Raise unless ``signature`` is the key's signature over exactly ``data``."""
    if len(signature) != SIGNATURE_BYTES:
        raise GpuwardError(
            f"a report signature is {SIGNATURE_BYTES} bytes, this one {len(signature)}"
        )
    try:
        public.verify(signature, data)
    except InvalidSignature:
        raise GpuwardError(
            "the report does not match its signature under this key: it was changed, "
            "or signed by another server"
        ) from None
