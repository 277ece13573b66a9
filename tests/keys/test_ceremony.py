"""The offline signing workflow, across processes that share only files."""

from __future__ import annotations

import shutil
from pathlib import Path

from gpuward.node import run_once
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site


def _take_offline(site: Site, names: list[str], offline: Path) -> None:
    """Move private keys off the repository holder's machine, as a ceremony would."""
    offline.mkdir()
    for name in names:
        for suffix in (".key", ".pub.json"):
            shutil.move(site.repo.keyring.dir / f"{name}{suffix}", offline / f"{name}{suffix}")


def test_branch_bundle_signed_offline(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")  # delegates R580 (its key is R580-1)
    _take_offline(site, ["R580-1"], tmp_path / "offline")
    bundle = site.bundle("580.82.07")
    staged = tmp_path / "R580.staged.json"
    repo = str(site.repo.root)

    # Online holder, no offline key: cannot publish directly, can stage.
    assert_one_line_error(
        gpuward("repo", "add", str(bundle), "--repo", repo), "'gpuward keys sign'"
    )
    assert gpuward("repo", "stage", "R580", "--repo", repo, "--add-bundle", str(bundle),
                   "-o", str(staged)).returncode == 0  # fmt: skip
    # Unsigned: refused.
    assert_one_line_error(gpuward("repo", "publish", str(staged), "--repo", repo), "signatures")
    # The offline machine signs; only the file travels.
    signed = gpuward("keys", "sign", str(staged), "--keys", str(tmp_path / "offline"))
    assert signed.returncode == 0, signed.stderr
    published = gpuward("repo", "publish", str(staged), "--repo", repo)
    assert published.returncode == 0, published.stderr

    result = run_once(site.agent())
    assert result.outcome.update == "committed"
    assert result.report.driver_version == "580.82.07"


def test_root_needs_two_of_three_offline_signatures(site: Site, tmp_path: Path) -> None:
    _take_offline(site, ["root-1", "root-2", "root-3"], tmp_path / "all")
    holders = []
    for name in ("root-1", "root-2"):
        holder = tmp_path / name
        holder.mkdir()
        for suffix in (".key", ".pub.json"):
            shutil.copy(tmp_path / "all" / f"{name}{suffix}", holder)
        holders.append(holder)
    staged = tmp_path / "root.staged.json"
    repo = str(site.repo.root)
    assert gpuward("repo", "stage", "root", "--repo", repo, "-o", str(staged)).returncode == 0

    assert gpuward("keys", "sign", str(staged), "--keys", str(holders[0])).returncode == 0
    assert_one_line_error(gpuward("repo", "publish", str(staged), "--repo", repo), "signatures")
    assert site.repo.root_metadata().signed.version == 1
    assert gpuward("keys", "sign", str(staged), "--keys", str(holders[1])).returncode == 0
    assert gpuward("repo", "publish", str(staged), "--repo", repo).returncode == 0

    assert site.repo.root_metadata().signed.version == 2
    site.publish("580.65.06")
    assert run_once(site.agent()).outcome.update == "committed"  # follows root v2


def test_signer_without_an_authorised_key_is_told_so(site: Site, tmp_path: Path) -> None:
    staged = tmp_path / "root.staged.json"
    gpuward("repo", "stage", "root", "--repo", str(site.repo.root), "-o", str(staged))
    stranger = tmp_path / "stranger"
    _take_offline(site, ["snapshot-1"], stranger)
    result = gpuward("keys", "sign", str(staged), "--keys", str(stranger))
    assert_one_line_error(result, "none of the keys")
