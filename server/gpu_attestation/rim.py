"""NVIDIA's Reference Integrity Manifests: the values a GPU's measurements must have.

A RIM is a SWID tag (ISO/IEC 19770-2) whose payload lists, per measurement
index, the values the driver or the VBIOS may produce, signed with an enveloped
XML signature (ECDSA P-384, SHA-384) by a certificate that chains to NVIDIA's RIM
root. Its certificates ride in the signature's ``KeyInfo``; the chain is checked
here (``server.gpu_attestation.certs``) and the signature by ``signxml`` with
that leaf, so no XML-DSig is written by hand. Measurements are read only from
the XML ``signxml`` returns as signed, never from the document as given: a
payload outside the signature (signature wrapping) is never read.

The XML comes from outside: it is parsed without entities, DTDs or network
access, and a document type declaration is refused outright.

Which RIM belongs to a report is decided by version: the driver RIM names the
driver version the report states, the VBIOS RIM its VBIOS version
(``colloquialVersion``). A directory may hold many RIMs (NVIDIA's samples hold
26); only the ones with the report's versions are verified.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput, InvalidSignature, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from server.gpu_attestation.certs import MAX_CHAIN, describe, p384_key, verify_chain
from server.gpu_attestation.errors import EvidenceRefused, GpuEvidenceError

MAX_RIM_BYTES = 1024 * 1024  # NVIDIA's are about 20 KiB
MAX_ALTERNATIVES = 16
MAX_INDEX = 253
MAX_VALUE_BYTES = 64
SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
SHA384 = "{http://www.w3.org/2001/04/xmlenc#sha384}"
DSIG = "{http://www.w3.org/2000/09/xmldsig#}"
_SIGNED_WITH = SignatureConfiguration(
    location="./",  # the signature is the root's child and covers the whole document
    expect_references=1,
    signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
)
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class RimFile:
    """A RIM's bytes and where they came from (a path, a TUF target)."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ReferenceValue:
    """The values one measurement index may take, from one RIM."""

    index: int  # as RIMs number it: the SPDM block index minus one
    values: tuple[bytes, ...]  # the alternatives; any one matches
    size: int  # bytes


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature and chain verified: its active reference values."""

    name: str
    version: str  # colloquialVersion, lower case as NVIDIA compares it
    signer: str
    values: dict[int, ReferenceValue]  # active indexes only
    chain: tuple[x509.Certificate, ...]  # its signing chain, signer first (for revocation)


def _parse(data: bytes, what: str) -> etree._Element:
    if len(data) > MAX_RIM_BYTES:
        raise GpuEvidenceError(f"{what} is larger than {MAX_RIM_BYTES} bytes")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        tree = etree.fromstring(data, parser).getroottree()
    except etree.XMLSyntaxError as exc:
        raise GpuEvidenceError(f"{what} is not XML ({exc})") from None
    # lxml-stubs lacks DocInfo.doctype, which lxml has long had.
    if tree.docinfo.doctype:  # type: ignore[union-attr]
        raise GpuEvidenceError(f"{what} has a document type declaration, which RIMs never do")
    root = tree.getroot()
    if root.tag != f"{SWID}SoftwareIdentity":
        raise GpuEvidenceError(f"{what} is not a SWID tag (root element {root.tag!r})")
    return root


def version_of(rim: RimFile) -> str:
    """The version a RIM claims (unverified: enough to choose which RIMs to verify)."""
    return _version(_parse(rim.data, rim.name), rim.name)


def _version(root: etree._Element, what: str) -> str:
    meta = root.find(f"{SWID}Meta")
    version = meta.get("colloquialVersion") if meta is not None else None
    if not version or len(version) > 32:
        raise GpuEvidenceError(f"{what} has no Meta colloquialVersion")
    return version.lower()


def verify_rim(rim: RimFile, root_cert: x509.Certificate, at: datetime) -> Rim:
    """The RIM's active reference values, once its chain leads to ``root_cert`` at
    ``at`` and its signature verifies; EvidenceRefused saying why not."""
    what = f"RIM {rim.name}"
    root = _parse(rim.data, what)
    chain = _key_info_certificates(root, what)
    leaf = verify_chain(chain, root_cert, at, f"{what}'s signing chain")
    p384_key(leaf, f"{what}'s signer")
    try:
        result = XMLVerifier().verify(
            root,
            x509_cert=leaf,
            parser=etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False),
            expect_config=dataclasses.replace(_SIGNED_WITH, verification_time=at),
        )
    except (InvalidSignature, InvalidInput, SignXMLException) as exc:
        raise EvidenceRefused(f"{what}: the XML signature does not verify ({exc})") from None
    assert not isinstance(result, list)  # one reference expected, so one result
    signed = result.signed_xml
    if not isinstance(signed, etree._Element) or signed.tag != root.tag:
        raise EvidenceRefused(f"{what}: the signature does not cover the SWID tag itself")
    values = _reference_values(signed, what)
    return Rim(rim.name, _version(signed, what), describe(leaf), values, tuple(chain))


def _key_info_certificates(root: etree._Element, what: str) -> list[x509.Certificate]:
    signature = root.find(f"{DSIG}Signature")
    if signature is None:
        raise EvidenceRefused(f"{what} is not signed (no ds:Signature under its root)")
    texts = signature.findall(f"{DSIG}KeyInfo/{DSIG}X509Data/{DSIG}X509Certificate")
    if not texts or len(texts) > MAX_CHAIN:
        raise EvidenceRefused(
            f"{what}'s signature carries {len(texts)} certificates, not 1 to {MAX_CHAIN}"
        )
    certs = []
    for text in texts:
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(text.text or "")))
        except (ValueError, binascii.Error):
            raise EvidenceRefused(
                f"{what}'s signature carries a certificate that does not parse"
            ) from None
    return certs


def _reference_values(root: etree._Element, what: str) -> dict[int, ReferenceValue]:
    payload = root.find(f"{SWID}Payload")
    if payload is None:
        raise EvidenceRefused(f"{what} has no Payload")
    values: dict[int, ReferenceValue] = {}
    seen: set[int] = set()
    for resource in payload.findall(f"{SWID}Resource"):
        index = _number(resource, "index", what, maximum=MAX_INDEX)
        if index in seen:
            raise EvidenceRefused(f"{what} lists measurement index {index} twice")
        seen.add(index)
        active = resource.get("active")
        if active not in ("True", "False"):
            raise EvidenceRefused(f"{what}: index {index} has active={active!r}, not True or False")
        if active == "False":
            continue
        size = _number(resource, "size", what, maximum=MAX_VALUE_BYTES)
        count = _number(resource, "alternatives", what, maximum=MAX_ALTERNATIVES)
        if count == 0:
            raise EvidenceRefused(f"{what}: index {index} is active but lists no values")
        alternatives = []
        for n in range(count):
            text = resource.get(f"{SHA384}Hash{n}") or ""
            if len(text) != 2 * size or not _HEX.fullmatch(text):
                raise EvidenceRefused(f"{what}: index {index} value {n} is not {size} bytes of hex")
            alternatives.append(bytes.fromhex(text))
        values[index] = ReferenceValue(index, tuple(alternatives), size)
    if not values:
        raise EvidenceRefused(f"{what} holds no active measurement")
    return values


def _number(element: etree._Element, name: str, what: str, *, maximum: int) -> int:
    text = element.get(name) or ""
    if not text.isdigit() or len(text) > 4 or int(text) > maximum:
        raise EvidenceRefused(f"{what}: a Resource's {name} is {text[:16]!r}, not 0 to {maximum}")
    return int(text)


def candidates(rims: Sequence[RimFile], version: str) -> list[RimFile]:
    """The RIMs among ``rims`` that claim ``version``; RIMs that do not parse are
    skipped (a directory may hold other files; the chosen one is verified anyway)."""
    found = []
    for rim in rims:
        try:
            if version_of(rim) == version.lower():
                found.append(rim)
        except GpuEvidenceError:
            continue
    return found
