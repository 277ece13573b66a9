"""Compliance reports signed by a report key that lives in a PKCS#11 token (SoftHSM2).

The key is ECDSA P-256, the kind securesystemslib's HSMSigner signs with and
OpenSSL checks with its default SHA-256, so auditors check these reports
exactly as the file key's: ``gpuward report verify`` and ``openssl pkeyutl
-verify -rawin`` with ``report.pub``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from keys.report_key import ECDSA_P256, key_id, load_public
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import make_site
from tests.report.test_report import assert_verifies_until_a_byte_changes
from tests.softhsm import MODULE, SoftHsm


def _report_key_in_token(repo: Path, token: str) -> tuple[str, Path]:
    """``gpuward server report-key --pkcs11-token``: the signer URI and public key file."""
    shown = gpuward("server", "report-key", "--repo", str(repo), "--pkcs11-token", token)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(": ", 1) for line in shown.stdout.splitlines() if ": " in line)
    uri = lines["server.toml"].split('"')[1]
    return uri, Path(lines["public key"].split(" ")[0])


def test_reports_signed_inside_the_token(
    softhsm: SoftHsm, _template_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(_template_repo, repo)
    uri, public = _report_key_in_token(repo, softhsm.label)
    assert uri.startswith("hsm:") and not (repo / "keys" / "report.key").exists()
    assert _report_key_in_token(repo, softhsm.label) == (uri, public)  # found, not made again

    for site in make_site(
        repo,
        tmp_path / "site",
        str(tmp_path / "server.db"),
        report_key_uri=uri,
        report_key_pin_file=softhsm.pin_file,
    ):
        viewer = tmp_path / "viewer.token"
        viewer.write_text(site.server.issue_token("viewer"))
        # The auditor's copy of the public key: the one the server wrote beside its repository.
        served_public = site.repo.root / "keys" / "report.pub"
        assert served_public.read_bytes() == public.read_bytes()
        for fmt in ("json", "pdf"):
            report = tmp_path / f"fleet.{fmt}"
            done = gpuward(
                "report", "fleet", "-o", str(report),
                "--server", site.url, "--token-file", str(viewer),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            if fmt == "json":
                doc = json.loads(report.read_text())
                expected = {"algorithm": ECDSA_P256, "key_id": key_id(load_public(public))}
                assert doc["signed_by"] == expected
            assert_verifies_until_a_byte_changes(served_public, report)

        # Without the token named, the command must not make a file key in its place.
        fallback = gpuward("server", "report-key", "--repo", str(site.repo.root))
        assert_one_line_error(fallback, "report.pub is there but not report.key", "PKCS#11")
        assert served_public.read_bytes() == public.read_bytes()


def test_a_wrong_pin_or_a_half_config_stops_the_server(
    softhsm: SoftHsm, _template_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(_template_repo, repo)
    uri, _ = _report_key_in_token(repo, softhsm.label)
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("111111\n")
    config = ServerConfig(
        repo=repo,
        db=str(tmp_path / "server.db"),
        port=0,
        report_key_uri=uri,
        report_key_module=MODULE,
        report_key_pin_file=wrong,
    )
    with pytest.raises(GpuwardError, match=f"wrong PIN for PKCS#11 token {softhsm.label}"):
        BackgroundServer(config).start()
    with pytest.raises(GpuwardError, match="needs report_key_pin_file"):
        BackgroundServer(replace(config, report_key_pin_file=None)).start()
    with pytest.raises(GpuwardError, match="not both"):
        BackgroundServer(replace(config, report_key=repo / "keys" / "report.key")).start()
    monkeypatch.setenv("GPUWARD_HSM_PIN_FILE", str(wrong))
    shown = gpuward("server", "report-key", "--repo", str(repo), "--pkcs11-token", softhsm.label)
    assert_one_line_error(shown, "wrong PIN")
