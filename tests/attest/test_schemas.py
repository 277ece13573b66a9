"""fleet.attestation: strict parsing of what nodes send, and the report digest."""

from __future__ import annotations

import json

import pytest

from fleet.attestation import (
    AttestationEvidence,
    CredentialChallenge,
    PcrSelection,
    TpmEnrollmentRequest,
    report_digest,
)
from fleet.errors import InvalidDocument
from fleet.schema import canonical_json
from tests.attest.test_end_to_end import make_report


def _evidence(log: bytes | None = b"log") -> AttestationEvidence:
    return AttestationEvidence(
        nonce=b"n" * 32,
        quote=b"q",
        signature=b"s",
        selection=PcrSelection.parse("sha256:0-1"),
        pcrs={"sha256": {0: bytes(32), 1: b"\x01" * 32}},
        event_log=log,
    )


def test_selection_syntax() -> None:
    selection = PcrSelection.parse("sha256:0-9,14+sha1:7")
    assert selection.banks == (("sha1", (7,)), ("sha256", (*range(10), 14)))
    assert PcrSelection.parse(selection.text()) == selection
    assert selection.covers(PcrSelection.parse("sha256:3,14"))
    assert not selection.covers(PcrSelection.parse("sha256:15"))
    for bad in ("sha256", "sha256:32", "md5:1", "sha256:1,,2"):
        with pytest.raises(InvalidDocument):
            PcrSelection.parse(bad)


def test_report_digest_is_canonical() -> None:
    report = make_report()
    doc = report.to_dict()
    shuffled = json.loads(json.dumps(dict(reversed(list(doc.items())))))
    assert canonical_json(shuffled) == canonical_json(doc)
    assert b" " not in canonical_json({"a": [1, 2], "b": {"c": "d"}})
    assert report_digest(report) != report_digest(make_report(reason="other"))


def test_evidence_round_trip_and_log_digest() -> None:
    evidence = _evidence()
    again = AttestationEvidence.from_dict(json.loads(json.dumps(evidence.to_dict())))
    assert again == evidence
    assert again.event_log_sha256 is not None
    assert again.without_log().event_log is None
    assert again.without_log().event_log_sha256 == again.event_log_sha256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown field"),
        ({"nonce": "not base64!"}, "base64"),
        ({"nonce": "AAAA"}, "must be 32 bytes"),
        ({"event_log_sha256": "ab" * 32}, "not the log's SHA-256"),
        ({"pcrs": {"sha256": {"0": "00" * 32}}}, "exactly the selected PCRs"),
        ({"pcrs": {"sha256": {"0": "00" * 31, "1": "00" * 32}}}, "invalid value"),
        ({"selection": {"sha256": [1, 0]}}, "increasing order"),
        ({"schema": 2}, "unsupported schema"),
    ],
)
def test_malformed_evidence_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDocument, match=message):
        AttestationEvidence.from_dict({**_evidence().to_dict(), **change})


def test_enrollment_messages_round_trip() -> None:
    request = TpmEnrollmentRequest("n1", b"cert", b"ek", b"ak", b"\x00\x0b" + bytes(32))
    assert TpmEnrollmentRequest.from_dict(request.to_dict()) == request
    with pytest.raises(InvalidDocument, match="node_id"):
        TpmEnrollmentRequest.from_dict({**request.to_dict(), "node_id": "../etc"})
    challenge = CredentialChallenge(b"c" * 32, b"blob", b"secret", 5)
    assert CredentialChallenge.from_dict(challenge.to_dict()) == challenge
