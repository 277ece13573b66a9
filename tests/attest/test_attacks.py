"""Every defence of the verifier, attacked with real quotes from swtpm.

Each test starts from evidence that verifies (the first assertion of the
``attested`` fixture's users is that the honest path passes where it matters),
changes one thing an attacker controls, and checks the verifier refuses it with
the error that names the broken check.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from asyncio import run
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fleet.attestation import (
    AttestationError,
    AttestationEvidence,
    AttestedReport,
    CredentialAnswer,
    PcrSelection,
    report_digest,
)
from fleet.eventlog import EV_NO_ACTION, EventLogError, parse
from node.attest.attestor import Attestor
from server.attestation.challenges import DEFAULT_TTL_S, ChallengeError, Challenges
from server.attestation.enrollment import (
    EkTrust,
    EnrolledTpm,
    EnrollmentError,
    TpmEnrollmentVerifier,
)
from server.attestation.verifier import REPORT, QuoteError, QuoteVerifier
from server.report_attestation import ReportAttestation
from server.store import EnrolledNode, Store
from tests.attest.conftest import LOG_DIR, Clock, Tpm, enroll, extend_log, self_signed_ca
from tests.attest.test_end_to_end import make_report
from tests.store.test_store import run as run_store

LOG = LOG_DIR / "rhel95-secureboot.bin"


@pytest.fixture
def agent(tpm: Tpm, state_dir: Path) -> Iterator[Attestor]:
    extend_log(tpm, LOG)
    with Attestor(tpm.config(event_log=LOG), state_dir) as attestor:
        yield attestor


@pytest.fixture
def node(agent: Attestor, enrollment: TpmEnrollmentVerifier) -> EnrolledTpm:
    return enroll(agent, enrollment)


@pytest.fixture
def attest(agent: Attestor, challenges: Challenges) -> Callable[[], AttestedReport]:
    return lambda: agent.attest_report(make_report(), run(challenges.issue("n1", "report")))


def test_honest_report_passes(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    verdict = run(verifier.verify_report(node, attest()))
    assert verdict.passed
    assert verdict.log is not None and 7 in verdict.log.verified["sha256"]


def test_replayed_quote_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    attested = attest()
    run(verifier.verify_report(node, attested))
    with pytest.raises(ChallengeError, match="already used"):
        run(verifier.verify_report(node, attested))


def test_nonce_never_issued_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    attested = attest()
    forged = dataclasses.replace(attested.evidence, nonce=bytes(32))
    with pytest.raises(ChallengeError, match="unknown"):
        run(verifier.verify_report(node, dataclasses.replace(attested, evidence=forged)))


def test_quote_for_another_nonce_is_refused(
    node: EnrolledTpm,
    attest: Callable[[], AttestedReport],
    verifier: QuoteVerifier,
    challenges: Challenges,
) -> None:
    """A live challenge of this node, presented with a quote made for another one."""
    attested = attest()
    other = run(challenges.issue("n1", "report"))
    swapped = dataclasses.replace(attested.evidence, nonce=other.nonce)
    with pytest.raises(QuoteError, match="qualifying data"):
        run(verifier.verify_report(node, dataclasses.replace(attested, evidence=swapped)))


def test_another_nodes_challenge_is_refused(
    node: EnrolledTpm,
    agent: Attestor,
    verifier: QuoteVerifier,
    challenges: Challenges,
) -> None:
    attested = agent.attest_report(make_report(), run(challenges.issue("n2", "report")))
    with pytest.raises(ChallengeError, match="issued to n2"):
        run(verifier.verify_report(node, attested))


def test_report_changed_after_quoting_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    attested = attest()
    changed = dataclasses.replace(attested.report, reason="all GPUs healthy, honest")
    assert report_digest(changed) != report_digest(attested.report)
    with pytest.raises(QuoteError, match="another report"):
        run(verifier.verify_report(node, dataclasses.replace(attested, report=changed)))


def test_expired_challenge_is_refused(
    node: EnrolledTpm,
    attest: Callable[[], AttestedReport],
    verifier: QuoteVerifier,
    clock: Clock,
) -> None:
    attested = attest()
    clock.now += DEFAULT_TTL_S + 1
    with pytest.raises(ChallengeError, match="expired"):
        run(verifier.verify_report(node, attested))


def test_forged_pcr_value_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    attested = attest()
    pcrs = {bank: dict(values) for bank, values in attested.evidence.pcrs.items()}
    pcrs["sha256"][7] = hashlib.sha256(b"a Secure Boot state I would like to have").digest()
    forged = dataclasses.replace(attested.evidence, pcrs=pcrs)
    with pytest.raises(QuoteError, match="PCR values are not the ones the TPM quoted"):
        run(verifier.verify_report(node, dataclasses.replace(attested, evidence=forged)))


def test_quote_missing_required_pcrs_is_refused(
    node: EnrolledTpm, agent: Attestor, challenges: Challenges
) -> None:
    strict = QuoteVerifier(challenges, PcrSelection.parse("sha256:0-9,14,15"))
    attested = agent.attest_report(make_report(), run(challenges.issue("n1", "report")))
    with pytest.raises(QuoteError, match="not all of the required"):
        run(strict.verify_report(node, attested))


def test_quote_signed_by_another_ak_is_refused(
    node: EnrolledTpm,
    start_tpm: Callable[..., Tpm],
    tmp_path: Path,
    challenges: Challenges,
    verifier: QuoteVerifier,
) -> None:
    other_tpm = start_tpm("b")
    extend_log(other_tpm, LOG)  # same PCRs, so only the key differs
    with Attestor(other_tpm.config(event_log=LOG), tmp_path / "other") as other:
        attested = other.attest_report(make_report(), run(challenges.issue("n1", "report")))
    with pytest.raises(QuoteError, match="signature does not verify"):
        run(verifier.verify_report(node, attested))


def _with_log(attested: AttestedReport, log: bytes) -> AttestedReport:
    """The attacker's log: its digest is not signed, so they recompute it too."""
    evidence = dataclasses.replace(attested.evidence, event_log=log, event_log_sha256=None)
    return dataclasses.replace(attested, evidence=evidence)


def test_event_log_with_one_digest_changed_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    data = bytearray(LOG.read_bytes())
    shim = next(e for e in parse(data).events if e.event_type == 0x80000003)
    at = data.index(shim.digests["sha256"], shim.offset)
    data[at] ^= 0x01
    with pytest.raises(QuoteError, match=r"does not give the quoted PCRs sha256:4"):
        run(verifier.verify_report(node, _with_log(attest(), bytes(data))))


def test_event_log_with_one_event_removed_is_refused(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    data = LOG.read_bytes()
    events = parse(data).events
    victim = next(
        i for i, e in enumerate(events) if e.pcr == 7 and e.event_type != EV_NO_ACTION and i
    )
    cut = data[: events[victim].offset] + data[events[victim + 1].offset :]
    with pytest.raises(QuoteError, match=r"sha256:7"):
        run(verifier.verify_report(node, _with_log(attest(), cut)))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated mid-event
        lambda data: data[:7],  # truncated header
        lambda data: bytes(range(256)) * 40,  # garbage
        lambda data: b"",  # empty
    ],
    ids=["truncated", "truncated-header", "garbage", "empty"],
)
def test_malformed_event_log_is_a_clear_error(
    damage: Callable[[bytes], bytes],
    node: EnrolledTpm,
    attest: Callable[[], AttestedReport],
    verifier: QuoteVerifier,
) -> None:
    with pytest.raises(EventLogError, match="event log rejected at byte"):
        run(verifier.verify_report(node, _with_log(attest(), damage(LOG.read_bytes()))))


def test_log_named_by_digest_must_be_that_log(
    node: EnrolledTpm, attest: Callable[[], AttestedReport], verifier: QuoteVerifier
) -> None:
    attested = attest()
    by_digest = dataclasses.replace(attested, evidence=attested.evidence.without_log())
    other_log = (LOG_DIR / "swtpm-sanity-secureboot.bin").read_bytes()
    with pytest.raises(QuoteError, match="not the one the evidence names"):
        run(verifier.verify_report(node, by_digest, known_log=other_log))


# Enrollment.


def test_ak_of_another_tpm_cannot_be_enrolled(
    agent: Attestor,
    start_tpm: Callable[..., Tpm],
    tmp_path: Path,
    enrollment: TpmEnrollmentVerifier,
) -> None:
    """A genuine EK certificate, presented with an AK from another TPM: the
    credential is for the genuine TPM, which does not hold that AK; the other TPM
    cannot open it; and a guessed secret is refused."""
    other_tpm = start_tpm("b")
    with Attestor(other_tpm.config(), tmp_path / "other") as other:
        genuine = agent.enrollment_request("n1")
        foreign = other.enrollment_request("n1")
        mixed = dataclasses.replace(genuine, ak_public=foreign.ak_public, ak_name=foreign.ak_name)
        challenge = run(enrollment.begin(mixed))
        with pytest.raises(AttestationError, match="credential activation failed"):
            other.activate("n1", challenge)
        with pytest.raises(AttestationError, match="credential activation failed"):
            agent.activate("n1", challenge)
    with pytest.raises(EnrollmentError, match="not activated by the TPM"):
        run(enrollment.finish(CredentialAnswer("n1", challenge.challenge, bytes(32))))


def test_wrong_secret_is_refused_and_the_challenge_is_spent(
    agent: Attestor, enrollment: TpmEnrollmentVerifier
) -> None:
    challenge = run(enrollment.begin(agent.enrollment_request("n1")))
    answer = agent.activate("n1", challenge)
    wrong = dataclasses.replace(answer, secret=bytes(len(answer.secret)))
    with pytest.raises(EnrollmentError, match="not activated"):
        run(enrollment.finish(wrong))
    with pytest.raises(ChallengeError, match="already used"):
        run(enrollment.finish(answer))


def test_expired_enrollment_challenge_is_refused(
    agent: Attestor, enrollment: TpmEnrollmentVerifier, clock: Clock
) -> None:
    challenge = run(enrollment.begin(agent.enrollment_request("n1")))
    answer = agent.activate("n1", challenge)
    clock.now += DEFAULT_TTL_S + 1
    with pytest.raises(ChallengeError, match="expired"):
        run(enrollment.finish(answer))


def _rogue_ca(ek_cert: x509.Certificate) -> tuple[x509.Certificate, x509.Certificate]:
    """A CA nobody allowed, and a certificate from it for the same EK key."""
    key, ca = self_signed_ca("swtpm-localca")
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(ek_cert.subject)
        .issuer_name(ca.subject)  # the same issuer name as swtpm's CA: only the key differs
        .public_key(ek_cert.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return ca, leaf


def test_ek_certificate_from_an_unknown_ca_is_refused(
    agent: Attestor, enrollment: TpmEnrollmentVerifier, trust: EkTrust
) -> None:
    request = agent.enrollment_request("n1")
    ca, leaf = _rogue_ca(x509.load_der_x509_certificate(request.ek_certificate))
    forged = dataclasses.replace(
        request, ek_certificate=leaf.public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(EnrollmentError, match="does not lead to an allowed CA"):
        run(enrollment.begin(forged))
    # The same certificate passes once its CA is allowed: the refusal was the CA's.
    allowing = EkTrust([*trust.roots, *trust.intermediates, ca])
    assert allowing.verify(leaf, datetime.datetime.now(datetime.UTC))[-1] == ca


def test_ek_public_key_must_be_the_certified_one(
    agent: Attestor,
    start_tpm: Callable[..., Tpm],
    tmp_path: Path,
    enrollment: TpmEnrollmentVerifier,
) -> None:
    other_tpm = start_tpm("b")
    with Attestor(other_tpm.config(), tmp_path / "other") as other:
        foreign = other.enrollment_request("n1")
    swapped = dataclasses.replace(agent.enrollment_request("n1"), ek_public=foreign.ek_public)
    with pytest.raises(EnrollmentError, match="not the key its certificate certifies"):
        run(enrollment.begin(swapped))


def test_ak_name_must_match_the_ak(agent: Attestor, enrollment: TpmEnrollmentVerifier) -> None:
    request = agent.enrollment_request("n1")
    # Flipped, not overwritten: a byte that already had the value would change nothing.
    lying = dataclasses.replace(
        request, ak_name=request.ak_name[:-1] + bytes([request.ak_name[-1] ^ 0xFF])
    )
    with pytest.raises(EnrollmentError, match="AK name sent is not the name"):
        run(enrollment.begin(lying))


def test_expired_ek_certificate_is_refused(
    agent: Attestor, enrollment: TpmEnrollmentVerifier, clock: Clock
) -> None:
    request = agent.enrollment_request("n1")
    not_before = x509.load_der_x509_certificate(request.ek_certificate).not_valid_before_utc
    clock.now = not_before.timestamp() - 86_400
    with pytest.raises(EnrollmentError, match="not valid at"):
        run(enrollment.begin(request))


# Session keys.


def test_session_key_certified_then_used(
    node: EnrolledTpm, agent: Attestor, challenges: Challenges, verifier: QuoteVerifier
) -> None:
    key, certification = agent.certify_session_key("n1", run(challenges.issue("n1", "session-key")))
    certified = run(verifier.verify_session_key(node, certification))
    request = b'{"what": "next report"}'
    certified.verify(request, key.sign(request))
    with pytest.raises(AttestationError, match="bad session-key signature"):
        certified.verify(request + b" ", key.sign(request))


def test_session_key_swapped_after_quoting_is_refused(
    node: EnrolledTpm, agent: Attestor, challenges: Challenges, verifier: QuoteVerifier
) -> None:
    _, certification = agent.certify_session_key("n1", run(challenges.issue("n1", "session-key")))
    mine = bytes(32)
    with pytest.raises(QuoteError, match="qualifying data"):
        run(verifier.verify_session_key(node, dataclasses.replace(certification, public_key=mine)))


def test_report_quote_cannot_certify_a_session_key(
    node: EnrolledTpm, agent: Attestor, challenges: Challenges, verifier: QuoteVerifier
) -> None:
    """A challenge serves one purpose: a report challenge does not certify keys."""
    _, certification = agent.certify_session_key("n1", run(challenges.issue("n1", "report")))
    with pytest.raises(ChallengeError, match="for report, not to n1 for session-key"):
        run(verifier.verify_session_key(node, certification))


def test_evidence_round_trips_through_json(attest: Callable[[], AttestedReport]) -> None:
    attested = attest()
    evidence = AttestationEvidence.from_dict(attested.evidence.to_dict())
    assert evidence == attested.evidence


def test_a_node_enrolled_again_with_another_ak_is_checked_against_the_new_one(
    agent: Attestor,
    node: EnrolledTpm,
    start_tpm: Callable[..., Tpm],
    enrollment: TpmEnrollmentVerifier,
    challenges: Challenges,
    tmp_path: Path,
) -> None:
    """The server keeps each AK record parsed, with its key, between reports; a node
    whose record changes (enrolled again, with another TPM) must not be checked
    against the key kept from its old one."""
    other_tpm = start_tpm("b")
    extend_log(other_tpm, LOG)
    with Attestor(other_tpm.config(event_log=LOG), tmp_path / "other") as other:
        moved = enroll(other, enrollment)

    def stored(record: EnrolledTpm) -> EnrolledNode:
        return EnrolledNode(
            "n1", b"k" * 32, "default", True, "tpm2", 1_000, json.dumps(record.to_dict())
        )

    async def verify(store: Store) -> None:
        reports = ReportAttestation(
            challenges, PcrSelection.parse("sha256:0-9"), store, next_ttl_s=challenges.ttl_s
        )
        honest = agent.attest_report(make_report(), await challenges.issue("n1", REPORT))
        assert (await reports.verify(stored(node), honest)).verdict.reset_count is not None
        stale = agent.attest_report(make_report(), await challenges.issue("n1", REPORT))
        with pytest.raises(QuoteError, match="signature does not verify"):
            await reports.verify(stored(moved), stale)

    run_store(f"sqlite://{tmp_path / 'server.db'}", verify)
