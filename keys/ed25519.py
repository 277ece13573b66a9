"""Ed25519 signature checks on the server's hot path, through libsodium (pynacl).

The server checks one Ed25519 signature per node request and one per applier
event in every attested report's driver log. libsodium's verify takes under
half the time of OpenSSL's through ``cryptography`` on the machines measured
(``bench/load.py``), and it is as strict: non-canonical signatures and
small-order keys are refused. Signing stays with ``cryptography``.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``message``; False
    for a key or signature of the wrong length too."""
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True
