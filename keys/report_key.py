"""The server's report key: signatures an auditor can check offline.

Compliance reports leave the operators' hands; whoever reads one must be able
to tell it came from this server unchanged, without gpuward and without the
network. Each report is signed as the exact bytes of the file (JSON, HTML or
PDF alike) and the signature travels beside it as ``FILE.sig``, the form
``openssl pkeyutl -verify -pubin -inkey report.pub -rawin -in FILE -sigfile
FILE.sig`` checks. The public key is a PEM file, ``report.pub``.

The key is Ed25519 (64 raw signature bytes), kept like the server's online TUF
keys: unencrypted in the repository's ``keys/`` folder (never served), readable
only by its owner, made the first time a server starts, by whichever replica
gets there first. Or it lives in a PKCS#11 token (``keys.hsm``) and never
leaves it: then it is ECDSA P-256 over SHA-256 (a DER signature), which
HSMSigner, SoftHSM2 and OpenSSL's default digest for that command all agree on.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet.errors import GpuwardError
from keys import hsm
from keys.durable_files import atomic_write, fsync_dir, read_bounded

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_BYTES = 64  # Ed25519's
MAX_ECDSA_SIGNATURE = 72  # P-256 in DER, at its longest
MAX_KEY_BYTES = 16 * 1024
# The algorithm a report names (fleet.compliance), by the kind of key that signs.
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"
TOKEN_KEY_LABEL = "gpuward-report"  # noqa: S105 (a key label)

ReportPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def default_path(repo: Path) -> Path:
    return repo / "keys" / "report.key"


def public_path(private: Path) -> Path:
    return private.with_suffix(".pub")


def key_id(public: ReportPublicKey) -> str:
    """SHA-256 of the raw public key (Ed25519's 32 bytes, or the uncompressed EC
    point): short enough to compare by eye or over the phone."""
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return hashlib.sha256(raw).hexdigest()


def algorithm(public: ReportPublicKey) -> str:
    return ED25519 if isinstance(public, Ed25519PublicKey) else ECDSA_P256


@dataclass(frozen=True)
class ReportSigner:
    public: ReportPublicKey
    sign: Callable[[bytes], bytes] = field(repr=False)  # the signature over exactly the bytes

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @property
    def algorithm(self) -> str:
        return algorithm(self.public)


def load_or_create(path: Path) -> ReportSigner:
    """The key at ``path``; made (with ``report.pub`` beside it) if there is none yet."""
    if not path.exists():
        if public_path(path).exists():  # never replace, silently, a key auditors hold
            raise GpuwardError(
                f"{public_path(path)} is there but not {path.name}: the report key is in a "
                "PKCS#11 token (give the server report_key_uri, or --pkcs11-token here), or "
                f"was lost (remove {public_path(path).name} to make a new one, and give "
                "auditors the new one)"
            )
        create_private_key(path)
    data = read_bounded(path, MAX_KEY_BYTES, "report key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise GpuwardError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise GpuwardError(f"{path}: the report key must be Ed25519")
    signer = ReportSigner(private.public_key(), private.sign)
    _publish(signer.public, public_path(path))
    return signer


def _publish(public: ReportPublicKey, public_file: Path) -> None:
    pem = public_pem(public)
    if not public_file.exists() or public_file.read_bytes() != pem:
        atomic_write(public_file, pem)


def create_in_token(token: str, pin: hsm.PinSource) -> str:
    """The signer URI of the report key in PKCS#11 ``token``, made there if it
    holds none yet (labelled ``gpuward-report``)."""
    uri = hsm.find_key(token, TOKEN_KEY_LABEL, pin)
    return uri if uri is not None else hsm.create_key(token, TOKEN_KEY_LABEL, pin)[0]


def load_from_token(uri: str, pin: hsm.PinSource, public_file: Path) -> ReportSigner:
    """The report key inside a PKCS#11 token, with its public half written to
    ``public_file`` for auditors."""
    name = f"report key {uri}"
    registered = hsm.read_public(name, uri, pin)
    public = serialization.load_pem_public_key(str(registered.keyval["public"]).encode())
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise GpuwardError(f"{name}: a report key in a token is ECDSA P-256")
    signer = hsm.open_signer(name, uri, registered, pin)
    # A PKCS#11 login is the token's, not the session's: one signature at a time.
    lock = threading.Lock()

    def sign(data: bytes) -> bytes:
        with lock:
            return bytes.fromhex(signer.sign(data).signature)

    _publish(public, public_file)
    return ReportSigner(public, sign)


def create_private_key(path: Path) -> None:
    """An Ed25519 private key (PEM, unencrypted, owner-only) made at ``path``, unless
    another replica made one there first: then its key stays."""
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


def public_pem(public: ReportPublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public(path: Path) -> ReportPublicKey:
    data = read_bounded(path, MAX_KEY_BYTES, "report public key")
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise GpuwardError(f"{path}: not a PEM public key ({exc})") from None
    if isinstance(public, Ed25519PublicKey) or (
        isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    ):
        return public
    raise GpuwardError(f"{path}: a report key is Ed25519 or ECDSA P-256")


def verify(data: bytes, signature: bytes, public: ReportPublicKey) -> None:
    """Raise unless ``signature`` is the key's signature over exactly ``data``."""
    try:
        if isinstance(public, Ed25519PublicKey):
            if len(signature) != SIGNATURE_BYTES:
                raise GpuwardError(
                    f"an Ed25519 report signature is {SIGNATURE_BYTES} bytes, "
                    f"this one {len(signature)}"
                )
            public.verify(signature, data)
        else:
            if len(signature) > MAX_ECDSA_SIGNATURE:
                raise GpuwardError(
                    f"an ECDSA P-256 report signature is at most {MAX_ECDSA_SIGNATURE} bytes, "
                    f"this one {len(signature)}"
                )
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise GpuwardError(
            "the report does not match its signature under this key: it was changed, "
            "or signed by another server"
        ) from None
