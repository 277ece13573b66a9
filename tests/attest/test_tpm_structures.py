"""The server's struct parsers, cross-checked against tpm2-pytss's unmarshal on
real swtpm output, and fuzzed: malformed input is a TpmFormatError, nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE

from fleet.attestation import AttestationEvidence, PcrSelection
from node.attest.attestor import Attestor
from server.attestation.tpm import (
    TpmFormatError,
    parse_public,
    parse_quote,
    parse_rsassa_signature,
)
from tests.attest.conftest import start_swtpm

SELECTION = PcrSelection.parse("sha1:0-7+sha256:0-9,14,15+sha384:0,23")


@pytest.fixture(scope="module")
def samples(tpm_templates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[
    AttestationEvidence, bytes, bytes
]:  # fmt: skip
    """One quote over three banks, and the EK and AK public areas, from a real TPM."""
    with start_swtpm(tpm_templates["a"], tmp_path_factory.mktemp("structures")) as tpm:
        state = tmp_path_factory.mktemp("agent")
        with Attestor(tpm.config(SELECTION), state) as attestor:
            request = attestor.enrollment_request("n1")
            evidence = attestor.quote(b"\x01" * 32, b"\x02" * 32)
    return evidence, request.ek_public, request.ak_public


def test_quote_parser_agrees_with_tpm2_pytss(
    samples: tuple[AttestationEvidence, bytes, bytes],
) -> None:
    evidence, _, _ = samples
    mine = parse_quote(evidence.quote)
    theirs, _ = TPMS_ATTEST.unmarshal(evidence.quote)
    assert mine.signer == bytes(theirs.qualifiedSigner)
    assert mine.extra_data == bytes(theirs.extraData)
    assert mine.clock == theirs.clockInfo.clock
    assert mine.reset_count == theirs.clockInfo.resetCount
    assert mine.restart_count == theirs.clockInfo.restartCount
    assert mine.safe == bool(theirs.clockInfo.safe)
    assert mine.firmware_version == theirs.firmwareVersion
    quote = theirs.attested.quote
    assert mine.pcr_digest == bytes(quote.pcrDigest)
    assert mine.selection == tuple(
        (int(s.hash), int.from_bytes(bytes(s.pcrSelect)[: s.sizeofSelect], "little"))
        for s in quote.pcrSelect
    )
    assert len(mine.selection) == 3
    hash_alg, signature = parse_rsassa_signature(evidence.signature)
    sig, _ = TPMT_SIGNATURE.unmarshal(evidence.signature)
    assert (hash_alg, signature) == (sig.signature.rsassa.hash, bytes(sig.signature.rsassa.sig))


@pytest.mark.parametrize("which", ["ek", "ak"])
def test_public_parser_agrees_with_tpm2_pytss(
    samples: tuple[AttestationEvidence, bytes, bytes], which: str
) -> None:
    data = samples[1] if which == "ek" else samples[2]
    mine = parse_public(data)
    theirs, _ = TPM2B_PUBLIC.unmarshal(data)
    area = theirs.publicArea
    assert mine.name == bytes(theirs.get_name())
    assert (mine.type, mine.name_alg, mine.attributes) == (
        area.type,
        area.nameAlg,
        area.objectAttributes,
    )
    assert mine.auth_policy == bytes(area.authPolicy)
    assert mine.unique == (bytes(area.unique.rsa),)
    der = theirs.to_der()
    assert mine.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == der


def test_every_truncation_of_a_quote_is_refused(
    samples: tuple[AttestationEvidence, bytes, bytes],
) -> None:
    quote = samples[0].quote
    for length in range(len(quote)):
        with pytest.raises(TpmFormatError):
            parse_quote(quote[:length])
    with pytest.raises(TpmFormatError, match="add up"):
        parse_quote(quote + b"\x00")


def test_every_truncation_of_a_public_area_is_refused(
    samples: tuple[AttestationEvidence, bytes, bytes],
) -> None:
    ak = samples[2]
    for length in range(len(ak)):
        with pytest.raises(TpmFormatError):
            parse_public(ak[:length])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzzed_structures_fail_cleanly(data: bytes) -> None:
    for parser in (parse_quote, parse_public, parse_rsassa_signature):
        with contextlib.suppress(TpmFormatError):
            parser(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_quotes_fail_cleanly(
    samples: tuple[AttestationEvidence, bytes, bytes], data: st.DataObject
) -> None:
    """A real quote with random bytes overwritten: parsed, or refused cleanly."""
    quote = bytearray(samples[0].quote)
    for _ in range(data.draw(st.integers(1, 4))):
        quote[data.draw(st.integers(0, len(quote) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(TpmFormatError):
        parse_quote(bytes(quote))
