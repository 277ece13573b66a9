"""``gpuward-tuf-client`` speaks the TUF conformance suite's client protocol."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Site


def client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.tuf_client", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _init(site: Site, metadata: Path) -> None:
    result = client("--metadata-dir", str(metadata), "init", str(site.base / "trusted-root.json"))
    assert result.returncode == 0, result.stderr


def _refresh(site: Site, metadata: Path) -> subprocess.CompletedProcess[str]:
    url = f"{site.url}/v1/repo/metadata/"
    return client("--metadata-dir", str(metadata), "--metadata-url", url, "refresh")


def _download(
    site: Site, metadata: Path, name: str, dest: Path
) -> subprocess.CompletedProcess[str]:
    return client(
        "--metadata-dir", str(metadata), "--metadata-url", f"{site.url}/v1/repo/metadata/",
        "--target-name", name, "--target-base-url", f"{site.url}/v1/repo/targets/",
        "--target-dir", str(dest), "download",
    )  # fmt: skip


def test_init_refresh_download(site: Site, tmp_path: Path) -> None:
    published = site.publish("580.95.05")
    metadata, dest = tmp_path / "md", tmp_path / "targets"
    _init(site, metadata)
    assert _refresh(site, metadata).returncode == 0
    assert (metadata / "timestamp.json").exists()
    result = _download(site, metadata, published.target_path, dest)
    assert result.returncode == 0, result.stderr
    [downloaded] = list(dest.iterdir())
    assert downloaded.read_bytes() == site.served_target(published).read_bytes()


def test_init_refuses_garbage(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    result = client("--metadata-dir", str(tmp_path / "md"), "init", str(tmp_path / "root.json"))
    assert result.returncode == 1
    assert "not root metadata" in result.stderr


def test_refresh_refuses_expired_metadata(site: Site, tmp_path: Path) -> None:
    _init(site, tmp_path / "md")
    site.repo.sign_timestamp(expires=datetime.now(UTC) - timedelta(seconds=1))
    result = _refresh(site, tmp_path / "md")
    assert result.returncode == 1
    assert "ExpiredMetadataError" in result.stderr


def test_download_refuses_a_tampered_target(site: Site, tmp_path: Path) -> None:
    published = site.publish("580.95.05")
    served = site.served_target(published)
    served.write_bytes(served.read_bytes()[:-1] + b"!")
    _init(site, tmp_path / "md")
    result = _download(site, tmp_path / "md", published.target_path, tmp_path / "t")
    assert result.returncode == 1
    assert "LengthOrHashMismatchError" in result.stderr
    assert not list((tmp_path / "t").glob("*"))


def test_download_refuses_an_unknown_target(site: Site, tmp_path: Path) -> None:
    _init(site, tmp_path / "md")
    result = _download(site, tmp_path / "md", "drivers/R580/nope.bundle", tmp_path / "t")
    assert result.returncode == 1
    assert "not in the verified metadata" in result.stderr
