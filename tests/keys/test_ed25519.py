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


@pytest.fixture(name="checks")
def _checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signatures actually checked (the real check still runs)."""
    checked: list[bytes] = []
    real = ed25519.verify

    def counted(public: bytes, message: bytes, signature: bytes) -> bool:
        checked.append(signature)
        return real(public, message, signature)

    monkeypatch.setattr(ed25519, "verify", counted)
    return checked


def test_the_cache_checks_a_signature_once(
    signed: tuple[bytes, bytes], checks: list[bytes]
) -> None:
    public, signature = signed
    cache = ed25519.VerifiedCache()
    assert all(cache.verify(public, MESSAGE, signature) for _ in range(3))
    assert checks == [signature]


def test_the_cache_remembers_no_failure_and_no_neighbour(
    signed: tuple[bytes, bytes], checks: list[bytes]
) -> None:
    public, signature = signed
    cache = ed25519.VerifiedCache()
    assert cache.verify(public, MESSAGE, signature)
    other = driver_key.public_bytes(Ed25519PrivateKey.generate())
    forged = bytes(64)
    for _ in range(2):
        assert not cache.verify(public, MESSAGE + b"!", signature)
        assert not cache.verify(other, MESSAGE, signature)
        assert not cache.verify(public, MESSAGE, forged)
    assert len(checks) == 7  # every failure was checked again


def test_the_cache_cannot_be_fooled_by_moving_bytes_between_fields(
    signed: tuple[bytes, bytes],
) -> None:
    """The same bytes split differently between key, signature and message hash
    alike; only the split that verified may hit."""
    public, signature = signed
    cache = ed25519.VerifiedCache()
    assert cache.verify(public, MESSAGE, signature)
    assert not cache.verify(public[:31], signature[-1:] + MESSAGE, public[31:] + signature[:-1])


def test_the_cache_forgets_the_least_recently_used(
    signed: tuple[bytes, bytes], checks: list[bytes]
) -> None:
    public, signature = signed
    others = [Ed25519PrivateKey.generate() for _ in range(2)]
    pairs = [(driver_key.public_bytes(k), k.sign(MESSAGE)) for k in others]
    cache = ed25519.VerifiedCache(capacity=2)
    assert cache.verify(public, MESSAGE, signature)
    for key, sig in pairs:
        assert cache.verify(key, MESSAGE, sig)
    assert cache.verify(public, MESSAGE, signature)  # evicted: checked again, still true
    assert checks == [signature, pairs[0][1], pairs[1][1], signature]
