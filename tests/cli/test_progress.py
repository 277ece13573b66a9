"""Byte progress bars on ``bundle build``, ``repo add`` and ``mirror import``: on a
terminal (stderr a pty here), or with ``--progress``; never on a pipe otherwise,
and never with ``--json``, whose output stays pure JSON."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from gpuward.cli.progress import BAR_WIDTH
from tests.cli.test_errors import gpuward
from tests.conftest import PASSPHRASE, Site

FULL = f"[{'#' * BAR_WIDTH}] 100%"


def _on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run gpuward with stderr on a pty: its result, and what the terminal showed."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "GPUWARD_KEY_PASSPHRASE": PASSPHRASE}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpuward", *args],
            stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, env=env,
            timeout=120,
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        while chunk := _read(controller):
            shown += chunk
    finally:
        os.close(controller)
    return done, shown.decode()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer has closed the terminal
        return b""


def _payload(tmp_path: Path) -> Path:
    payload = tmp_path / "payload"
    payload.mkdir(parents=True)
    (payload / "libnvidia-ml.so.1").write_bytes(os.urandom(3 * 1024 * 1024))
    (payload / "nvidia-smi").write_bytes(os.urandom(512 * 1024))
    return payload


def _build(tmp_path: Path, *flags: str) -> list[str]:
    return [
        "bundle", "build", str(_payload(tmp_path)), "--driver-version", "580.95.05",
        "--branch", "R580", "--dkms", "-o", str(tmp_path / "nvidia.bundle"), *flags,
    ]  # fmt: skip


def test_bundle_build_and_repo_add_draw_bars_on_a_terminal(site: Site, tmp_path: Path) -> None:
    built, shown = _on_a_terminal(*_build(tmp_path))
    assert built.returncode == 0, shown
    for stage in ("hashing the payload", "writing nvidia.bundle", "checking nvidia.bundle"):
        assert f"{stage}: {FULL}" in shown, stage
    assert b"built " in built.stdout and b"\r" not in built.stdout

    bundle = str(tmp_path / "nvidia.bundle")
    added, shown = _on_a_terminal("repo", "add", bundle, "--repo", str(site.repo.root))
    assert added.returncode == 0, shown
    for stage in ("checking", "hashing", "storing"):
        assert f"{stage} nvidia.bundle: {FULL}" in shown, stage
    assert added.stdout.startswith(b"published drivers/R580/")


def test_no_bar_on_a_pipe_or_with_json_unless_asked(site: Site, tmp_path: Path) -> None:
    piped = gpuward(*_build(tmp_path / "piped"))
    assert piped.returncode == 0, piped.stderr
    assert "%" not in piped.stderr and "\r" not in piped.stderr

    as_json, shown = _on_a_terminal(*_build(tmp_path / "json", "--json"))
    assert as_json.returncode == 0, shown
    assert "%" not in shown
    assert json.loads(as_json.stdout)["manifest"]["driver_version"] == "580.95.05"

    asked = gpuward(*_build(tmp_path / "asked", "--progress"))
    assert asked.returncode == 0, asked.stderr
    assert f"writing nvidia.bundle: {FULL}" in asked.stderr

    added = gpuward("repo", "add", str(tmp_path / "piped/nvidia.bundle"), "--repo",
                    str(site.repo.root), "--json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "%" not in added.stderr
    assert json.loads(added.stdout)["target"].startswith("drivers/R580/")


def test_mirror_import_draws_bars_on_a_terminal(site: Site, tmp_path: Path) -> None:
    site.publish("580.95.05")
    archive = tmp_path / "mirror.tar"
    exported = gpuward("mirror", "export", "--repo", str(site.repo.root), "--to", str(archive))
    assert exported.returncode == 0, exported.stderr
    gapped = tmp_path / "gapped-repo"
    imported, shown = _on_a_terminal(
        "mirror", "import", str(archive), "--repo", str(gapped),
        "--trusted-root", str(site.base / "trusted-root.json"),
    )  # fmt: skip
    assert imported.returncode == 0, shown
    assert f"unpacking {archive}: {FULL}" in shown
    assert f"copying into {gapped}: {FULL}" in shown
