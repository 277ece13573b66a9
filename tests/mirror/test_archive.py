"""Mirrors on removable media: one ``.tar``, exported, verified and imported,
and hostile archives refused without touching the destination."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.identity import enroll
from fleet.errors import GpuwardError
from gpuward.cli.progress import BAR_WIDTH
from gpuward.node import run_once
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from server.mirror import import_into
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.mirror.test_mirror import assert_verifies, tree, verifier
from tests.simnode import ENROLLMENT_TOKEN


def _export_tar(site: Site, tmp_path: Path) -> Path:
    out = tmp_path / "media" / "mirror.tar"
    done = gpuward("mirror", "export", "--repo", str(site.repo.root), "--to", str(out), "--json")
    assert done.returncode == 0, done.stderr
    # Not a terminal: plain progress events, the last one for every byte.
    events = [json.loads(line) for line in done.stderr.splitlines() if "mirror_progress" in line]
    assert events[-1]["bytes"] == events[-1]["total"] == _served_bytes(site)
    return out


def _served_bytes(site: Site) -> int:
    served = [site.repo.root / "metadata", site.repo.root / "targets"]
    return sum(p.stat().st_size for d in served for p in d.rglob("*") if p.is_file())


def test_tar_export_verifies_imports_and_serves_an_update(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    archive = _export_tar(site, tmp_path)
    assert_verifies(site, archive)
    assert [p.name for p in archive.parent.iterdir()] == ["mirror.tar"]  # nothing left behind

    gapped = tmp_path / "gapped-repo"
    root = str(site.base / "trusted-root.json")
    imported = gpuward(
        "mirror", "import", str(archive), "--repo", str(gapped), "--trusted-root", root
    )
    assert imported.returncode == 0, imported.stderr
    config = ServerConfig(
        gapped, str(tmp_path / "gapped.db"), port=0, unattested_enrollment_token=ENROLLMENT_TOKEN
    )
    with BackgroundServer(config) as inside:
        agent = dataclasses.replace(site.agent("inside-1", enrolled=False), server_url=inside.url)
        enroll(agent)
        assert run_once(agent).outcome.update == "committed"


def test_same_repository_exports_the_same_bytes(site: Site, tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    for out in (first, second):
        assert (
            gpuward("mirror", "export", "--repo", str(site.repo.root), "--to", str(out)).returncode
            == 0
        )
    assert first.read_bytes() == second.read_bytes()


def test_progress_bar_on_a_terminal(site: Site, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    out = tmp_path / "mirror.tar"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpuward", "mirror", "export", "--repo", str(site.repo.root),
             "--to", str(out)],
            stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        while chunk := _read_pty(controller):
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert f"exporting to {out}: [{'#' * BAR_WIDTH}] 100%".encode() in shown


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the writer has closed the terminal
        return b""


# -- hostile archives ------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _hostile(good: Path, tmp_path: Path, extra: Callable[[tarfile.TarFile], None]) -> Path:
    """The good export's members, then whatever ``extra`` adds."""
    bad = tmp_path / "hostile.tar"
    with tarfile.open(good) as source, tarfile.open(bad, "w") as tar:
        for member in source:
            tar.addfile(member, source.extractfile(member))
        extra(tar)
    return bad


ATTACKS: dict[str, tuple[Callable[[tarfile.TarFile], None], str]] = {
    "dotdot": (lambda t: _add(t, "../../escaped"), "not a plain relative path"),
    "symlink": (
        lambda t: _add(t, "v1/repo/metadata/evil", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "symbolic link",
    ),
    "hardlink": (
        lambda t: _add(t, "v1/repo/metadata/hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
        "hard link",
    ),
    "absolute": (lambda t: _add(t, "/etc/cron.d/gpuward-escaped"), "not a plain relative path"),
    "device": (lambda t: _add(t, "v1/repo/dev", type=tarfile.CHRTYPE), "special file"),
}


@pytest.fixture
def imported(site: Site, tmp_path: Path) -> tuple[Path, Path]:
    """A good archive, and a destination that already holds an earlier import."""
    site.publish("580.65.06")
    good = _export_tar(site, tmp_path)
    gapped = tmp_path / "gapped-repo"
    import_into(good, gapped, verify=verifier(site.base / "trusted-root.json"))
    return good, gapped


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_archive_members_are_refused(
    attack: str, imported: tuple[Path, Path], tmp_path: Path
) -> None:
    good, gapped = imported
    extra, message = ATTACKS[attack]
    bad = _hostile(good, tmp_path, extra)
    before, around = tree(gapped), tree(tmp_path.parent)
    for command in ("import", "verify"):
        where = ("--repo", str(gapped)) if command == "import" else ("--trusted-root", "x")
        assert_one_line_error(gpuward("mirror", command, str(bad), *where), message)
    assert tree(gapped) == before
    assert tree(tmp_path.parent) == around  # nothing escaped, no scratch folder left


def test_truncated_archive_is_refused(imported: tuple[Path, Path], tmp_path: Path) -> None:
    good, gapped = imported
    cut = tmp_path / "cut.tar"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 100])
    before = tree(gapped)
    assert_one_line_error(
        gpuward("mirror", "import", str(cut), "--repo", str(gapped)), "copy it again"
    )
    assert tree(gapped) == before


def test_archive_over_the_size_bounds_is_refused(imported: tuple[Path, Path]) -> None:
    good, gapped = imported
    before = tree(gapped)
    size = good.stat().st_size
    with pytest.raises(GpuwardError, match="bytes; not a gpuward mirror"):
        import_into(
            good, gapped, max_bytes=size // 2, verify=verifier(gapped / "metadata/root.json")
        )
    with pytest.raises(GpuwardError, match="more than 3 files"):
        import_into(good, gapped, max_members=3, verify=verifier(gapped / "metadata/root.json"))
    assert tree(gapped) == before
