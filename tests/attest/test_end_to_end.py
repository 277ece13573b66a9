"""Enroll a swtpm, replay each real event log into it, quote, verify end to end.

Also: the agent's quote passes tpm2-tools' independent ``tpm2_checkquote``; the
AK survives an agent restart; a long-running agent never leaks TPM handles.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from asyncio import run
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.attestation import AttestedReport, PcrSelection, quote_qualifying_data, report_digest
from fleet.eventlog import StartupLocality, parse, replay
from fleet.report import GpuHealth, HealthReport
from node.attest.attestor import Attestor
from server.attestation.challenges import Challenges
from server.attestation.enrollment import TpmEnrollmentVerifier
from server.attestation.policy import from_eventlog
from server.attestation.tpm import ECC_NIST_P256, parse_public
from server.attestation.verifier import QuoteVerifier
from tests.attest.conftest import LOG_DIR, Tpm, enroll, extend_log

LOGS = sorted(LOG_DIR.glob("*.bin"))


def make_report(node_id: str = "n1", reason: str = "nothing newer") -> HealthReport:
    gpu = GpuHealth(0, "NVIDIA H100 80GB HBM3", "GPU-0", "580.65.06", True, ())
    return HealthReport(
        node_id, 1_800_000_000, "a", "580.65.06", "R580/b.bundle", "up-to-date", reason, (gpu,)
    )


def startup_locality(path: Path) -> int:
    log = parse(path.read_bytes())
    return max(
        (e.decoded.locality for e in log.events if isinstance(e.decoded, StartupLocality)),
        default=0,
    )


def log_selection(path: Path) -> PcrSelection:
    """Every bank of the log: PCRs 0-9, systemd-boot's command line (12), shim's
    MOK lists (14) and the driver (15)."""
    banks = parse(path.read_bytes()).digest_sizes
    selection = {bank: [*range(10), 12, 14, 15] for bank in banks}
    selection.setdefault("sha256", [15])  # the driver's log extends sha256 whatever the firmware's
    return PcrSelection.of(selection)


def test_every_reference_log_is_found() -> None:
    assert len(LOGS) == 5, f"expected the 5 shared event logs in {LOG_DIR}"


@pytest.mark.parametrize("log_path", LOGS, ids=lambda p: p.stem)
def test_replayed_log_quoted_and_verified(
    log_path: Path,
    start_tpm: Callable[..., Tpm],
    state_dir: Path,
    enrollment: TpmEnrollmentVerifier,
    challenges: Challenges,
) -> None:
    # swtpm starts PCR 0 at zero: a log from a TPM started at locality 3 would
    # need 0x00..03 there, which no extend can produce.
    assert startup_locality(log_path) != 3, "this log cannot be replayed into swtpm"
    tpm = start_tpm()
    extend_log(tpm, log_path)
    selection = log_selection(log_path)
    verifier = QuoteVerifier(challenges, selection)
    policy = from_eventlog(parse(log_path.read_bytes()))
    with Attestor(tpm.config(selection, event_log=log_path), state_dir) as attestor:
        node = enroll(attestor, enrollment)
        report = make_report()
        attested = attestor.attest_report(report, run(challenges.issue("n1", "report")))
    # Through JSON, as over the wire.
    received = AttestedReport.from_dict(json.loads(json.dumps(attested.to_dict())))
    verdict = run(verifier.verify_report(node, received, policy=policy))
    assert verdict.passed, verdict.policy
    assert verdict.log is not None
    expected = replay(parse(log_path.read_bytes()))
    quoted = dict(selection.banks)
    for bank, pcrs in verdict.log.verified.items():
        assert pcrs == expected.get(bank, {}).keys() & set(quoted[bank])
        for pcr in pcrs:
            assert received.evidence.pcrs[bank][pcr] == expected[bank][pcr]


def test_tpm2_tools_accept_the_agents_quote(
    tpm: Tpm,
    state_dir: Path,
    enrollment: TpmEnrollmentVerifier,
    challenges: Challenges,
    tmp_path: Path,
) -> None:
    """tpm2-tools, an independent implementation, checks the same quote:
    ``tpm2_checkquote`` the signature and the qualifying data; ``tpm2_pcrread``
    and ``tpm2_print`` that the quoted PCR digest is that of the reported values.
    (tpm2_checkquote's own ``-f`` PCR check fails in tpm2-tools 5.4 even on
    tpm2_quote's output, so the digest is compared here.)"""
    with Attestor(tpm.config(), state_dir) as attestor:
        enroll(attestor, enrollment)
        report = make_report()
        challenge = run(challenges.issue("n1", "report"))
        evidence = attestor.quote(challenge.nonce, report_digest(report))
    ak = parse_public((state_dir / "attest/ak.pub").read_bytes())
    pem = ak.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ak.pem").write_bytes(pem)
    (tmp_path / "quote.msg").write_bytes(evidence.quote)
    (tmp_path / "quote.sig").write_bytes(evidence.signature)
    qualifying = quote_qualifying_data(challenge.nonce, report_digest(report)).hex()

    def checkquote(qualification: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tpm2_checkquote", "-u", str(tmp_path / "ak.pem"), "-m", str(tmp_path / "quote.msg"),
             "-s", str(tmp_path / "quote.sig"), "-g", "sha256", "-q", qualification],
            capture_output=True, text=True,
        )  # fmt: skip

    accepted = checkquote(qualifying)
    assert accepted.returncode == 0, accepted.stderr
    # The same tool refuses the quote for another qualifying data: the check is real.
    assert checkquote("00" * 32).returncode != 0

    values = tmp_path / "pcrs.bin"
    subprocess.run(
        ["tpm2_pcrread", "-T", tpm.tcti, "-o", str(values), evidence.selection.text()],
        check=True, capture_output=True,
    )  # fmt: skip
    assert values.read_bytes() == b"".join(evidence.pcr_values())
    printed = subprocess.run(
        ["tpm2_print", "-t", "TPMS_ATTEST", str(tmp_path / "quote.msg")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert f"pcrDigest: {hashlib.sha256(values.read_bytes()).hexdigest()}" in printed
    assert f"extraData: {qualifying}" in printed


def test_ak_survives_an_agent_restart(
    tpm: Tpm, state_dir: Path, enrollment: TpmEnrollmentVerifier, challenges: Challenges,
    verifier: QuoteVerifier,
) -> None:  # fmt: skip
    with Attestor(tpm.config(), state_dir) as attestor:
        node = enroll(attestor, enrollment)
    with Attestor(tpm.config(), state_dir) as restarted:
        attested = restarted.attest_report(make_report(), run(challenges.issue("n1", "report")))
    assert run(verifier.check_quote(node, attested.evidence, attested.digest)).node_id == "n1"


def _transient_and_sessions(tcti: str) -> tuple[int, int]:
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

    name, _, conf = tcti.partition(":")
    with TCTILdr(name, conf) as t, ESAPI(t) as esapi:
        _, objects = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 64)
        _, sessions = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.LOADED_SESSION_FIRST, 64)
        return len(objects.data.handles), len(sessions.data.handles)


def test_no_tpm_handles_leak(
    tpm: Tpm, state_dir: Path, enrollment: TpmEnrollmentVerifier, challenges: Challenges,
    verifier: QuoteVerifier,
) -> None:  # fmt: skip
    """swtpm holds 3 transient objects and 3 sessions: every enrollment below loads
    the EK and a policy session, and every quote the AK, so 30 rounds would fail
    with 0x902 (out of object memory) if any handle leaked; the TPM is also asked
    directly that nothing is left."""
    with Attestor(tpm.config(), state_dir) as attestor:
        for _ in range(10):
            node = enroll(attestor, enrollment)
        for _ in range(30):
            attested = attestor.attest_report(make_report(), run(challenges.issue("n1", "report")))
            run(verifier.check_quote(node, attested.evidence, attested.digest))
        assert _transient_and_sessions(tpm.tcti) == (0, 0)


def test_ecc_ek_credential_is_activated_by_a_real_tpm(tpm: Tpm) -> None:
    """The server's MakeCredential for an ECC P-256 EK (one-pass ECDH, KDFe), opened
    by swtpm's TPM2_ActivateCredential. swtpm has no certificate for this EK type,
    so the EK and AK come straight from the templates here."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import (
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMT_SYM_DEF,
    )
    from tpm2_pytss.utils import create_ek_template

    from node.attest.attestor import AK_ATTRIBUTES
    from server.attestation.tpm import make_credential

    def no_nv(index: int) -> bytes:
        from tpm2_pytss.utils import NoSuchIndex

        raise NoSuchIndex(index)

    with TCTILdr("swtpm", f"port={tpm.port}") as tcti, ESAPI(tcti) as esapi:
        _, template = create_ek_template("EK-ECC256", no_nv)
        ek, ek_public, *_ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        ak_template = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256:null", AK_ATTRIBUTES)
        ak, ak_public, *_ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), ak_template, ESYS_TR.ENDORSEMENT
        )
        ek_parsed = parse_public(ek_public.marshal())
        assert ek_parsed.curve == ECC_NIST_P256
        blob, secret = make_credential(ek_parsed, b"s" * 32, bytes(ak_public.get_name()))
        session = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256,
        )  # fmt: skip
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        recovered = esapi.activate_credential(
            ak,
            ek,
            TPM2B_ID_OBJECT.unmarshal(blob)[0],
            TPM2B_ENCRYPTED_SECRET.unmarshal(secret)[0],
            session2=session,
        )
        for handle in (session, ak, ek):
            esapi.flush_context(handle)
    assert bytes(recovered) == b"s" * 32
