"""Where a bundle's bytes came from: an in-toto attestation signed by the build key.

TUF proves the operators signed a bundle; it cannot show an auditor that the
bundle is NVIDIA's packages, unmodified. ``bundle build`` therefore writes, beside
the bundle, an in-toto Statement (SLSA provenance v1 predicate) whose subject is
the bundle's digest and whose resolved dependencies are its inputs as their
publishers vouch for them: for Debian packages, each .deb's name, version and
SHA-256 as a Packages index states them, that index's digest, and the digest of
the InRelease file whose signature (checked against the archive keyring with
``gpgv``) covers the index; for an NVIDIA runfile, its published SHA-256. The
Statement travels in a DSSE envelope signed by the build key, made with the
``in-toto`` library so anyone can check it with in-toto's own tools.

Bundles are reproducible (``keys.bundle``) and Ed25519 signatures deterministic,
so the same inputs give the same bundle and the same attestation, byte for byte.
``repo add`` publishes the attestation as a TUF target beside the bundle, and an
agent whose policy requires provenance (``require_provenance``) refuses a bundle
without a valid one (``verify_provenance``).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from in_toto.models.metadata import ENVELOPE_PAYLOAD_TYPE, Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Signer, SSlibKey

from fleet.errors import GpuwardError
from fleet.manifest import BundleManifest
from keys import sealed
from keys.bundle import sha256_file
from keys.durable_files import atomic_write, read_bounded
from keys.keyring import Keyring, PassphraseSource

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://gpuward.dev/bundle-build/v1"
BUILDER_ID = "https://gpuward.dev/gpuward-bundle-build"
# The attestation's name beside its bundle, on disk and as a TUF target.
SUFFIX = ".provenance.json"
BUILD_KEY_NAME = "build"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MAX_ATTESTATION = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_APT_HELPER = "/usr/lib/apt/apt-helper"


class ProvenanceRefused(GpuwardError):
    """An attestation that does not vouch for the bundle it stands beside."""


@dataclass(frozen=True)
class DebianPackage:
    """One .deb as a signed Packages index lists it."""

    name: str
    version: str
    architecture: str
    filename: str  # its path in the archive's pool
    sha256: str
    index: str  # the Packages index that lists it


@dataclass(frozen=True)
class SignedIndex:
    """A Packages index and the InRelease file whose signature covers its digest."""

    release: str  # where apt got the InRelease: deb.debian.org/debian/dists/bookworm/InRelease
    release_sha256: str
    index: str  # e.g. deb.debian.org/debian/dists/bookworm/non-free/binary-amd64/Packages
    index_sha256: str
    packages: Mapping[str, DebianPackage]  # by .deb digest


def attestation_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + SUFFIX)


def signed_indexes(lists: Path, keyring: Path = DEBIAN_KEYRING) -> list[SignedIndex]:
    """Every Packages index in apt's lists folder ``lists`` whose digest an InRelease
    there lists, once that InRelease's signature verifies against ``keyring``.

    An index no verified InRelease lists is left out: nothing vouches for it.
    """
    releases = {path.name: path.read_bytes() for path in sorted(lists.glob("*_InRelease"))}
    if not releases:
        raise GpuwardError(
            f"{lists} holds no InRelease file: give the lists folder 'apt-get update' filled "
            "(Dir::State::Lists)"
        )
    listings = {name: _release_digests(name, data, keyring) for name, data in releases.items()}
    found = []
    for path in sorted(lists.glob("*_Packages*")):
        digest, packages = _read_packages(path)
        for release, listed in listings.items():
            if digest in listed:
                index = _origin(release).removesuffix("InRelease") + listed[digest]
                found.append(
                    SignedIndex(
                        _origin(release),
                        _sha256(releases[release]),
                        index,
                        digest,
                        {
                            sha: DebianPackage(**fields, sha256=sha, index=index)
                            for sha, fields in packages.items()
                        },
                    )
                )
                break
    return found


def _origin(name: str) -> str:
    """Where apt fetched a lists file from: apt names it by its URL, '/' turned to '_'."""
    return name.replace("_", "/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _release_digests(name: str, data: bytes, keyring: Path) -> dict[str, str]:
    """The SHA256 entries (digest -> path) of InRelease ``data``, read from the text its
    signature covers, never from the file as it lies."""
    done = subprocess.run(
        ["gpgv", "--keyring", str(keyring), "--output", "-", "-"],
        input=data,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise GpuwardError(
            f"{name}: signature does not verify against {keyring} "
            f"({done.stderr.decode(errors='replace').strip()[-300:]}); run 'apt-get update' "
            "again, or give the keyring that signs this archive"
        )
    digests: dict[str, str] = {}
    in_sha256 = False
    for line in done.stdout.decode().splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        fields = line.split()
        if in_sha256 and len(fields) == 3 and _HEX64.fullmatch(fields[0]):
            digests[fields[0]] = fields[2]
    return digests


def _read_packages(path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """The digest of the (decompressed) index and its .debs' fields by digest.

    apt keeps lists recompressed (lz4, gz, xz) or plain; its own ``cat-file``
    undoes whichever, so this reads what apt reads.
    """
    with subprocess.Popen([_APT_HELPER, "cat-file", str(path)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        digest = hashlib.sha256()
        packages: dict[str, dict[str, str]] = {}
        for stanza in _stanzas(proc.stdout, digest.update):
            sha = stanza.get("SHA256", "")
            if _HEX64.fullmatch(sha) and "Package" in stanza and "Version" in stanza:
                packages[sha] = {
                    "name": stanza["Package"],
                    "version": stanza["Version"],
                    "architecture": stanza.get("Architecture", ""),
                    "filename": stanza.get("Filename", ""),
                }
    if proc.returncode != 0:
        raise GpuwardError(f"{path}: apt-helper cannot read this index (exit {proc.returncode})")
    return digest.hexdigest(), packages


_WANTED = (b"Package:", b"Version:", b"Architecture:", b"Filename:", b"SHA256:")


def _stanzas(lines: Iterable[bytes], hashed: Callable[[bytes], None]) -> Iterator[dict[str, str]]:
    """The fields this module reads of each deb822 stanza, passing every line to ``hashed``."""
    stanza: dict[str, str] = {}
    for raw in lines:
        hashed(raw)
        if raw == b"\n":
            if stanza:
                yield stanza
            stanza = {}
        elif raw.startswith(_WANTED):
            key, _, value = raw.decode().partition(":")
            stanza[key] = value.strip()
    if stanza:
        yield stanza


@dataclass(frozen=True)
class PublishedFile:
    """A file whose publisher states its SHA-256 (an NVIDIA runfile and its checksum)."""

    uri: str
    sha256: str


def statement(
    bundle_name: str,
    bundle_sha256: str,
    manifest: BundleManifest,
    *,
    indexes: Iterable[SignedIndex] = (),
    published: Iterable[PublishedFile] = (),
) -> dict[str, Any]:
    """The in-toto Statement for a bundle built from ``manifest``'s payload.

    Every .deb in the payload must be listed by one of ``indexes``, and every
    ``published`` file must be in the payload with the digest its publisher
    states: provenance that leaves an input unexplained is refused, not written.
    """
    by_digest = {sha: pkg for index in indexes for sha, pkg in index.packages.items()}
    payload = {f.sha256: f.name for f in manifest.files}
    dependencies: list[dict[str, Any]] = []
    used: dict[str, SignedIndex] = {}
    for file in manifest.files:
        if not file.name.endswith(".deb"):
            continue
        package = by_digest.get(file.sha256)
        if package is None:
            raise GpuwardError(
                f"{file.name} (sha256 {file.sha256}) is in no Packages index a verified "
                "InRelease lists: give --apt-lists, the lists folder of the apt that fetched it"
            )
        used.update({i.index: i for i in indexes if i.index == package.index})
        dependencies.append(
            {
                "uri": f"pkg:deb/debian/{package.name}@{package.version}"
                f"?arch={package.architecture}",
                "name": package.filename,
                "digest": {"sha256": package.sha256},
                "annotations": {"payload": file.name, "index": package.index},
            }
        )
    for index in sorted(used.values(), key=lambda i: i.index):
        dependencies.append(
            {
                "name": index.index,
                "digest": {"sha256": index.index_sha256},
                "annotations": {"signedBy": index.release},
            }
        )
    for release in sorted({(i.release, i.release_sha256) for i in used.values()}):
        dependencies.append({"name": release[0], "digest": {"sha256": release[1]}})
    for source in published:
        if source.sha256 not in payload:
            raise GpuwardError(
                f"{source.uri}: no payload file has its published sha256 {source.sha256}; "
                "the payload is not the file its publisher vouches for"
            )
        dependencies.append(
            {
                "uri": source.uri,
                "digest": {"sha256": source.sha256},
                "annotations": {"payload": payload[source.sha256]},
            }
        )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": bundle_name, "digest": {"sha256": bundle_sha256}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"manifest": manifest.to_dict()},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": BUILDER_ID}},
        },
    }


def sign(statement_doc: Mapping[str, Any], signer: Signer) -> bytes:
    """The DSSE envelope (JSON) of ``statement_doc``, signed by ``signer``."""
    payload = json.dumps(statement_doc, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
    envelope.create_signature(signer)
    return json.dumps(envelope.to_dict(), sort_keys=True, indent=2).encode()


def build_signer(keys_dir: Path, passphrase: PassphraseSource) -> Signer:
    """The build key of keys folder ``keys_dir``, made (sealed) on first use."""
    keyring = Keyring(keys_dir)
    named = [k for k in keyring.keys().values() if k.name == BUILD_KEY_NAME]
    if named:
        return keyring.signer(named[0], passphrase)
    problem = sealed.passphrase_problem(passphrase())
    if problem is not None:
        raise GpuwardError(f"the passphrase to seal the new build key is too weak: {problem}")
    return keyring.signer(keyring.generate(BUILD_KEY_NAME, passphrase=passphrase()), passphrase)


def attest(
    bundle: Path,
    manifest: BundleManifest,
    signer: Signer,
    *,
    indexes: Iterable[SignedIndex] = (),
    published: Iterable[PublishedFile] = (),
) -> Path:
    """Write ``bundle``'s signed provenance beside it; its path."""
    doc = statement(
        bundle.name, sha256_file(bundle), manifest, indexes=indexes, published=published
    )
    path = attestation_path(bundle)
    atomic_write(path, sign(doc, signer))
    return path


def load_build_key(path: Path) -> SSlibKey:
    """The build key's public half from its description (``<keys>/build.pub.json``)."""
    data = read_bounded(path, 64 * 1024, "build key")
    try:
        key_doc = dict(json.loads(data)["key"])
        return SSlibKey.from_dict(key_doc.pop("keyid"), key_doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise GpuwardError(
            f"{path}: not a build key description ({exc}); copy the build keys folder's "
            "build.pub.json"
        ) from None


def _envelope(data: bytes) -> Envelope:
    try:
        parsed = Envelope.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceRefused(f"provenance is not a DSSE envelope ({exc})") from None
    if parsed.payload_type != ENVELOPE_PAYLOAD_TYPE:
        raise ProvenanceRefused(f"provenance payload type is {parsed.payload_type!r}")
    return parsed


def _statement(envelope: Envelope) -> tuple[dict[str, Any], list[str]]:
    """The SLSA provenance Statement an envelope carries, and its subjects' digests."""
    try:
        stmt = json.loads(envelope.payload)
        subjects = [str(s["digest"]["sha256"]) for s in stmt["subject"]]
        kind = (stmt["_type"], stmt["predicateType"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceRefused(f"provenance is not an in-toto Statement ({exc})") from None
    if kind != (STATEMENT_TYPE, SLSA_PROVENANCE):
        raise ProvenanceRefused(f"provenance is a {kind[0]} of {kind[1]}, not SLSA provenance")
    return dict(stmt), subjects


def subject_digests(data: bytes) -> list[str]:
    """The digests an attestation names as its subjects, its signature unchecked:
    publishing catches a provenance put beside the wrong bundle; agents verify."""
    return _statement(_envelope(data))[1]


def verify_provenance(envelope: bytes, bundle_sha256: str, build_key: SSlibKey) -> dict[str, Any]:
    """The Statement in ``envelope`` once it is signed by ``build_key`` and names
    ``bundle_sha256`` as its subject; else ``ProvenanceRefused`` saying why."""
    parsed = _envelope(envelope)
    try:
        parsed.verify([build_key], 1)
    except VerificationError:
        raise ProvenanceRefused(
            f"provenance is not signed by the build key {build_key.keyid[:16]}"
        ) from None
    stmt, subjects = _statement(parsed)
    if bundle_sha256 not in subjects:
        raise ProvenanceRefused(
            f"provenance is for another bundle (subject {', '.join(subjects)[:80]}, "
            f"not {bundle_sha256})"
        )
    return stmt


def is_sha256(text: str) -> bool:
    return _HEX64.fullmatch(text) is not None
