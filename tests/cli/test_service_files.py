"""Root running the README's set-up leaves files the services can use.

These tests run as root (as the README's commands do) with a throwaway system
account standing for the service's (``gpuward``, ``gpuward-server``): it owns
the folder, as the packages' tmpfiles make it, and afterwards uses what root
created, through ``runuser``, as systemd's ``User=`` would.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attest.conftest import Tpm
from tests.cli.test_errors import assert_one_line_error
from tests.conftest import Site

GPUWARD = str(Path(sys.executable).parent / "gpuward")


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    name = f"gwtest-{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
         "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every account can reach (pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="gpuward-service-files-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def gpuward(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``gpuward`` command, as root or, with ``user``, as that account."""
    prefix = [] if user is None else ["runuser", "-u", user, "--"]
    return subprocess.run(
        [*prefix, GPUWARD, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def service_folder(path: Path, owner: pwd.struct_passwd) -> Path:
    """``path`` made as the packages make a service's folder: its account's, 0750."""
    path.mkdir(parents=True)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o750)
    return path


def owners(folder: Path) -> dict[str, tuple[int, int]]:
    """Owner and group of ``folder`` and of everything in it."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_uid, p.lstat().st_gid)
        for p in [folder, *folder.rglob("*")]
    }


def agent_config(site: Site, shared: Path, extra: str = "") -> str:
    """A packaged node's config, everything the agent reads where its account can.

    The enrollment token stays in root's own folder: enrolling reads it before
    it becomes the agent's account, as /etc/gpuward's root-only files are read.
    """
    shutil.copyfile(site.base / "trusted-root.json", shared / "trusted-root.json")
    config = site.agent_toml(shared, extra=extra, mode="applier")
    config.write_text(
        config.read_text().replace(
            str(site.base / "trusted-root.json"), str(shared / "trusted-root.json")
        )
    )
    return str(config)


def test_root_enrolls_as_the_agents_account(
    site: Site, shared: Path, account: pwd.struct_passwd
) -> None:
    state = service_folder(shared / "host/var/lib/gpuward", account)
    config = agent_config(site, shared)

    enrolled = gpuward("agent", "enroll", "--config", config, "--json")

    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["node_id"] == "n1"
    key = state / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    ids = (account.pw_uid, account.pw_gid)
    assert owners(state) == {".": ids, "node.key": ids}
    # The agent, as its unit runs it, signs its report with that key.
    cycle = gpuward("agent", "run", "--once", "--config", config, "--json", user=account.pw_name)
    assert cycle.returncode == 0, cycle.stderr
    assert json.loads(cycle.stdout)["report_sent"] is True
    assert site.fleet()["n1"]["report"] is not None


@pytest.mark.parametrize(
    ("left", "extra"),
    [(["node.key"], ""), (["attest", "attest/ak.pub"], '[attestation]\ntcti = "swtpm:port=1"\n')],
    ids=["key", "tpm-ak"],
)
def test_root_refuses_files_an_earlier_root_run_left(
    site: Site, shared: Path, account: pwd.struct_passwd, left: list[str], extra: str
) -> None:
    state = service_folder(shared / "host/var/lib/gpuward", account)
    *folders, file = [state / name for name in left]
    for folder in folders:
        folder.mkdir()
    file.write_bytes(b"made by root before\n")  # root's, 0600: the agent cannot read it
    file.chmod(0o600)

    refused = gpuward("agent", "enroll", "--config", agent_config(site, shared, extra))

    listed = " ".join(str(state / name) for name in left)
    assert_one_line_error(
        refused,
        f"{state} is {account.pw_name}'s, for its service, but {listed}",
        f"root's: run 'chown {account.pw_name}: {listed}', then run again",
    )
    assert file.read_bytes() == b"made by root before\n"
    assert "n1" not in site.fleet()


def test_root_enrolls_with_the_tpm_as_the_agents_account(
    tpm_site: Site, tpm: Tpm, shared: Path, account: pwd.struct_passwd
) -> None:
    state = service_folder(shared / "host/var/lib/gpuward", account)
    config = agent_config(tpm_site, shared, f'[attestation]\ntcti = "{tpm.tcti}"\n')

    enrolled = gpuward("agent", "enroll", "--config", config, "--json")

    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["attestation"] == "tpm2"
    ids = (account.pw_uid, account.pw_gid)
    assert owners(state) == {".": ids, "node.key": ids, "attest": ids, "attest/ak.pub": ids}


def test_root_creates_the_servers_database_as_the_servers_account(
    shared: Path, account: pwd.struct_passwd
) -> None:
    folder = service_folder(shared / "var/lib/gpuward-server", account)
    db = folder / "server.db"

    created = gpuward("server", "token", "create", "--role", "admin", "--db", f"sqlite://{db}")

    assert created.returncode == 0, created.stderr
    assert set(owners(folder).values()) == {(account.pw_uid, account.pw_gid)}
    assert db.stat().st_mode & 0o027 == 0  # never more open than the service's UMask
    # The server's account writes to it (the refused case: "readonly database").
    again = gpuward("server", "token", "create", "--role", "viewer", "--db", str(db),
                    user=account.pw_name)  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_root_refuses_a_database_it_made_before_the_service_owned_the_folder(
    shared: Path, account: pwd.struct_passwd
) -> None:
    folder = shared / "var/lib/gpuward-server"
    folder.mkdir(parents=True)  # root's: root writes as itself, as before
    db = folder / "server.db"
    assert gpuward("server", "token", "create", "--role", "admin", "--db", str(db)).returncode == 0
    assert db.stat().st_uid == 0
    os.chown(folder, account.pw_uid, account.pw_gid)  # then the package was installed

    refused = gpuward("server", "token", "create", "--role", "admin", "--db", str(db))

    assert_one_line_error(refused, f"but {db} is root's", f"chown {account.pw_name}: {db}'")


def test_a_folder_owned_by_no_account_is_refused(shared: Path) -> None:
    folder = shared / "server"
    folder.mkdir()
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    uid = next(u for u in range(60000, 61000) if u not in taken)
    os.chown(folder, uid, uid)

    refused = gpuward("server", "token", "create", "--role", "admin", "--db", str(folder / "db"))

    assert_one_line_error(refused, f"belongs to uid {uid}, which has no account")
    assert list(folder.iterdir()) == []


def test_root_imports_later_bundles_into_the_servers_repository_as_its_account(
    site: Site, shared: Path, account: pwd.struct_passwd
) -> None:
    """README: the server's part goes in with ``repo export-server``, later
    bundles with ``mirror import``; both as root, both leave the server's files."""
    state = service_folder(shared / "gpuward-server", account)
    assert gpuward("repo", "export-server", "--repo", str(site.repo.root),
                   "--to", str(state)).returncode == 0  # fmt: skip
    site.publish("580.95.05")
    update = shared / "update.tar"
    exported = gpuward("mirror", "export", "--repo", str(site.repo.root), "--to", str(update))
    assert exported.returncode == 0, exported.stderr
    update.chmod(0o644)
    imported = gpuward("mirror", "import", str(update), "--repo", str(state / "repo"))
    assert imported.returncode == 0, imported.stderr
    assert "the site signed snapshot" in imported.stdout  # re-signed with the server's keys
    mine = (account.pw_uid, account.pw_gid)
    assert {path: ids for path, ids in owners(state).items() if ids != mine} == {}
    # The server's account can sign the next timestamp in what root imported.
    renewed = subprocess.run(
        ["runuser", "-u", account.pw_name, "--", sys.executable, "-c",
         "import sys; from keys.image_repo import ImageRepository; "
         "ImageRepository(__import__('pathlib').Path(sys.argv[1])).sign_timestamp()",
         str(state / "repo")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
