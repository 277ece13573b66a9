"""``gpuward-tuf-client`` speaks the TUF conformance suite's client protocol.

The suite learns which roles a client trusts by reading every ``*.json`` in its
metadata directory, so after each command the folder must hold exactly what
python-tuf's own client keeps there: each test drives python-tuf's ngclient as
its example client does, on a second folder, and compares the two.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from tests.conftest import PASSPHRASE, Site


def client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.tuf_client", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


class Reference:
    """python-tuf's own client on its own metadata folder, as examples/client runs it:
    the first root through ``bootstrap``, later runs trusting the cached root.json."""

    def __init__(self, site: Site, folder: Path) -> None:
        self.site, self.metadata = site, folder
        folder.mkdir()

    def _updater(self, target_dir: Path | None = None, bootstrap: bytes | None = None) -> Updater:
        return Updater(
            str(self.metadata),
            f"{self.site.url}/v1/repo/metadata/",
            None if target_dir is None else str(target_dir),
            f"{self.site.url}/v1/repo/targets/",
            bootstrap=bootstrap,
        )

    def init(self) -> None:
        self._updater(bootstrap=(self.site.base / "trusted-root.json").read_bytes())

    def refresh(self) -> bool:
        try:
            self._updater().refresh()
        except tuf_errors.RepositoryError:
            return False
        return True

    def download(self, name: str, dest: Path) -> bool:
        dest.mkdir(exist_ok=True)
        updater = self._updater(dest)
        try:
            info = updater.get_targetinfo(name)
            if info is None:
                return False
            updater.download_target(info)
        except tuf_errors.RepositoryError:
            return False
        return True


def layout(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: a link's target, a file's bytes, or a folder."""
    found: dict[str, object] = {}
    for entry in sorted(folder.rglob("*")):
        name = str(entry.relative_to(folder))
        if entry.is_symlink():
            found[name] = ("link", os.readlink(entry))
        elif entry.is_dir():
            found[name] = ("dir",)
        else:
            found[name] = ("file", entry.read_bytes())
    return found


class Clients:
    """gpuward-tuf-client and the reference, run side by side against one site."""

    def __init__(self, site: Site, tmp_path: Path) -> None:
        self.site = site
        self.metadata = tmp_path / "md"
        self.metadata.mkdir()  # the suite hands the client an existing, empty folder
        self.reference = Reference(site, tmp_path / "reference")
        self.tmp = tmp_path

    def same_layout(self) -> dict[str, object]:
        ours = layout(self.metadata)
        assert ours == layout(self.reference.metadata)
        return ours

    def init(self) -> dict[str, object]:
        result = client(
            "--metadata-dir", str(self.metadata), "init", str(self.site.base / "trusted-root.json")
        )
        assert result.returncode == 0, result.stderr
        self.reference.init()
        return self.same_layout()

    def refresh(self) -> subprocess.CompletedProcess[str]:
        url = f"{self.site.url}/v1/repo/metadata/"
        result = client("--metadata-dir", str(self.metadata), "--metadata-url", url, "refresh")
        assert (result.returncode == 0) == self.reference.refresh()
        self.same_layout()
        return result

    def download(self, name: str) -> subprocess.CompletedProcess[str]:
        result = client(
            "--metadata-dir", str(self.metadata),
            "--metadata-url", f"{self.site.url}/v1/repo/metadata/",
            "--target-name", name, "--target-base-url", f"{self.site.url}/v1/repo/targets/",
            "--target-dir", str(self.tmp / "targets"), "download",
        )  # fmt: skip
        assert (result.returncode == 0) == self.reference.download(name, self.tmp / "ref-targets")
        self.same_layout()
        return result


@pytest.fixture
def clients(site: Site, tmp_path: Path) -> Clients:
    return Clients(site, tmp_path)


def test_init_keeps_what_python_tuf_keeps(clients: Clients) -> None:
    installed = (clients.site.base / "trusted-root.json").read_bytes()
    assert clients.init() == {
        "root.json": ("link", "root_history/1.root.json"),
        "root_history": ("dir",),
        "root_history/1.root.json": ("file", installed),
    }


def test_init_refresh_download(clients: Clients) -> None:
    published = clients.site.publish("580.95.05")
    clients.init()
    assert clients.refresh().returncode == 0
    assert sorted(p for p in layout(clients.metadata) if p.endswith(".json")) == [
        "root.json", "root_history/1.root.json", "snapshot.json", "targets.json",
        "timestamp.json",
    ]  # fmt: skip
    result = clients.download(published.target_path)
    assert result.returncode == 0, result.stderr
    [downloaded] = list((clients.tmp / "targets").iterdir())
    assert downloaded.read_bytes() == clients.site.served_target(published).read_bytes()


def test_a_rotated_root_is_followed_and_kept_as_python_tuf_keeps_it(clients: Clients) -> None:
    clients.init()
    clients.site.repo.rotate("root", lambda: PASSPHRASE)
    assert clients.refresh().returncode == 0
    assert layout(clients.metadata)["root.json"] == ("link", "root_history/2.root.json")
    # A later run starts from the rotated root, not the one init was given.
    assert clients.refresh().returncode == 0


def test_init_refuses_garbage(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    (tmp_path / "md").mkdir()
    result = client("--metadata-dir", str(tmp_path / "md"), "init", str(tmp_path / "root.json"))
    assert result.returncode == 1
    assert result.stderr.startswith("gpuward-tuf-client: error: trusted root ")
    assert "is not valid" in result.stderr
    assert not list((tmp_path / "md").iterdir())


def test_refresh_before_init_is_refused(tmp_path: Path) -> None:
    result = client("--metadata-dir", str(tmp_path), "--metadata-url", "http://x/", "refresh")
    assert result.returncode == 1
    assert "holds no trusted root; run init first" in result.stderr


def test_refresh_refuses_expired_metadata(clients: Clients) -> None:
    clients.init()
    clients.site.repo.sign_timestamp(expires=datetime.now(UTC) - timedelta(seconds=1))
    result = clients.refresh()
    assert result.returncode == 1
    assert "ExpiredMetadataError" in result.stderr


def test_refresh_refuses_an_unsigned_root(clients: Clients) -> None:
    clients.init()
    forged = Metadata[Root].from_bytes((clients.site.base / "trusted-root.json").read_bytes())
    forged.signed.version = 2
    forged.signatures.clear()
    (clients.site.repo.metadata_dir / "2.root.json").write_bytes(forged.to_bytes(JSONSerializer()))
    result = clients.refresh()
    assert result.returncode == 1
    assert "UnsignedMetadataError" in result.stderr
    assert layout(clients.metadata)["root.json"] == ("link", "root_history/1.root.json")
    assert "root_history/2.root.json" not in layout(clients.metadata)


def test_download_refuses_a_tampered_target(clients: Clients) -> None:
    published = clients.site.publish("580.95.05")
    served = clients.site.served_target(published)
    served.write_bytes(served.read_bytes()[:-1] + b"!")
    clients.init()
    result = clients.download(published.target_path)
    assert result.returncode == 1
    assert "LengthOrHashMismatchError" in result.stderr
    assert not list((clients.tmp / "targets").glob("*"))


def test_download_refuses_an_unknown_target(clients: Clients) -> None:
    clients.init()
    result = clients.download("drivers/R580/nope.bundle")
    assert result.returncode == 1
    assert "not in the verified metadata" in result.stderr
