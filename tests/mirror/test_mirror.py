"""Mirrors: export, verify, import into an air-gapped server, serve with nginx.

Agents keep the roots they have; whatever a mirror serves is verified exactly
as if the server had served it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon import run_once
from agent.identity import enroll
from keys.mirror import check_manifest
from server.config import ServerConfig
from server.runner import BackgroundServer
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.simnode import ENROLLMENT_TOKEN


def _export(site: Site, tmp_path: Path) -> Path:
    out = tmp_path / "mirror"
    done = gpuward("mirror", "export", "--repo", str(site.repo.root), "--to", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return out


def _bundle_in(mirror: Path) -> Path:
    [bundle] = list((mirror / "v1/repo/targets/drivers/R580").iterdir())
    return bundle


def assert_verifies(site: Site, mirror: Path) -> str:
    """``mirror verify`` passes and checks the one bundle published; the root it used."""
    root = str(site.base / "trusted-root.json")
    verified = gpuward("mirror", "verify", str(mirror), "--trusted-root", root, "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["targets"] == ["drivers/R580/nvidia-580.65.06.bundle"]
    return root


def test_export_verifies_offline_and_tampering_is_caught(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    out = _export(site, tmp_path)
    root = assert_verifies(site, out)

    bundle = _bundle_in(out)
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"!")
    assert_one_line_error(gpuward("mirror", "verify", str(out), "--trusted-root", root), "changed")
    # An attacker who also rewrites the manifest still meets TUF.
    manifest = json.loads((out / "MANIFEST.json").read_text())
    name = bundle.relative_to(out).as_posix()
    manifest["files"][name] = hashlib.sha256(bundle.read_bytes()).hexdigest()
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    check_manifest(out)
    assert_one_line_error(
        gpuward("mirror", "verify", str(out), "--trusted-root", root), "LengthOrHashMismatchError"
    )


def test_import_into_an_air_gapped_server_and_update_from_it(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    out = _export(site, tmp_path)
    gapped = tmp_path / "gapped-repo"
    assert gpuward("mirror", "import", str(out), "--repo", str(gapped)).returncode == 0
    assert not (gapped / "keys").exists()  # keys never travel

    config = ServerConfig(
        gapped, str(tmp_path / "gapped.db"), port=0, unattested_enrollment_token=ENROLLMENT_TOKEN
    )
    with BackgroundServer(config) as inside:
        agent = dataclasses.replace(site.agent("inside-1", enrolled=False), server_url=inside.url)
        enroll(agent)
        result = run_once(agent)
        assert result.outcome.update == "committed"
        assert result.report_sent

        # A tampered bundle on the inside server is refused like any other.
        site.publish("580.82.07")
        newer = tmp_path / "mirror-2"
        assert (
            gpuward(
                "mirror", "export", "--repo", str(site.repo.root), "--to", str(newer)
            ).returncode
            == 0
        )
        assert gpuward("mirror", "import", str(newer), "--repo", str(gapped)).returncode == 0
        served = gapped / "targets/drivers/R580"
        [new_bundle] = [p for p in served.iterdir() if "580.82.07" in p.name]
        new_bundle.write_bytes(new_bundle.read_bytes()[:-1] + b"!")
        refused = run_once(agent)
        assert refused.outcome.update == "refused"
        assert "LengthOrHashMismatchError" in refused.outcome.reason


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """nginx serving ``tmp_path/www`` on a loopback port, stopped afterwards."""
    www = tmp_path / "www"
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        # Workers as root: pytest's temporary directories are private to root.
        f"user root root;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n"
        f" server {{\n  listen 127.0.0.1:{port};\n  root {www};\n }}\n}}\n"
    )
    subprocess.run(["nginx", "-c", str(conf), "-p", str(tmp_path)], check=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        yield www, f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["nginx", "-c", str(conf), "-p", str(tmp_path), "-s", "stop"], check=False)


def test_nginx_serves_an_export_as_a_mirror(
    site: Site, tmp_path: Path, nginx: tuple[Path, str]
) -> None:
    www, url = nginx
    site.publish("580.65.06")
    export = _export(site, tmp_path)
    shutil.copytree(export, www)
    agent = dataclasses.replace(site.agent(), mirrors=(url,), fetch_timeout_s=5)
    site.server.stop()  # only the static mirror is left

    result = run_once(agent)

    assert result.outcome.update == "committed"
    assert result.report.driver_version == "580.65.06"
