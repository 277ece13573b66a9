"""``gpuward repo export-server``: the server's part, and not one offline key.

What the export holds is read back the way the server reads it (keys.keyring's
descriptions, the root metadata's roles), and a real server started from it
serves a node and re-signs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from structlog.testing import capture_logs

from gpuward.node import run_once
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from keys.keyring import Keyring
from keys.tuf_repo import TufRepository
from server.lifecycle import BackgroundServer
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import GPU_NAME, Site


def export(site: Site, out: Path) -> dict[str, object]:
    assert site.director is not None
    result = gpuward(
        "repo", "export-server", "--repo", str(site.repo.root),
        "--director", str(site.director.root), "--to", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def trust(repo: TufRepository) -> tuple[set[str], set[str]]:
    """The keyids only online roles trust, and those any offline role trusts."""
    root = repo.root_metadata().signed
    roles = {role: set(r.keyids) for role, r in root.roles.items()}
    delegations = repo.targets().signed.delegations
    if delegations is not None and delegations.roles is not None:
        roles |= {name: set(role.keyids) for name, role in delegations.roles.items()}
    offline = set().union(*(ids for role, ids in roles.items() if role not in repo.online_roles))
    online = set().union(*(roles[role] for role in repo.online_roles))
    return online - offline, offline


def test_the_export_holds_only_online_keys_and_a_server_runs_from_it(
    site: Site, tmp_path: Path
) -> None:
    published = site.publish("580.65.06")  # delegates R580, with its own sealed key
    out = tmp_path / "server-part"
    exported = export(site, out)
    assert sorted(os.listdir(out)) == ["director", "repo"]

    image, director = ImageRepository(out / "repo"), DirectorRepository(out / "director")
    assert "R580-1" in {k.name for k in site.repo.keyring.keys().values()}  # there to leave
    for repo, source in ((image, site.repo), (director.base, site.director)):
        assert source is not None
        online, offline = trust(repo)
        held = repo.keyring.keys()
        assert set(held) == online and not set(held) & offline
        assert repo.keyring.sealed_keys() == []
        for path in repo.keyring.dir.iterdir():
            assert b"gpuward-sealed" not in path.read_bytes()
            if path.name.endswith(".key"):
                assert path.stat().st_mode & 0o777 == 0o600
                load_pem_private_key(path.read_bytes(), password=None)  # usable unattended
    assert exported["keys"] == [
        "repo/snapshot-1", "repo/timestamp-1",
        "director/snapshot-1", "director/targets-1", "director/timestamp-1",
    ]  # fmt: skip
    assert {p.name for p in (out / "repo/keys").iterdir()} == {
        "snapshot-1.key", "snapshot-1.pub.json", "timestamp-1.key", "timestamp-1.pub.json",
        "report.key", "report.pub",  # the report key the site's server made: auditors hold it
    }  # fmt: skip

    # A server from the export alone: it renews a timestamp about to lapse, and serves.
    image.sign_timestamp(expires=datetime.now(UTC) + timedelta(minutes=5))
    info = image.targets("R580").signed.targets[published.target_path]
    director.assign("node-1", info, GPU_NAME, 1)
    site.server.stop()
    config = dataclasses.replace(
        site.server.config, repo=image.root, director=director.root, port=0
    )
    with capture_logs() as logs, BackgroundServer(config) as server:
        site.server = server
        assert image.timestamp().signed.expires > datetime.now(UTC) + timedelta(hours=23)
        assert run_once(site.agent(directed=True)).outcome.update == "committed"
    assert not [
        e for e in logs if e["event"] in ("offline_keys_on_server", "metadata_renewal_failed")
    ]


def test_the_export_refuses_a_folder_that_is_not_empty(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "server.db").write_bytes(b"")
    result = gpuward("repo", "export-server", "--repo", str(site.repo.root), "--to", str(out))
    assert_one_line_error(result, str(out), "not empty")
    assert os.listdir(out) == ["server.db"]


def test_an_export_without_the_online_keys_is_refused(site: Site, tmp_path: Path) -> None:
    export(site, tmp_path / "first")
    for path in (tmp_path / "first/repo/keys").glob("timestamp-1.*"):
        path.unlink()
    again = tmp_path / "again"
    result = gpuward(
        "repo", "export-server", "--repo", str(tmp_path / "first/repo"), "--to", str(again)
    )
    assert_one_line_error(result, "holds 0 of the 1 timestamp key(s)")
    assert not again.exists()


def test_as_root_the_export_belongs_to_the_folders_owner(site: Site, tmp_path: Path) -> None:
    """``--to /var/lib/gpuward-server`` run by root: the service can re-sign it."""
    assert os.geteuid() == 0, "the package tests and this one run as root"
    state = tmp_path / "var-lib-gpuward-server"
    state.mkdir(mode=0o750)
    os.chown(state, 4242, 4243)
    export(site, state)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in state.rglob("*")}
    assert owners == {(4242, 4243)}
    # Into a root-owned folder, the files stay root's.
    export(site, tmp_path / "mine")
    assert {p.stat().st_uid for p in (tmp_path / "mine").rglob("*")} == {0}


def test_keys_init_says_which_keys_stay_offline(tmp_path: Path) -> None:
    result = gpuward("keys", "init", str(tmp_path / "repo"), "--single-custodian")
    assert result.returncode == 0, result.stderr
    assert "stay offline" in result.stdout and "gpuward repo export-server" in result.stdout
    assert "never copy" not in result.stdout
    assert Keyring(tmp_path / "repo/keys").sealed_keys() == [
        "root-1", "root-2", "root-3", "targets-1",
    ]  # fmt: skip
