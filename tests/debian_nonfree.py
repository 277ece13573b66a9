"""NVIDIA's real driver packages from Debian's non-free component, for tests.

Several tests need NVIDIA's own binaries (``libnvidia-ml.so.1`` with no kernel
module, the 535 user-space packages for the apt installer backend). They are
fetched from the Debian archive the host already trusts, through a private apt
configuration so the host's sources, lists and cache are never touched, and
cached across runs because the download is the slow part.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES = "bookworm bookworm-backports"

# The two 535 releases the apt backend moves between (see ../shared/DESIGN.md).
OLD_535 = "535.216.03-2~bpo12+1"
NEW_535 = "535.261.03-1"

CACHE_ROOT = Path(os.environ.get("GPUWARD_TEST_CACHE", "/var/cache/gpuward-tests"))


def _apt_options(root: Path) -> list[str]:
    return [
        "-o", "Dir::Etc::sourcelist=/dev/null",
        "-o", f"Dir::Etc::sourceparts={root / 'sources'}",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "Debug::NoLocking=1",
        "-q",
    ]  # fmt: skip


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise fetches: parallel test workers share one cache."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _update(root: Path) -> None:
    (root / "sources").mkdir(exist_ok=True)
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "sources" / "nonfree.sources").write_text(
        f"Types: deb\nURIs: {ARCHIVE}\nSuites: {SUITES}\n"
        f"Components: main contrib non-free\nSigned-By: {KEYRING}\n"
    )
    subprocess.run(["apt-get", *_apt_options(root), "update"], check=True, capture_output=True)


def fetch_debs(packages: Sequence[tuple[str, str]], dest: Path | None = None) -> list[Path]:
    """Return the .deb files for ``(name, version)`` pairs, downloading what is missing.

    Files are kept in ``dest`` (default: a per-host cache); the archive's
    signed Release files vouch for them through apt's own verification.
    """
    root = CACHE_ROOT / "apt"
    target = dest or CACHE_ROOT / "debs"
    target.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        found: list[Path] = []
        missing = [(n, v) for n, v in packages if not _cached(target, n, v)]
        if missing:
            _update(root)
            subprocess.run(
                ["apt-get", *_apt_options(root), "download", *(f"{n}={v}" for n, v in missing)],
                check=True,
                capture_output=True,
                cwd=target,
            )
        for name, version in packages:
            deb = _cached(target, name, version)
            if deb is None:
                raise RuntimeError(f"apt-get download did not produce {name}={version}")
            found.append(deb)
        return found


def apt_lists() -> Path:
    """The lists folder of the apt that ``fetch_debs`` downloads with."""
    return CACHE_ROOT / "apt" / "lists"


def index_sha256(name: str, version: str) -> str:
    """The SHA-256 Debian's signed Packages index states for ``name=version``, as apt reads it."""
    shown = subprocess.run(
        ["apt-cache", *_apt_options(CACHE_ROOT / "apt"), "show", f"{name}={version}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split()[1] for line in shown.splitlines() if line.startswith("SHA256:"))


def _cached(directory: Path, name: str, version: str) -> Path | None:
    # apt-get download escapes the epoch colon and keeps '~' and '+' as they are.
    quoted = version.replace(":", "%3a")
    matches = sorted(directory.glob(f"{name}_{quoted}_*.deb"))
    return matches[0] if matches else None
