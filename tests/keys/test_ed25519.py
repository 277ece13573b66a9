"""The server's Ed25519 checks refuse every forgery the OpenSSL path refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import driver_key, ed25519

# The order of the Ed25519 group: S + L is the same scalar, written non-canonically.
L = 2**252 + 27742317777372353535851937790883648493
MESSAGE = b"applier event"


@pytest.fixture(name="signed")
def _signed() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    return driver_key.public_bytes(key), key.sign(MESSAGE)


def test_a_good_signature_verifies(signed: tuple[bytes, bytes]) -> None:
    public, signature = signed
    assert ed25519.verify(public, MESSAGE, signature)


def test_another_message_or_key_does_not(signed: tuple[bytes, bytes]) -> None:
    public, signature = signed
    other = driver_key.public_bytes(Ed25519PrivateKey.generate())
    assert not ed25519.verify(public, MESSAGE + b"!", signature)
    assert not ed25519.verify(other, MESSAGE, signature)


@pytest.mark.parametrize("bit", [0, 100, 511])
def test_a_flipped_bit_is_refused(signed: tuple[bytes, bytes], bit: int) -> None:
    public, signature = signed
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not ed25519.verify(public, MESSAGE, bytes(flipped))


def test_a_non_canonical_signature_is_refused(signed: tuple[bytes, bytes]) -> None:
    """S + L verifies in lax implementations: a second signature for one message."""
    public, signature = signed
    s = int.from_bytes(signature[32:], "little") + L
    assert s < 2**256
    assert not ed25519.verify(public, MESSAGE, signature[:32] + s.to_bytes(32, "little"))


def test_a_small_order_key_with_a_trivial_signature_is_refused() -> None:
    """The identity point as key and R, S = 0: "verifies" any message where the
    group check is missing."""
    identity = (1).to_bytes(32, "little")
    assert not ed25519.verify(identity, MESSAGE, identity + bytes(32))


@pytest.mark.parametrize(
    ("public", "signature"),
    [(b"", b""), (bytes(31), bytes(64)), (bytes(32), bytes(63)), (bytes(33), bytes(65))],
)
def test_wrong_lengths_are_refused_not_raised(public: bytes, signature: bytes) -> None:
    assert not ed25519.verify(public, MESSAGE, signature)
