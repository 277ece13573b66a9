"""GPU attestation evidence for tests: NVIDIA's sample, and the same re-signed by a
test PKI so that it can pass, and be altered one measurement at a time.

NVIDIA's sample (``verifier/samples/`` in the ``nv-local-gpu-verifier`` wheel) is
genuine: a report an H100 signed (driver 550.90.07, VBIOS 96.00.9F.00.01), its
device chain to NVIDIA's device root, and RIMs NVIDIA signed. But its RIMs are
for other firmware (driver 545.00, VBIOS 96.00.5E.00.01), so no verifier can pass
it, NVIDIA's own included. To show a passing verdict, and a refused one for each
single measurement changed, the sample is re-signed here: the report keeps the
H100's measurements and opaque data, with the test's nonce, signed by a test
device key whose certificate carries the H100's own FWID extension; the RIMs
keep NVIDIA's layout and active indexes, with the report's versions and values,
signed (XML-DSig, ECDSA P-384) under a test RIM root. Both chains mirror
NVIDIA's: five device certificates with the root, four RIM certificates.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from signxml.signer import XMLSigner

REQUEST_LENGTH = 37
RECORD_START = REQUEST_LENGTH + 8  # the response's header and record length
SIGNATURE_LENGTH = 96
SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
SHA384 = "{http://www.w3.org/2001/04/xmlenc#sha384}"
DSIG = "{http://www.w3.org/2000/09/xmldsig#}"
TCB_INFO = "2.23.133.5.4.1"
SAMPLE_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
SAMPLE_DRIVER = "550.90.07"
SAMPLE_VBIOS = "96.00.9F.00.01"
# The sample's RIMs, the ones NVIDIA's test mode (--test_no_gpu) uses.
SAMPLE_DRIVER_RIM = "Driver_RIM_test_no_gpu.swidtag"
SAMPLE_VBIOS_RIM = "1010_0200_882_96005E0001_test_no_gpu.swidtag"
# NVIDIA's RIM signers (L4) expired in mid-2025 and the L3 CA on 2026-11-11; the
# report is from driver 550.90.07 (June 2024). The sample is judged at a time when
# every certificate in it was valid, the day the tests name.
SAMPLE_TIME = datetime(2024, 7, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    """NVIDIA's sample files, as shipped in the wheel."""

    folder: Path

    @property
    def report(self) -> Path:
        return self.folder / "hopperAttestationReport.txt"

    @property
    def chain(self) -> Path:
        return self.folder / "hopperCertChain.txt"

    def report_bytes(self) -> bytes:
        return bytes.fromhex("".join(self.report.read_text().split()))

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain.read_bytes())[0]


@dataclass(frozen=True)
class Authority:
    """A certificate and its key, able to issue more."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        name: str,
        *,
        ca: bool,
        extensions: tuple[x509.ExtensionType, ...] = (),
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> Authority:
        key = key or ec.generate_private_key(ec.SECP384R1())
        return Authority(_certificate(name, key, self, ca=ca, extensions=extensions), key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def root(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP384R1())
    return Authority(_certificate(name, key, None, ca=True), key)


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Authority | None,
    *,
    ca: bool,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2099, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer.key if issuer else key, hashes.SHA384())


@dataclass(frozen=True)
class LabPki:
    """A device root with NVIDIA's chain shape, and a RIM root with NVIDIA's."""

    device_cas: tuple[Authority, ...]  # the BROM CA (above each GPU's leaf) first, root last
    gpu: Authority  # the leaf that signs reports
    rim_chain: tuple[Authority, ...]  # signer first, root last

    @property
    def device_root(self) -> Authority:
        return self.device_cas[-1]

    @property
    def rim_root(self) -> Authority:
        return self.rim_chain[-1]

    def device_chain_pem(self, leaf: Authority | None = None) -> bytes:
        """Leaf first, root last, as NVML returns it."""
        return b"".join(a.pem() for a in (leaf or self.gpu, *self.device_cas))

    def other_gpu(self) -> Authority:
        """Another GPU of the same firmware under the same CA: its own key."""
        return self.device_cas[0].issue(
            "Test GH100 FMC LF (other GPU)", ca=False, extensions=self._fwid
        )

    def links(self) -> list[tuple[Authority, Authority]]:
        """(certificate, its issuer) for every certificate below the two roots: the
        ones a revocation check asks OCSP about."""
        device = (self.gpu, *self.device_cas)
        return list(itertools.pairwise(device)) + list(itertools.pairwise(self.rim_chain))

    @property
    def _fwid(self) -> tuple[x509.ExtensionType, ...]:
        return tuple(e.value for e in self.gpu.cert.extensions if e.oid.dotted_string == TCB_INFO)


def make_pki(sample: Sample) -> LabPki:
    """The test PKI; its GPU leaf carries the sample H100's own FWID extension."""
    fwid = tuple(e.value for e in sample.leaf().extensions if e.oid.dotted_string == TCB_INFO)
    device_root = root("Test Device Identity CA")
    identity = device_root.issue("Test GH100 Identity", ca=True)
    provisioner = identity.issue("Test GH100 Provisioner ICA 1", ca=True)
    brom = provisioner.issue("Test GH100 A01 GSP BROM", ca=True)
    gpu = brom.issue("Test GH100 A01 GSP FMC LF", ca=False, extensions=fwid)
    rim_root = root("Test CoRIM signing Root CA")
    rim_ca = rim_root.issue("Test Reference Value GH100 CA", ca=True)
    rim_l3 = rim_ca.issue("Test Reference Value L3 GH100 001", ca=True)
    signer = rim_l3.issue("Test HCC RIM L4 Signer", ca=False)
    return LabPki(
        (brom, provisioner, identity, device_root), gpu, (signer, rim_l3, rim_ca, rim_root)
    )


def blocks(report: bytes) -> dict[int, tuple[int, int]]:
    """SPDM block index -> (offset, length) of its value in ``report``."""
    count = report[REQUEST_LENGTH + 4]
    found, offset = {}, RECORD_START
    for _ in range(count):
        index, size = report[offset], struct.unpack_from("<H", report, offset + 2)[0]
        value_size = struct.unpack_from("<H", report, offset + 5)[0]
        found[index] = (offset + 7, value_size)
        offset += 4 + size
    return found


def measurements(report: bytes) -> dict[int, bytes]:
    """RIM index (SPDM block index minus one) -> value."""
    return {i - 1: report[o : o + n] for i, (o, n) in blocks(report).items()}


def resign(
    report: bytes, key: ec.EllipticCurvePrivateKey, *, nonce: bytes, flip: int | None = None
) -> bytes:
    """``report`` with the request nonce ``nonce``, the measurement at RIM index
    ``flip`` (if any) changed in one bit, signed again by ``key``."""
    data = bytearray(report)
    data[4:36] = nonce
    if flip is not None:
        offset, _ = blocks(report)[flip + 1]
        data[offset] ^= 0x01
    signed = bytes(data[:-SIGNATURE_LENGTH])
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def make_rim(
    template: bytes,
    *,
    version: str,
    values: dict[int, bytes],
    pki: LabPki,
    edit: Callable[[etree._Element], None] | None = None,
) -> bytes:
    """NVIDIA's RIM ``template`` for ``version``: each active index set to its value
    in ``values`` (one alternative), then ``edit``, if any, and signed under the
    test RIM root."""
    tree = etree.fromstring(template, etree.XMLParser(resolve_entities=False, no_network=True))
    for signature in tree.findall(f"{DSIG}Signature"):
        tree.remove(signature)
    meta = tree.find(f"{SWID}Meta")
    assert meta is not None
    meta.set("colloquialVersion", version)
    payload = tree.find(f"{SWID}Payload")
    assert payload is not None
    for resource in payload.findall(f"{SWID}Resource"):
        if resource.get("active") != "True":
            continue
        for n in range(int(resource.get("alternatives") or 0)):
            del resource.attrib[f"{SHA384}Hash{n}"]
        resource.set("alternatives", "1")
        resource.set(f"{SHA384}Hash0", values[int(resource.get("index") or -1)].hex())
    if edit is not None:
        edit(tree)
    signer = pki.rim_chain[0]
    signed = XMLSigner(
        signature_algorithm="ecdsa-sha384",
        digest_algorithm="sha384",
        c14n_algorithm="http://www.w3.org/2006/12/xml-c14n11",
    ).sign(tree, key=signer.key, cert=[a.cert for a in pki.rim_chain])
    return etree.tostring(signed, xml_declaration=False)


def active_indexes(rim: bytes) -> list[int]:
    tree = etree.fromstring(rim, etree.XMLParser(resolve_entities=False, no_network=True))
    return sorted(
        int(r.get("index") or -1) for r in tree.iter(f"{SWID}Resource") if r.get("active") == "True"
    )


@dataclass(frozen=True)
class Evidence:
    """One GPU's evidence as files, the way ``gpuward gpu-attest verify`` and NVIDIA's
    verifier read them."""

    report: Path  # hex text, as NVIDIA's sample
    chain: Path
    driver_rim: Path
    vbios_rim: Path
    nonce: bytes
    device_root: Path | None = None  # None: NVIDIA's
    rim_root: Path | None = None

    @property
    def rims(self) -> Path:
        return self.driver_rim.parent


def write_evidence(
    folder: Path,
    pki: LabPki,
    report: bytes,
    *,
    nonce: bytes,
    driver_rim: bytes,
    vbios_rim: bytes,
    chain: bytes | None = None,
) -> Evidence:
    """Files for one case under ``folder``; the RIMs alone in ``folder/rims``."""
    (folder / "rims").mkdir(parents=True)
    files = {
        "report.txt": report.hex().encode(),
        "chain.pem": chain if chain is not None else pki.device_chain_pem(),
        "rims/driver.swidtag": driver_rim,
        "rims/vbios.swidtag": vbios_rim,
        "device_root.pem": pki.device_root.pem(),
        "rim_root.pem": pki.rim_root.pem(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Evidence(
        folder / "report.txt",
        folder / "chain.pem",
        folder / "rims/driver.swidtag",
        folder / "rims/vbios.swidtag",
        nonce,
        folder / "device_root.pem",
        folder / "rim_root.pem",
    )


def nonce_for(label: str) -> bytes:
    """A 32-byte nonce of the test's own, different per label."""
    return hashlib.sha256(label.encode()).digest()


@dataclass(frozen=True)
class LabTrust:
    """What a server needs to judge the lab's GPU evidence: RIMs and both roots."""

    rims: Path
    device_root: Path
    rim_root: Path

    def settings(self) -> dict[str, Any]:
        """``ServerConfig`` settings judging GPUs by these, revocation waived."""
        return {
            "gpu_rims": self.rims,
            "gpu_device_root": self.device_root,
            "gpu_rim_root": self.rim_root,
            "gpu_revocation": "waived",
        }


def resigned_rims(sample: Sample, pki: LabPki) -> tuple[bytes, bytes]:
    """The sample's driver and VBIOS RIMs for the sample report's firmware and
    values, signed under the lab RIM root."""
    values = measurements(sample.report_bytes())
    return (
        make_rim(
            (sample.folder / SAMPLE_DRIVER_RIM).read_bytes(),
            version=SAMPLE_DRIVER,
            values=values,
            pki=pki,
        ),
        make_rim(
            (sample.folder / SAMPLE_VBIOS_RIM).read_bytes(),
            version=SAMPLE_VBIOS,
            values=values,
            pki=pki,
        ),
    )


def write_lab_trust(folder: Path, sample: Sample, pki: LabPki) -> LabTrust:
    """The re-signed RIMs in ``folder/rims``, and the lab roots."""
    rims = folder / "rims"
    rims.mkdir(parents=True)
    driver, vbios = resigned_rims(sample, pki)
    (rims / "driver.swidtag").write_bytes(driver)
    (rims / "vbios.swidtag").write_bytes(vbios)
    (folder / "device-root.pem").write_bytes(pki.device_root.pem())
    (folder / "rim-root.pem").write_bytes(pki.rim_root.pem())
    return LabTrust(rims, folder / "device-root.pem", folder / "rim-root.pem")


def fake_gpus(
    folder: Path, sample: Sample, pki: LabPki, gpus: Sequence[Authority]
) -> dict[str, object]:
    """Fake NVML config (``gpu.N.cc.*``) for GPUs that attest with the sample's
    measurements, each signing with its own key and serving its own chain."""
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "report.bin"
    template.write_bytes(sample.report_bytes())
    config: dict[str, object] = {}
    for index, gpu in enumerate(gpus):
        key = folder / f"gpu{index}.key"
        key.write_bytes(
            gpu.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        chain = folder / f"gpu{index}-chain.pem"
        chain.write_bytes(pki.device_chain_pem(gpu))
        config |= {
            f"gpu.{index}.cc.report": template,
            f"gpu.{index}.cc.key": key,
            f"gpu.{index}.cc.cert_chain": chain,
        }
    return config


def ocsp_response(
    subject: Authority,
    issuer: Authority,
    *,
    at: datetime,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    valid_for: timedelta = timedelta(days=7),
    signer: Authority | None = None,
) -> bytes:
    """A DER OCSP response about ``subject`` under ``issuer``, current from ``at`` for
    ``valid_for``, signed by ``signer`` (default: the issuer itself), which it carries."""
    responder = signer or issuer
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=subject.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=at,
            next_update=at + valid_for,
            revocation_time=at if status is ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert)
    )
    if signer is not None:
        builder = builder.certificates([signer.cert])
    return builder.sign(responder.key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def ocsp_responder(issuer: Authority) -> Authority:
    """A responder ``issuer`` delegates OCSP signing to."""
    return issuer.issue(
        f"{issuer.cert.subject.rfc4514_string()} OCSP responder",
        ca=False,
        extensions=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]),),
    )


def good_responses(pki: LabPki, at: datetime) -> dict[str, bytes]:
    """A current, good OCSP response for every certificate below both roots, by file name."""
    return {
        f"ocsp-{n}.der": ocsp_response(subject, issuer, at=at)
        for n, (subject, issuer) in enumerate(pki.links())
    }
