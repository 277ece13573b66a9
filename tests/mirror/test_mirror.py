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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from agent.identity import enroll
from gpuward.cli.mirror_cmd import verified_targets
from gpuward.node import run_once
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from server.mirror import MANIFEST, MirrorManifest, Verifier, check_manifest
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.netutil import free_port
from tests.simnode import ENROLLMENT_TOKEN


def _export(site: Site, tmp_path: Path, name: str = "mirror") -> Path:
    out = tmp_path / name
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


def verifier(root: Path) -> Verifier:
    """``mirror import``'s check (``mirror verify``'s), from the root ``root``."""
    return lambda out: verified_targets(out, root)


def tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the digest of its content (links included)."""
    return {
        p.relative_to(folder).as_posix(): (
            "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir"
        )
        for p in folder.rglob("*")
    }  # fmt: skip


def export_files(mirror: Path) -> dict[str, str]:
    """What the export serves, by path in the mirror (its MANIFEST.json aside)."""
    return {k: v for k, v in tree(mirror).items() if v != "dir" and k != MANIFEST}


def manifest_of(mirror: Path) -> bytes:
    """A MANIFEST.json for what ``mirror`` holds now: an attacker's, after tampering."""
    return MirrorManifest(export_files(mirror)).to_bytes()


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
    # The first import: the repository serves no root yet, so the agents' root is given.
    root = str(site.base / "trusted-root.json")
    first = gpuward("mirror", "import", str(out), "--repo", str(gapped), "--trusted-root", root)
    assert first.returncode == 0, first.stderr
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


def _changed_bundle(mirror: Path) -> None:
    """The bytes of the bundle the site already serves: an import would overwrite it."""
    [bundle] = (mirror / "v1/repo/targets/drivers/R580").glob("*580.65.06.bundle")
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"!")


def _unsigned(name: str) -> Metadata[Any]:
    """Metadata at version 999999 that nobody signed: what an attacker can write."""
    md: Metadata[Any] = Metadata.from_bytes(Path(name).read_bytes())
    md.signed.version = 999999
    md.signatures.clear()
    return md


def _branch_at_999999(mirror: Path) -> None:
    """An unsigned branch role at version 999999, and the snapshot naming it: had it
    been imported, every later genuine export would be "older" than the site."""
    metadata = mirror / "v1/repo/metadata"
    timestamp = Metadata[Timestamp].from_bytes((metadata / "timestamp.json").read_bytes())
    snapshot_file = metadata / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
    snapshot = Metadata[Snapshot].from_bytes(snapshot_file.read_bytes())
    current = snapshot.signed.meta["R580.json"].version
    (metadata / "999999.R580.json").write_bytes(
        _unsigned(str(metadata / f"{current}.R580.json")).to_bytes()
    )
    snapshot.signed.meta["R580.json"] = MetaFile(999999)
    snapshot_file.write_bytes(snapshot.to_bytes())  # its signatures no longer match


def _timestamp_at_999999(mirror: Path) -> None:
    metadata = mirror / "v1/repo/metadata"
    (metadata / "timestamp.json").write_bytes(
        _unsigned(str(metadata / "timestamp.json")).to_bytes()
    )


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "bundle bytes changed": (_changed_bundle, "LengthOrHashMismatchError"),
    "unsigned branch role at version 999999": (_branch_at_999999, "UnsignedMetadataError"),
    "unsigned timestamp at version 999999": (_timestamp_at_999999, "UnsignedMetadataError"),
}


@pytest.mark.parametrize("attack", sorted(TAMPERING))
def test_a_tampered_export_is_refused_by_import_as_by_verify(
    site: Site, tmp_path: Path, attack: str
) -> None:
    """The tampering is carried through MANIFEST.json, so that only TUF can catch it:
    import refuses it with verify's own error before writing anything, and the next
    genuine export is imported as if the attack had never come."""
    tamper, error = TAMPERING[attack]
    site.publish("580.65.06")
    root = str(site.base / "trusted-root.json")
    gapped = tmp_path / "gapped-repo"
    first = _export(site, tmp_path, "first")
    done = gpuward("mirror", "import", str(first), "--repo", str(gapped), "--trusted-root", root)
    assert done.returncode == 0, done.stderr
    site.publish("580.82.07")
    hostile = _export(site, tmp_path, "hostile")
    tamper(hostile)
    (hostile / MANIFEST).write_bytes(manifest_of(hostile))
    check_manifest(hostile)
    before = tree(gapped)

    verified = gpuward("mirror", "verify", str(hostile), "--trusted-root", root)
    imported = gpuward("mirror", "import", str(hostile), "--repo", str(gapped))
    explicit = ("mirror", "import", str(hostile), "--repo", str(gapped), "--trusted-root", root)

    refusal = assert_one_line_error(verified, error)
    assert assert_one_line_error(imported, error) == refusal
    assert assert_one_line_error(gpuward(*explicit), error) == refusal
    assert tree(gapped) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gpuward-")]

    genuine = _export(site, tmp_path, "genuine")
    done = gpuward("mirror", "import", str(genuine), "--repo", str(gapped), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["targets"] == [
        "drivers/R580/nvidia-580.65.06.bundle",
        "drivers/R580/nvidia-580.82.07.bundle",
    ]
    served = {f"v1/repo/{k}": v for k, v in tree(gapped).items() if v != "dir"}
    assert served == export_files(genuine)  # exactly upstream's, nothing of the attack


def test_a_link_in_a_directory_export_is_refused_by_import(site: Site, tmp_path: Path) -> None:
    """A directory export is copied as an archive is unpacked: links refused, not followed."""
    site.publish("580.65.06")
    out = _export(site, tmp_path)
    (out / "v1/repo/metadata/evil.json").symlink_to("/etc/passwd")
    gapped = tmp_path / "gapped-repo"
    root = str(site.base / "trusted-root.json")

    refused = gpuward("mirror", "import", str(out), "--repo", str(gapped), "--trusted-root", root)

    assert_one_line_error(refused, "evil.json is not a plain file")
    assert not gapped.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gpuward-")]


def test_the_first_import_needs_the_agents_root(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    out = _export(site, tmp_path)
    gapped = tmp_path / "gapped-repo"

    refused = gpuward("mirror", "import", str(out), "--repo", str(gapped))

    assert_one_line_error(refused, "serves no root yet", "--trusted-root")
    assert not gapped.exists()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """nginx serving ``tmp_path/www`` on a loopback port, stopped afterwards."""
    www = tmp_path / "www"
    port = free_port()
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
