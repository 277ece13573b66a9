"""The node's side of attestation, on the host's TPM through tpm2-pytss.

Keys: the EK is re-created from its standard template whenever it is needed
(deterministic, so always the same key, the one the EK certificate names) and
flushed straight after. The AK is a restricted RSASSA-SHA256 signing key, a
primary of the endorsement hierarchy, kept at a persistent handle so a quote
needs no key load; its public area is saved under the agent's state folder so
the agent recognises its own key at that handle and never uses, or evicts, a key
it did not create.

Every transient object and session is flushed in a ``finally`` and every
persistent handle's ESYS object closed: without a resource manager (the
``swtpm:`` TCTI, or ``device:/dev/tpm0``) a leaked handle stays in the TPM, which
holds only a few, until the next TPM reset, and a long-running agent would
soon get "out of memory for object contexts".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.attestation import (
    AttestationError,
    AttestationEvidence,
    AttestedReport,
    Challenge,
    CredentialAnswer,
    CredentialChallenge,
    PcrSelection,
    SessionKeyCertification,
    TpmEnrollmentRequest,
    quote_qualifying_data,
    report_digest,
    session_key_digest,
)
from fleet.eventlog import MAX_LOG_BYTES
from fleet.report import HealthReport
from keys.durable_files import atomic_write
from node.attest.config import AttestConfig, ak_file

# tss2 logs every failed probe of an optional NV index (create_ek_template reads
# several) as an ESYS error on stderr; they are expected, our own errors are raised.
os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

log = structlog.get_logger(__name__)

AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)
PCR_READ_MAX = 8  # TPM2_PCR_Read returns at most 8 digests per call
QUOTE_ATTEMPTS = 3
# TPM_RC_HANDLE for handle 1: tr_from_tpmpublic's answer when nothing is at a handle.
RC_NO_SUCH_HANDLE = 0x18B


def _tpm_error(action: str, exc: TSS2_Exception) -> AttestationError:
    return AttestationError(
        f"TPM {action} failed: {exc}; check the TPM is reachable (the tcti setting) "
        "and that this user may use it (group tss)"
    )


class Attestor:
    """One open connection to the TPM. Use as a context manager, or call ``close``."""

    def __init__(self, config: AttestConfig, state_dir: Path) -> None:
        self.config = config
        self._ak_file = ak_file(state_dir)
        name, _, conf = config.tcti.partition(":")
        try:
            self._tcti = TCTILdr(name, conf)
            self._esapi = ESAPI(self._tcti)
        except TSS2_Exception as exc:
            raise _tpm_error(f"connection through {config.tcti}", exc) from None
        self._ek_type: str | None = None

    def close(self) -> None:
        self._esapi.close()
        self._tcti.close()

    def __enter__(self) -> Attestor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Keys.

    def _ek_template(self) -> tuple[bytes, TPM2B_PUBLIC]:
        """The certificate and key template of the first configured EK type present."""
        reader = NVReadEK(self._esapi)
        for ek_type in self.config.ek_types:
            try:
                cert, template = create_ek_template(ek_type, reader)
            except ValueError:
                continue  # no certificate of this type in NV
            except TSS2_Exception as exc:
                raise _tpm_error("EK certificate read", exc) from None
            if cert:
                self._ek_type = ek_type
                return bytes(cert), template
        raise AttestationError(
            f"no EK certificate in the TPM's NV for {', '.join(self.config.ek_types)}; "
            "this TPM cannot be enrolled until its vendor's EK certificate is provisioned"
        )

    @contextmanager
    def _ek(self) -> Iterator[tuple[ESYS_TR, TPM2B_PUBLIC, bytes]]:
        """The EK, loaded for the duration of the block, and its certificate."""
        cert, template = self._ek_template()
        try:
            handle, public, *_ = self._esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
        except TSS2_Exception as exc:
            raise _tpm_error("EK creation", exc) from None
        try:
            yield handle, public, cert
        finally:
            self._esapi.flush_context(handle)

    @contextmanager
    def _ak(self) -> Iterator[tuple[ESYS_TR, TPM2B_PUBLIC]]:
        """The persistent AK, created and persisted on first use."""
        saved = self._ak_file.read_bytes() if self._ak_file.exists() else None
        handle = self._persistent(self.config.ak_handle)
        if handle is None:
            if saved is not None:
                log.warning("attest.ak_missing", handle=f"0x{self.config.ak_handle:08x}")
            handle = self._create_ak()
        try:
            public, _, _ = self._esapi.read_public(handle)
            if saved is not None and public.marshal() != saved:
                raise AttestationError(
                    f"persistent handle 0x{self.config.ak_handle:08x} holds a key gpuward "
                    "did not create; set [attestation] ak_handle to a free handle, or evict "
                    f"that key (tpm2_evictcontrol -c 0x{self.config.ak_handle:08x})"
                )
            yield handle, public
        finally:
            self._esapi.tr_close(handle)

    def _persistent(self, handle: int) -> ESYS_TR | None:
        try:
            return self._esapi.tr_from_tpmpublic(handle)
        except TSS2_Exception as exc:
            if exc.rc == RC_NO_SUCH_HANDLE:
                return None
            raise _tpm_error("persistent handle lookup", exc) from None

    def _create_ak(self) -> ESYS_TR:
        template = TPM2B_PUBLIC.parse(
            "rsa2048:rsassa-sha256:null", objectAttributes=AK_ATTRIBUTES, nameAlg="sha256"
        )
        try:
            transient, public, *_ = self._esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
            try:
                persistent = self._esapi.evict_control(
                    ESYS_TR.OWNER, transient, self.config.ak_handle
                )
            finally:
                self._esapi.flush_context(transient)
        except TSS2_Exception as exc:
            raise _tpm_error("AK creation", exc) from None
        atomic_write(self._ak_file, public.marshal(), mode=0o600)
        log.info("attest.ak_created", handle=f"0x{self.config.ak_handle:08x}")
        return persistent

    # Enrollment.

    def enrollment_request(self, node_id: str) -> TpmEnrollmentRequest:
        with self._ek() as (_, ek_public, cert), self._ak() as (_, ak_public):
            return TpmEnrollmentRequest(
                node_id=node_id,
                ek_certificate=cert,
                ek_public=ek_public.marshal(),
                ak_public=ak_public.marshal(),
                ak_name=bytes(ak_public.get_name()),
            )

    def activate(self, node_id: str, challenge: CredentialChallenge) -> CredentialAnswer:
        """Recover the server's secret: possible only in the TPM holding both keys."""
        try:
            blob, _ = TPM2B_ID_OBJECT.unmarshal(challenge.credential_blob)
            secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(challenge.encrypted_secret)
        except (TSS2_Exception, ValueError, TypeError) as exc:
            raise AttestationError(f"the server's credential is malformed: {exc}") from None
        with (
            self._ek() as (ek, ek_public, _),
            self._ak() as (ak, _),
            self._ek_session(ek_public.publicArea.nameAlg) as session,
        ):
            try:
                recovered = self._esapi.activate_credential(
                    ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                )
            except TSS2_Exception as exc:
                raise _tpm_error("credential activation", exc) from None
        return CredentialAnswer(node_id, challenge.challenge, bytes(recovered))

    @contextmanager
    def _ek_session(self, name_alg: TPM2_ALG) -> Iterator[ESYS_TR]:
        """A policy session satisfying the EK's policy, PolicySecret(TPM_RH_ENDORSEMENT),
        in the EK's name algorithm (SHA-384 for the P-384 EK's policy)."""
        session = self._esapi.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=name_alg,
        )
        try:
            self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
            yield session
        finally:
            self._esapi.flush_context(session)

    # Quotes.

    def quote(
        self, challenge: bytes, bound_digest: bytes, driver_log: bytes | None = None
    ) -> AttestationEvidence:
        """Quote the configured PCRs over ``SHA-256(challenge || bound_digest)``.

        ``driver_log`` (the applier's measurement log) travels with the quote to
        explain the driver PCR; the quote itself binds it through that PCR.
        """
        selection = self.config.selection
        qualifying = quote_qualifying_data(challenge, bound_digest)
        tpml = TPML_PCR_SELECTION.parse(selection.text())
        with self._ak() as (ak, _):
            # A PCR may be extended between reading the values and quoting them:
            # retry until the values read explain the quoted digest.
            for _ in range(QUOTE_ATTEMPTS):
                pcrs = self._read_pcrs(selection)
                try:
                    attest, signature = self._esapi.quote(
                        ak, tpml, qualifying, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
                    )
                except TSS2_Exception as exc:
                    raise _tpm_error("quote", exc) from None
                quoted = bytes(attest)
                values = b"".join(pcrs[b][p] for b, ps in selection.banks for p in ps)
                parsed, _ = TPMS_ATTEST.unmarshal(quoted)
                if bytes(parsed.attested.quote.pcrDigest) == hashlib.sha256(values).digest():
                    break
            else:
                raise AttestationError(
                    f"PCRs kept changing during {QUOTE_ATTEMPTS} quotes; try again"
                )
        return AttestationEvidence(
            nonce=challenge,
            quote=quoted,
            signature=signature.marshal(),
            selection=selection,
            pcrs=pcrs,
            event_log=self.read_event_log(),
            driver_log=driver_log,
        )

    def _read_pcrs(self, selection: PcrSelection) -> dict[str, dict[int, bytes]]:
        values: dict[str, dict[int, bytes]] = {}
        for bank, pcrs in selection.banks:
            bank_values = values.setdefault(bank, {})
            for start in range(0, len(pcrs), PCR_READ_MAX):
                chunk = pcrs[start : start + PCR_READ_MAX]
                text = f"{bank}:{','.join(map(str, chunk))}"
                try:
                    _, _, digests = self._esapi.pcr_read(TPML_PCR_SELECTION.parse(text))
                except TSS2_Exception as exc:
                    raise _tpm_error("PCR read", exc) from None
                if len(digests) != len(chunk):
                    raise AttestationError(
                        f"the TPM returned {len(digests)} values for {text}: is the "
                        f"{bank} bank active? (tpm2_getcap pcrs)"
                    )
                bank_values.update(zip(chunk, (bytes(d) for d in digests), strict=True))
        return values

    def read_pcr(self, pcr: int) -> bytes:
        """One sha256 PCR's value."""
        return self._read_pcrs(PcrSelection.of({"sha256": (pcr,)}))["sha256"][pcr]

    def extend_pcr(self, pcr: int, digest: bytes) -> None:
        """Extend one sha256 PCR with ``digest`` (the applier measuring a driver)."""
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        value.digest.sha256 = digest
        try:
            self._esapi.pcr_extend(ESYS_TR.parse(f"pcr{pcr}"), TPML_DIGEST_VALUES([value]))
        except TSS2_Exception as exc:
            raise _tpm_error(f"extending PCR {pcr}", exc) from None

    def reset_count(self) -> int:
        """The TPM's count of resets (reboots): the boot a driver measurement belongs to.

        The same count the quote's clock info carries, signed by the AK.
        """
        try:
            info = self._esapi.read_clock()
        except TSS2_Exception as exc:
            raise _tpm_error("clock read", exc) from None
        return int(info.clockInfo.resetCount)

    def read_event_log(self) -> bytes | None:
        """The firmware's event log, or None on a host without one."""
        try:
            with self.config.event_log.open("rb") as f:
                # One byte over the limit lets the server's parser reject it cleanly.
                return f.read(MAX_LOG_BYTES + 1)
        except FileNotFoundError:
            log.warning("attest.no_event_log", path=str(self.config.event_log))
            return None

    def attest_report(
        self, report: HealthReport, challenge: Challenge, driver_log: bytes | None = None
    ) -> AttestedReport:
        return AttestedReport(
            report, self.quote(challenge.nonce, report_digest(report), driver_log)
        )

    def certify_session_key(
        self, node_id: str, challenge: Challenge
    ) -> tuple[Ed25519PrivateKey, SessionKeyCertification]:
        """A fresh Ed25519 key, vouched for by a quote binding its public bytes.

        The private key lives only in this process: a restarted agent certifies a
        new one, so a stolen state folder carries no session key.
        """
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return key, self.certify_key(node_id, public, challenge)

    def certify_key(
        self, node_id: str, public_key: bytes, challenge: Challenge
    ) -> SessionKeyCertification:
        """A quote binding ``public_key`` (raw Ed25519) to this TPM's AK: at TPM
        enrollment, it vouches for the node's persistent request key."""
        evidence = self.quote(challenge.nonce, session_key_digest(public_key)).without_log()
        return SessionKeyCertification(node_id, public_key, evidence)
