"""The few TPM 2.0 structures the verifier reads, parsed with ``struct``.

The server never talks to a TPM, so it does not need tpm2-pytss: it unmarshals
TPM2B_PUBLIC (the EK and AK), TPMS_ATTEST (a quote) and TPMT_SIGNATURE itself,
reading only the fields it checks, and performs TPM2_MakeCredential in software.
Reading fields through tpm2-pytss objects costs 5 to 30 µs each, several times
the RSA check itself; ``tests/attest/test_tpm_structures.py`` cross-checks these
parsers against tpm2-pytss's ``unmarshal`` so speed costs no correctness.

All input is untrusted: every declared size is checked against the bytes that
remain, trailing bytes are refused, and any malformation is a ``TpmFormatError``.
References: TPM 2.0 Library, Part 2 (Structures) and Part 1 §24 (credential
protection, KDFa and KDFe).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from fleet.attestation import AttestationError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_AES = 0x0006
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_ECC = 0x0023
ALG_CFB = 0x0043
ECC_NIST_P256 = 0x0003
ECC_NIST_P384 = 0x0004

# TPMA_OBJECT bits.
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
ADMIN_WITH_POLICY = 1 << 7
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18

HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    ALG_SHA1: hashes.SHA1,
    ALG_SHA256: hashes.SHA256,
    ALG_SHA384: hashes.SHA384,
    ALG_SHA512: hashes.SHA512,
}
_HASHLIB = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
CURVES: dict[int, ec.EllipticCurve] = {ECC_NIST_P256: ec.SECP256R1(), ECC_NIST_P384: ec.SECP384R1()}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PUBLIC_HEAD = struct.Struct(">HHHI")  # size, type, nameAlg, objectAttributes
_ATTEST_HEAD = struct.Struct(">IHH")  # magic, type, qualifiedSigner size
_CLOCK_INFO = struct.Struct(">QIIBQI")  # clock, resets, restarts, safe, firmware, count
_SELECTION = struct.Struct(">HB")  # hash, sizeofSelect
_SIGNATURE_HEAD = struct.Struct(">HHH")  # sigAlg, hash, size


class TpmFormatError(AttestationError):
    """A TPM structure from the network is malformed."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"{what} is malformed: {problem}; the node sent a corrupt TPM structure")


class _Cursor:
    """Bounds-checked reads from one buffer."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise TpmFormatError(self.what, f"needs {size} bytes at offset {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.offset != len(self.data):
            raise TpmFormatError(self.what, f"{len(self.data) - self.offset} trailing bytes")


@dataclass(frozen=True)
class TpmPublic:
    """A TPMT_PUBLIC for an RSA or ECC key: the fields the verifier checks."""

    area: bytes  # the marshalled TPMT_PUBLIC: what the name hashes
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: tuple[int, int, int]  # algorithm, key bits, mode (0, 0 when NULL)
    scheme: tuple[int, int]  # scheme, hash (NULL, 0 when NULL)
    rsa_bits: int  # 0 for ECC
    rsa_exponent: int
    curve: int  # 0 for RSA
    unique: tuple[bytes, ...]  # RSA: (modulus,); ECC: (x, y)

    @property
    def name(self) -> bytes:
        """nameAlg || H_nameAlg(TPMT_PUBLIC): how the TPM names this key."""
        if self.name_alg not in _HASHLIB:
            raise TpmFormatError("public area", f"unsupported nameAlg 0x{self.name_alg:04x}")
        digest = hashlib.new(_HASHLIB[self.name_alg], self.area).digest()
        return _U16.pack(self.name_alg) + digest

    def has(self, attributes: int) -> bool:
        return self.attributes & attributes == attributes

    @cached_property
    def key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The public key as a ``cryptography`` object."""
        if self.type == ALG_RSA:
            exponent = self.rsa_exponent or 65537  # 0 means the default, 2^16 + 1
            modulus = int.from_bytes(self.unique[0], "big")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        curve = CURVES.get(self.curve)
        if curve is None:
            raise TpmFormatError("public area", f"unsupported ECC curve 0x{self.curve:04x}")
        x, y = (int.from_bytes(c, "big") for c in self.unique)
        try:
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except ValueError:
            raise TpmFormatError("public area", "the ECC point is not on the curve") from None


def parse_public(data: bytes, what: str = "public area") -> TpmPublic:
    """A TPM2B_PUBLIC of an RSA or ECC key."""
    c = _Cursor(data, what)
    size = c.u16()
    if size != len(data) - 2:
        raise TpmFormatError(what, f"declares {size} bytes but holds {len(data) - 2}")
    start = c.offset
    kind = c.u16()
    name_alg = c.u16()
    attributes = c.u32()
    auth_policy = c.tpm2b()
    sym_alg = c.u16()
    symmetric = (sym_alg, c.u16(), c.u16()) if sym_alg != ALG_NULL else (ALG_NULL, 0, 0)
    scheme_alg = c.u16()
    scheme = (scheme_alg, c.u16()) if scheme_alg != ALG_NULL else (ALG_NULL, 0)
    if kind == ALG_RSA:
        rsa_bits = c.u16()
        exponent = c.u32()
        modulus = c.tpm2b()
        if len(modulus) * 8 != rsa_bits:
            raise TpmFormatError(what, f"an RSA-{rsa_bits} modulus of {len(modulus)} bytes")
        fields: tuple[int, int, int, tuple[bytes, ...]] = (rsa_bits, exponent, 0, (modulus,))
    elif kind == ALG_ECC:
        curve = c.u16()
        if c.u16() != ALG_NULL:  # kdf scheme: keys from the EK templates have none
            c.u16()
        fields = (0, 0, curve, (c.tpm2b(), c.tpm2b()))
    else:
        raise TpmFormatError(what, f"key type 0x{kind:04x} is neither RSA nor ECC")
    c.end()
    return TpmPublic(
        data[start:], kind, name_alg, attributes, auth_policy, symmetric, scheme, *fields
    )


class QuoteInfo(NamedTuple):
    """The fields of a TPMS_ATTEST quote the verifier checks."""

    signer: bytes  # qualifiedSigner: the AK's qualified name
    extra_data: bytes  # the qualifying data
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: tuple[tuple[int, int], ...]  # (hash alg, PCR bit mask), in quote order
    pcr_digest: bytes


def parse_quote(data: bytes) -> QuoteInfo:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE. The hot path: no cursor object,
    one ``unpack_from`` per fixed run of fields, sizes summed and checked at the end."""
    try:
        magic, kind, size = _ATTEST_HEAD.unpack_from(data, 0)
        if magic != TPM_GENERATED_VALUE or kind != TPM_ST_ATTEST_QUOTE:
            raise TpmFormatError("quote", "not a TPM-generated quote (magic or type)")
        offset = 8 + size
        signer = data[8:offset]
        (size,) = _U16.unpack_from(data, offset)
        extra_data = data[offset + 2 : offset + 2 + size]
        offset += 2 + size
        clock, resets, restarts, safe, firmware, count = _CLOCK_INFO.unpack_from(data, offset)
        offset += _CLOCK_INFO.size
        if count > 16:
            raise TpmFormatError("quote", f"{count} PCR banks")
        selection = []
        for _ in range(count):
            alg, size = _SELECTION.unpack_from(data, offset)
            offset += 3
            if size > 4:
                raise TpmFormatError("quote", f"a PCR bitmap of {size} bytes")
            selection.append((alg, int.from_bytes(data[offset : offset + size], "little")))
            offset += size
        (size,) = _U16.unpack_from(data, offset)
        pcr_digest = data[offset + 2 : offset + 2 + size]
        offset += 2 + size
    except struct.error:
        raise TpmFormatError("quote", "truncated") from None
    # Slices past the end come back short instead of failing: the sum of the
    # declared sizes must land exactly on the end of the data.
    if offset != len(data):
        raise TpmFormatError("quote", f"declared sizes add up to {offset}, not {len(data)}")
    return QuoteInfo(
        signer,
        extra_data,
        clock,
        resets,
        restarts,
        bool(safe),
        firmware,
        tuple(selection),
        pcr_digest,
    )


def parse_rsassa_signature(data: bytes) -> tuple[int, bytes]:
    """A TPMT_SIGNATURE with an RSASSA signature: (hash alg, signature bytes)."""
    try:
        alg, hash_alg, size = _SIGNATURE_HEAD.unpack_from(data, 0)
    except struct.error:
        raise TpmFormatError("quote signature", "truncated") from None
    if alg != ALG_RSASSA:
        raise TpmFormatError("quote signature", f"algorithm 0x{alg:04x} is not RSASSA")
    if size != len(data) - _SIGNATURE_HEAD.size:
        raise TpmFormatError("quote signature", f"declares {size} bytes")
    return hash_alg, data[_SIGNATURE_HEAD.size :]


# TPM2_MakeCredential in software (Part 1 §24.4 and §24.5, Part 3 §12.6).


def make_credential(ek: TpmPublic, secret: bytes, name: bytes) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) that only the TPM holding ``ek``
    can open, and only to release ``secret`` for the loaded object named ``name``."""
    algorithm = HASHES.get(ek.name_alg)
    sym_alg, sym_bits, sym_mode = ek.symmetric
    if algorithm is None or (sym_alg, sym_mode) != (ALG_AES, ALG_CFB):
        raise AttestationError(
            "the EK is not a storage key with AES-CFB protection; only EKs from the "
            "TCG EK templates (RSA 2048, ECC P-256, ECC P-384) can be enrolled"
        )
    digest_size = algorithm().digest_size
    if ek.type == ALG_RSA:
        seed = os.urandom(digest_size)
        key = ek.key
        assert isinstance(key, rsa.RSAPublicKey)  # parse_public made it from an RSA area
        oaep = padding.OAEP(padding.MGF1(algorithm()), algorithm(), b"IDENTITY\x00")
        encrypted_seed = key.encrypt(seed, oaep)
    else:
        seed, encrypted_seed = _ecc_seed(ek, algorithm)
    sym_key = _kdfa(algorithm, seed, b"STORAGE", name, sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    encrypted_identity = encryptor.update(_U16.pack(len(secret)) + secret) + encryptor.finalize()
    hmac_key = _kdfa(algorithm, seed, b"INTEGRITY", b"", digest_size * 8)
    outer_hmac = hmac.digest(hmac_key, encrypted_identity + name, _HASHLIB[ek.name_alg])
    id_object = _U16.pack(len(outer_hmac)) + outer_hmac + encrypted_identity
    return _U16.pack(len(id_object)) + id_object, _U16.pack(len(encrypted_seed)) + encrypted_seed


def _ecc_seed(ek: TpmPublic, algorithm: type[hashes.HashAlgorithm]) -> tuple[bytes, bytes]:
    """A seed from one-pass ECDH with an ephemeral key (Part 1 §C.6.4), and the
    ephemeral point (TPMS_ECC_POINT) that lets the TPM derive it again."""
    peer = ek.key
    assert isinstance(peer, ec.EllipticCurvePublicKey)
    ephemeral = ec.generate_private_key(peer.curve)
    shared_x = ephemeral.exchange(ec.ECDH(), peer)
    size = (peer.curve.key_size + 7) // 8
    numbers = ephemeral.public_key().public_numbers()
    x, y = numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big")
    seed = ConcatKDFHash(
        algorithm(), algorithm().digest_size, otherinfo=b"IDENTITY\x00" + x + ek.unique[0]
    ).derive(shared_x)
    return seed, _U16.pack(size) + x + _U16.pack(size) + y


def _kdfa(
    algorithm: type[hashes.HashAlgorithm], key: bytes, label: bytes, context: bytes, bits: int
) -> bytes:
    """KDFa (SP 800-108 counter mode with HMAC): label, a zero byte, context, bits."""
    return KBKDFHMAC(
        algorithm=algorithm(),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)
