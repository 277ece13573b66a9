"""The catalog travels to agents as a signed TUF target."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from importlib import resources
from pathlib import Path

import pytest

from fleet.catalog import TARGET_PATH, load_catalog
from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import BundleManifest
from keys.image_repo import ImageRepository
from tests.compat.builders import KERNEL, PASSPHRASE, bundle_doc, gpuward, one_line_error

RAW = resources.files("fleet").joinpath("data/catalog.json").read_bytes()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ImageRepository:
    return ImageRepository.init(tmp_path_factory.mktemp("repo") / "repo", PASSPHRASE)


def _catalog_file(path: Path, version: int) -> Path:
    doc = json.loads(RAW)
    doc["catalog_version"] = version
    path.write_text(json.dumps(doc))
    return path


def test_publish_and_read_back(repo: ImageRepository, tmp_path: Path) -> None:
    result = gpuward(
        "repo", "add-catalog", _catalog_file(tmp_path / "c.json", 7), "--repo", repo.root, "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["catalog_version"] == 7

    targets = repo.targets()
    info = targets.signed.targets[TARGET_PATH]
    assert info.unrecognized_fields["custom"] == {"catalog_version": 7}
    served = repo.targets_dir / "catalog" / f"{info.hashes['sha256']}.catalog.json"
    data = served.read_bytes()
    assert hashlib.sha256(data).hexdigest() == info.hashes["sha256"] and len(data) == info.length
    info.verify_length_and_hashes(data)
    assert load_catalog(data).catalog_version == 7
    assert repo.published() == []  # the catalog is not a driver bundle

    # The same file again changes nothing; an older or equal version is refused.
    version = targets.signed.version
    again = repo.add_catalog(tmp_path / "c.json", lambda: PASSPHRASE)
    assert again.catalog_version == 7 and repo.targets().signed.version == version
    older = _catalog_file(tmp_path / "old.json", 6)
    with pytest.raises(GpuwardError, match="not newer than the published version 7"):
        repo.add_catalog(older, lambda: PASSPHRASE)
    newer = repo.add_catalog(_catalog_file(tmp_path / "new.json", 8), lambda: PASSPHRASE)
    assert newer.catalog_version == 8 and repo.targets().signed.version == version + 1


def test_a_malformed_catalog_is_never_published(repo: ImageRepository, tmp_path: Path) -> None:
    doc = json.loads(RAW)
    bad = copy.deepcopy(doc)
    bad["catalog_version"] = 99
    bad["branches"][0]["type"] = "LTS"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    version = repo.targets().signed.version
    result = gpuward("repo", "add-catalog", path, "--repo", repo.root)
    assert "branches[0]: 'type' must be one of" in one_line_error(result)
    with pytest.raises(InvalidDocument):
        repo.add_catalog(path, lambda: PASSPHRASE)
    assert repo.targets().signed.version == version


def test_repo_add_checks_the_bundle_against_the_catalog(
    repo: ImageRepository, tmp_path: Path
) -> None:
    """A bundle built by hand around the checks is still refused at publication."""
    doc = bundle_doc("580.95.05", flavour="proprietary", archs=["Blackwell"], kernels=[KERNEL])
    data = json.dumps(BundleManifest.from_dict(doc).to_dict()).encode()
    bundle = tmp_path / "forged.bundle"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    result = gpuward("repo", "add", bundle, "--repo", repo.root)
    assert "Blackwell needs the open kernel modules" in one_line_error(result)
