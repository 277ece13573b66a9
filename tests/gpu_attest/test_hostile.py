"""Hostile evidence: reports, certificate files and RIMs built to break the reader.

Whatever a node sends, the verifier answers with a verdict or a GpuEvidenceError
naming what is wrong, never with another exception, and never with a pass.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from fleet.gpu_attestation import CERTIFICATE_CHAIN, REPORT, GpuOutcome
from server.gpu_attestation import spdm
from server.gpu_attestation.certs import verify_chain
from server.gpu_attestation.errors import EvidenceRefused, GpuEvidenceError
from server.gpu_attestation.rim import RimFile, verify_rim
from server.gpu_attestation.verifier import (
    GpuEvidenceVerifier,
    GpuTrust,
    RimSources,
    verify_evidence,
)
from tests.gpu_attest.evidence import (
    RECORD_START,
    REQUEST_LENGTH,
    SAMPLE_TIME,
    SAMPLE_VBIOS_RIM,
    SWID,
    LabPki,
    Sample,
    blocks,
    make_rim,
    measurements,
    root,
)

NOW = datetime.now(UTC)


def refused(data: bytes, *needles: str) -> str:
    with pytest.raises(GpuEvidenceError) as caught:
        spdm.parse_report(data)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)
    return str(caught.value)


def test_every_truncation_of_the_report_is_refused(sample: Sample) -> None:
    report = sample.report_bytes()
    assert spdm.parse_report(report).driver_version == "550.90.07"
    for length in range(len(report)):
        message = refused(report[:length])
        assert "truncated" in message or "too short" in message, (length, message)


def test_bytes_after_the_signature_are_refused(sample: Sample) -> None:
    refused(sample.report_bytes() + b"\0", "1 bytes after its end")


@pytest.mark.parametrize(
    ("where", "value", "needle"),
    [
        (RECORD_START - 3, b"\xff\xff\xff", "measurement record at offset 8 needs 16777215 bytes"),
        (RECORD_START + 2, b"\xff\xff", "block 1 at offset"),
        (RECORD_START + 5, b"\xff\xff", "block 1 value at offset 3"),
        (RECORD_START - 4, b"\x00", "no measurement blocks"),
        (RECORD_START - 4, b"\x41", "truncated"),
        (RECORD_START + 1, b"\x02", "not in the DMTF format"),
        (RECORD_START, b"\x00", "reserved index 0"),
        (RECORD_START + 55, b"\x01", "index 1 appears twice"),
        (0, b"\x12", "SPDM version 0x12"),
        (1, b"\x60", "code 0x60, not 0xe0"),
        (2, b"\x00", "did not ask for a signature"),
        (3, b"\x05", "asked for block 5"),
        (REQUEST_LENGTH + 1, b"\x61", "code 0x61, not 0x60"),
    ],
)
def test_lengths_and_codes_that_lie_are_refused(
    sample: Sample, where: int, value: bytes, needle: str
) -> None:
    report = bytearray(sample.report_bytes())
    report[where : where + len(value)] = value
    refused(bytes(report), needle)


def test_an_opaque_length_past_the_end_is_refused(sample: Sample) -> None:
    report = bytearray(sample.report_bytes())
    last = max(o + n for o, n in blocks(bytes(report)).values())
    opaque_length = last + 32
    report[opaque_length : opaque_length + 2] = struct.pack("<H", 0xFFFF)
    refused(bytes(report), "opaque data at offset", "needs 65535 bytes")


def test_a_repeated_opaque_field_is_refused(sample: Sample) -> None:
    report = bytearray(sample.report_bytes())
    start = max(o + n for o, n in blocks(bytes(report)).values()) + 34  # past nonce and length
    first_kind = report[start : start + 2]
    second = start + 4 + struct.unpack_from("<H", report, start + 2)[0]
    report[second : second + 2] = first_kind
    refused(bytes(report), "appears twice")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=6000))
def test_garbage_is_refused_with_a_message(data: bytes) -> None:
    try:
        spdm.parse_report(data)
    except GpuEvidenceError as exc:
        assert str(exc)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_a_mutated_report_never_breaks_the_verifier(sample: Sample, data: st.DataObject) -> None:
    """Bytes of the genuine report overwritten: a verdict, and never a pass."""
    report = bytearray(sample.report_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(report) - 1))
        report[at] = data.draw(st.integers(0, 255))
    verdict = verify_evidence(
        bytes(report), sample.chain.read_bytes(), RimSources(), nonce=None, at=SAMPLE_TIME,
        trust=GpuTrust.nvidia(), waive_revocation=True,
    )  # fmt: skip
    assert verdict.verdict is not GpuOutcome.PASS


def test_an_unreadable_report_is_a_failed_check(sample: Sample) -> None:
    verdict = verify_evidence(
        b"\x11\xe0", sample.chain.read_bytes(), RimSources(), nonce=None, at=NOW,
        trust=GpuTrust.nvidia(),
    )  # fmt: skip
    assert verdict.verdict is GpuOutcome.FAIL
    assert [c.name for c in verdict.checks] == [REPORT]


def test_hex_text_reports_are_read_and_bad_hex_refused(sample: Sample) -> None:
    text = sample.report.read_bytes()
    assert spdm.read_report(text) == sample.report_bytes()
    with pytest.raises(GpuEvidenceError, match="odd length"):
        spdm.read_report(b"abc")


@pytest.mark.parametrize(
    ("chain", "needle"),
    [
        (b"not a certificate", "not a PEM certificate chain"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a PEM"),
    ],
)
def test_unreadable_chains_are_a_failed_check(sample: Sample, chain: bytes, needle: str) -> None:
    verdict = verify_evidence(
        sample.report_bytes(), chain, RimSources(), nonce=None, at=SAMPLE_TIME,
        trust=GpuTrust.nvidia(),
    )  # fmt: skip
    check = next(c for c in verdict.checks if c.name == CERTIFICATE_CHAIN)
    assert check.outcome is GpuOutcome.FAIL and needle in check.detail


def test_a_chain_of_too_many_certificates_is_refused(sample: Sample) -> None:
    chain = sample.chain.read_bytes() * 2
    verdict = verify_evidence(
        sample.report_bytes(), chain, RimSources(), nonce=None, at=SAMPLE_TIME,
        trust=GpuTrust.nvidia(),
    )  # fmt: skip
    check = next(c for c in verdict.checks if c.name == CERTIFICATE_CHAIN)
    assert check.outcome is GpuOutcome.FAIL and "more than 8 certificates" in check.detail


def test_a_chain_ending_at_a_look_alike_root_is_refused(pki: LabPki) -> None:
    """A root with NVIDIA's name but another key, carried at the end of the chain."""
    impostor = root("NVIDIA Device Identity CA")
    chain = [pki.gpu.cert, *(a.cert for a in pki.device_cas[:-1]), impostor.cert]
    with pytest.raises(EvidenceRefused, match="not at the pinned root"):
        verify_chain(chain, pki.device_root.cert, NOW, "chain")


def test_a_leaf_issued_by_a_non_ca_is_refused(pki: LabPki) -> None:
    """A GPU's leaf used to issue a certificate of its own."""
    forged = pki.gpu.issue("Test GH100 FMC LF (forged)", ca=False)
    chain = [forged.cert, pki.gpu.cert, *(a.cert for a in pki.device_cas)]
    with pytest.raises(EvidenceRefused, match="is not a CA but issues a certificate"):
        verify_chain(chain, pki.device_root.cert, NOW, "chain")


def _signed_rim(sample: Sample, pki: LabPki, name: str, value: str) -> bytes:
    """The lab VBIOS RIM with its first Resource's ``name`` set to ``value``, signed."""

    def edit(tree: etree._Element) -> None:
        first = tree.find(f"{SWID}Payload/{SWID}Resource")
        assert first is not None
        first.set(name, value)

    template = (sample.folder / SAMPLE_VBIOS_RIM).read_bytes()
    values = measurements(sample.report_bytes())
    return make_rim(template, version="96.00.9F.00.01", values=values, pki=pki, edit=edit)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ("index=-1", "index is '-1'"),
        ("index=99999", "index is '99999'"),
        ("active=maybe", "active='maybe'"),
        ("size=9999", "size is '9999'"),
        ("index=1", "lists measurement index 1 twice"),
    ],
)
def test_signed_rims_with_impossible_payloads_are_refused(
    sample: Sample, pki: LabPki, edit: str, needle: str
) -> None:
    rim = RimFile("hostile.swidtag", _signed_rim(sample, pki, *edit.split("=", 1)))
    with pytest.raises(EvidenceRefused, match=needle):
        verify_rim(rim, pki.rim_root.cert, NOW)


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        (b'<!DOCTYPE x [<!ENTITY e "e">]><SoftwareIdentity/>', "document type declaration"),
        (
            b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
            "document type declaration",
        ),
        (b"<SoftwareIdentity>", "not XML"),
        (b"<html/>", "not a SWID tag"),
        (b" " * (1024 * 1024 + 1), "larger than"),
    ],
)
def test_hostile_xml_is_refused_before_anything_is_read(
    pki: LabPki, document: bytes, needle: str
) -> None:
    with pytest.raises(GpuEvidenceError, match=needle):
        verify_rim(RimFile("hostile.swidtag", document), pki.rim_root.cert, NOW)


def test_a_payload_moved_outside_the_signature_is_never_read(
    sample: Sample, pki: LabPki, lab_rims: tuple[bytes, bytes]
) -> None:
    """Signature wrapping: the signed RIM with a second, unsigned Payload put first."""
    tree = etree.fromstring(lab_rims[1])
    payload = tree.find(f"{SWID}Payload")
    assert payload is not None
    rogue = etree.fromstring(etree.tostring(payload))
    tree.insert(0, rogue)
    with pytest.raises(EvidenceRefused, match="does not verify"):
        verify_rim(RimFile("wrapped.swidtag", etree.tostring(tree)), pki.rim_root.cert, NOW)


def test_a_lab_rim_is_refused_under_nvidias_rim_root(lab_rims: tuple[bytes, bytes]) -> None:
    with pytest.raises(EvidenceRefused, match="not at the pinned root"):
        verify_rim(RimFile("lab.swidtag", lab_rims[1]), GpuTrust.nvidia().rim_root, NOW)


def test_a_server_refuses_roots_and_rim_folders_it_cannot_use(tmp_path: Path) -> None:
    garbage = tmp_path / "root.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(GpuEvidenceError, match=r"root\.pem is not a PEM certificate chain"):
        GpuEvidenceVerifier.load(None, garbage, None, waive_revocation=False)
    with pytest.raises(GpuEvidenceError, match="is not a folder of RIMs"):
        GpuEvidenceVerifier.load(tmp_path / "none", None, None, waive_revocation=False)
    (tmp_path / "big.swidtag").write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(GpuEvidenceError, match=r"big\.swidtag is larger than"):
        GpuEvidenceVerifier.load(tmp_path, None, None, waive_revocation=False)
