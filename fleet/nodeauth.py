"""How a node proves that a request is its own: the request-signing scheme.

At enrollment a node registers an Ed25519 public key (with a TPM, a session key
its attestation key vouches for; without one, a key the operator's enrollment
token vouches for, shown as "unattested"). Every later request carries four
headers, and the signature covers the method, the path with its query, the
node id, the timestamp, a fresh nonce and the SHA-256 of the body:

    gpuward-request-v1 \\n METHOD \\n /path?query \\n node-id \\n timestamp \\n nonce \\n sha256hex

The server refuses a request whose timestamp is more than ``MAX_SKEW_S`` away
from its clock, and one whose nonce it has already seen for that node, so a
captured request cannot be replayed or re-targeted at another path or node.
The cryptography lives with the agent and the server; this module holds only
what both sides must agree on, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import InvalidDocument
from fleet.inventory import NODE_ID
from fleet.rollout import POOL
from fleet.wire import Bytes, Document, Field, Opaque, Text, Wire

CONTEXT = b"gpuward-request-v1"
HEADER_NODE = "X-Gpuward-Node"
HEADER_TIMESTAMP = "X-Gpuward-Timestamp"
HEADER_NONCE = "X-Gpuward-Nonce"
HEADER_SIGNATURE = "X-Gpuward-Signature"
# TPM enrollment's first, unsigned request carries the operator's enrollment token here.
ENROLLMENT_TOKEN_HEADER = "X-Gpuward-Enrollment-Token"  # noqa: S105 (a header name)
MAX_SKEW_S = 300
NONCE = re.compile(r"[0-9a-f]{32}")
_TIMESTAMP = re.compile(r"\d{1,12}")
ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MAX_EVIDENCE_KEYS = 32


def signed_message(
    method: str, path: str, node_id: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """The exact bytes a node signs and the server verifies."""
    return b"\n".join(
        (
            CONTEXT,
            method.upper().encode(),
            path.encode(),
            node_id.encode(),
            str(timestamp).encode(),
            nonce.encode(),
            hashlib.sha256(body).hexdigest().encode(),
        )
    )


def _b64decode(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDocument(f"{what} is not base64") from None
    if len(raw) != length:
        raise InvalidDocument(f"{what} must be {length} bytes")
    return raw


@dataclass(frozen=True)
class RequestSignature:
    node_id: str
    timestamp: int
    nonce: str
    signature: bytes

    def headers(self) -> dict[str, str]:
        return {
            HEADER_NODE: self.node_id,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_NONCE: self.nonce,
            HEADER_SIGNATURE: base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RequestSignature:
        missing = [
            h
            for h in (HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
            if h not in headers
        ]
        if missing:
            raise InvalidDocument(f"unsigned request: missing header(s) {', '.join(missing)}")
        node_id, timestamp, nonce = (
            headers[HEADER_NODE],
            headers[HEADER_TIMESTAMP],
            headers[HEADER_NONCE],
        )
        if not NODE_ID.fullmatch(node_id):
            raise InvalidDocument(f"{HEADER_NODE} is not a valid node id")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise InvalidDocument(f"{HEADER_TIMESTAMP} must be seconds since the epoch")
        if not NONCE.fullmatch(nonce):
            raise InvalidDocument(f"{HEADER_NONCE} must be 32 lower-case hex digits")
        signature = _b64decode(headers[HEADER_SIGNATURE], ED25519_SIGNATURE_BYTES, HEADER_SIGNATURE)
        return cls(node_id, int(timestamp), nonce, signature)


@dataclass(frozen=True)
class KeyEnrollmentRequest(Wire):
    """``POST /v1/enroll``: who the node is, its request key, and why to believe it.

    ``evidence`` is opaque here: the server's enrollment verifier reads it (a
    TPM quote and certificates, or in the no-TPM mode an enrollment token).
    """

    node_id: str
    public_key: bytes  # raw Ed25519
    pool: str
    evidence: Mapping[str, Any]

    WIRE = Document(
        Field("node_id", Text(max_len=128, pattern=NODE_ID)),
        Field(
            "public_key",
            Bytes(
                ED25519_PUBLIC_KEY_BYTES, exact=ED25519_PUBLIC_KEY_BYTES, description="raw Ed25519"
            ),
        ),
        Field("pool", Text(max_len=64, pattern=POOL), default="default"),
        Field(
            "evidence",
            Opaque(
                MAX_EVIDENCE_KEYS,
                "for the verifier: a TPM attestation, or in the no-TPM mode "
                '{"type": "enrollment-token", "token": "..."}',
            ),
        ),
        name="EnrollmentRequest",  # the component name the API has always published
        where="enrollment",
    )
