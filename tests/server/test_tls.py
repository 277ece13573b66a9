"""HTTPS on the server's own port (``tls_cert``, ``tls_key``), and the agent and the
operator's commands verifying it against the CA file they are given.

The test makes its own CA and a certificate for 127.0.0.1 with ``cryptography``,
and a second CA that signed nothing of the server's: the wrong CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.config import load_config
from node.slots import Slots
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site, make_site

DAY = datetime.timedelta(days=1)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(folder: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert, _pem(folder / f"{name}.pem", cert)


def _server_cert(
    folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("gpuward server"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_file = folder / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return _pem(folder / "server.pem", cert), key_file


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, ca, ca_file = _ca(folder, "fleet-ca")
    cert, key = _server_cert(folder, ca_key, ca)
    _, _, wrong = _ca(folder, "another-ca")
    return {"ca": ca_file, "wrong_ca": wrong, "cert": cert, "key": key}


@pytest.fixture
def tls_site(
    _template_repo: Path, _template_director: Path, tmp_path: Path, pki: dict[str, Path]
) -> Iterator[Site]:
    yield from make_site(
        _template_repo,
        tmp_path,
        str(tmp_path / "server.db"),
        director=_template_director,
        tls_cert=pki["cert"],
        tls_key=pki["key"],
    )


def test_agents_verify_the_server_against_their_ca_file(
    tls_site: Site, pki: dict[str, Path], tmp_path: Path
) -> None:
    site = tls_site
    assert site.url.startswith("https://127.0.0.1:")
    published = site.publish("580.95.05")
    (tmp_path / "node").mkdir()
    config = site.agent_toml(tmp_path / "node", extra=f'server_ca = "{pki["ca"]}"\n')
    wrong = config.with_name("agent-wrong-ca.toml")
    wrong.write_text(config.read_text().replace(str(pki["ca"]), str(pki["wrong_ca"])))

    # The wrong CA: refused at once, naming the CA file, before anything is sent.
    refused = gpuward("agent", "enroll", "--config", str(wrong))
    assert_one_line_error(refused, "TLS refused", f"server_ca {pki['wrong_ca']}")

    enrolled = gpuward("agent", "enroll", "--config", str(config), "--json")
    assert enrolled.returncode == 0, enrolled.stderr

    # Enrolled, but verifying against the wrong CA: no metadata, no bundle, no report.
    refused = gpuward("agent", "run", "--once", "--config", str(wrong))
    assert_one_line_error(refused, "TLS refused", f"server_ca {pki['wrong_ca']}")
    slots = Slots(load_config(config).slots_dir)
    assert slots.active() is None

    ran = gpuward("agent", "run", "--once", "--config", str(config), "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["update"], result["report_sent"]) == ("committed", True)
    assert result["report"]["bundle"] == published.target_path

    # The operator's commands verify the server the same way.
    token = tmp_path / "viewer.token"
    token.write_text(site.server.issue_token("viewer"))
    server = ["--server", site.url, "--token-file", str(token)]
    listed = gpuward("nodes", "list", "--json", *server, "--ca-file", str(pki["ca"]))
    assert listed.returncode == 0, listed.stderr
    [node] = json.loads(listed.stdout)
    assert (node["node_id"], node["report"]["update"]) == ("n1", "committed")
    unverified = gpuward("nodes", "list", *server)
    assert_one_line_error(unverified, "TLS refused", "the system's CA certificates", "--ca-file")


def test_plain_http_to_the_tls_port_gets_no_answer(tls_site: Site) -> None:
    plain = tls_site.url.replace("https://", "http://")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        urllib3.request("GET", f"{plain}/healthz", retries=False, timeout=10)


def test_a_certificate_without_its_key_is_refused(
    site: Site, pki: dict[str, Path], tmp_path: Path
) -> None:
    command = ["server", "run", "--repo", str(site.repo.root), "--db", str(tmp_path / "d.db")]
    alone = gpuward(*command, "--tls-cert", str(pki["cert"]))
    assert_one_line_error(alone, "--tls-cert and --tls-key")
    mismatched = gpuward(*command, "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["ca"]))
    assert_one_line_error(mismatched, f"TLS certificate {pki['cert']} and key {pki['ca']}")
