"""Ed25519 signature checks on the server's hot path, through libsodium (pynacl).

The server checks one Ed25519 signature per node request and one per applier
event in every attested report's driver log. libsodium's verify takes under
half the time of OpenSSL's through ``cryptography`` on the machines measured
(``bench/load.py``), and it is as strict: non-canonical signatures and
small-order keys are refused. Signing stays with ``cryptography``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import nacl.exceptions
import nacl.signing

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``message``; False
    for a key or signature of the wrong length too."""
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


class VerifiedCache:
    """Ed25519 checks that remember what verified, for signatures seen again and again.

    Every attested report carries the node's whole driver log, whose events (and
    signatures) change only when the node reboots or switches driver: checking
    them afresh each time was a tenth of the server's work per report. Only
    successes are kept, keyed by SHA-256 of key, signature and message, least
    recently used first out: ``capacity`` entries of about 100 bytes, two
    per node, so the default holds a fleet of 100,000 nodes.
    """

    def __init__(self, capacity: int = 262_144) -> None:
        self._capacity = capacity
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def verify(self, public: bytes, message: bytes, signature: bytes) -> bool:
        if len(public) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            return False  # and the fixed lengths make the cache key unambiguous
        key = hashlib.sha256(public + signature + message).digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        if not verify(public, message, signature):
            return False
        self._verified[key] = None
        if len(self._verified) > self._capacity:
            self._verified.popitem(last=False)
        return True
