"""The apt side of the kernel hold, for real: apt-mark, apt-get upgrade, unattended-upgrades.

Issue 4: a held package stays held through ``apt-get upgrade``, and the
unattended-upgrades configuration is valid. The hold runs its commands as in
production, prefixed with ``chroot DIR``.
"""

from __future__ import annotations

from pathlib import Path

from applier.command_runner import runner_for_root
from applier.kernel_hold import APT_CONF, KernelHold
from tests.kernel_hold.conftest import publish
from tests.packaging.conftest import Chroot

KERNEL = "6.1.0-99-amd64"
IMAGE, HEADERS, META = f"linux-image-{KERNEL}", f"linux-headers-{KERNEL}", "linux-image-amd64"
NEXT_IMAGE = "linux-image-6.1.0-100-amd64"
BYSTANDER = "gpuward-test-bystander"  # not a kernel package: upgrades as usual
ADMIN_HELD = "gpuward-test-admin-held"  # held by the administrator, not by gpuward

FIRST = [
    (IMAGE, "1", ""),
    (HEADERS, "1", ""),
    (META, "1", IMAGE),
    (BYSTANDER, "1", ""),
    (ADMIN_HELD, "1", ""),
]
# The next kernel: new versions of the running one's packages, and a metapackage
# that moves to a new ABI, as a Debian point release does.
SECOND = [
    (IMAGE, "2", ""),
    (HEADERS, "2", ""),
    (META, "2", NEXT_IMAGE),
    (NEXT_IMAGE, "1", ""),
    (BYSTANDER, "2", ""),
    (ADMIN_HELD, "2", ""),
]


def versions(chroot: Chroot) -> dict[str, str]:
    listing = chroot.run("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n")
    return {
        name: version
        for name, version, status in (line.split()[:3] for line in listing.stdout.splitlines())
        if status[1] == "i"  # installed, whether held ("hi") or not ("ii")
    }


def install_first_kernel(chroot: Chroot, repo: Path) -> KernelHold:
    publish(chroot, repo, FIRST)
    chroot.run("apt-get", "install", "-y", META, HEADERS, BYSTANDER, ADMIN_HELD)
    chroot.run("apt-mark", "hold", ADMIN_HELD)
    return KernelHold.detect(runner_for_root(chroot.root), chroot.root, KERNEL)


def test_held_kernel_stays_through_apt_get_upgrade(chroot: Chroot, tmp_path: Path) -> None:
    hold = install_first_kernel(chroot, tmp_path / "repo")
    assert not hold.status().applied

    state = hold.apply()
    assert state.applied
    assert state.packages == (HEADERS, IMAGE, META)
    assert set(chroot.run("apt-mark", "showhold").stdout.split()) == {
        HEADERS,
        IMAGE,
        META,
        ADMIN_HELD,
    }

    publish(chroot, tmp_path / "repo", SECOND)
    chroot.run("apt-get", "upgrade", "-y")
    chroot.run("apt-get", "dist-upgrade", "-y")
    after = versions(chroot)
    assert after[BYSTANDER] == "2"  # the upgrade did run
    assert (after[IMAGE], after[HEADERS], after[META]) == ("1", "1", "1")
    assert NEXT_IMAGE not in after
    assert hold.status().applied

    # Released, the same upgrade moves the kernel: the hold was what stopped it.
    released = hold.release()
    assert not released.applied and released.held == ()
    assert not chroot.path(f"/{APT_CONF}").exists()
    assert chroot.run("apt-mark", "showhold").stdout.split() == [ADMIN_HELD]
    chroot.run("apt-get", "dist-upgrade", "-y")
    after = versions(chroot)
    assert (after[IMAGE], after[HEADERS], after[META], after[NEXT_IMAGE]) == ("2", "2", "2", "1")
    assert after[ADMIN_HELD] == "1"


def test_unattended_upgrades_reads_the_blacklist(chroot: Chroot, tmp_path: Path) -> None:
    install_first_kernel(chroot, tmp_path / "repo").apply()
    dump = chroot.run("apt-config", "dump", "Unattended-Upgrade::Package-Blacklist").stdout
    assert dump.splitlines() == [
        'Unattended-Upgrade::Package-Blacklist "";',
        'Unattended-Upgrade::Package-Blacklist:: "linux-image-";',
        'Unattended-Upgrade::Package-Blacklist:: "linux-headers-";',
        'Unattended-Upgrade::Package-Blacklist:: "linux-modules-";',
    ]
    run = chroot.run("unattended-upgrade", "--dry-run", "--debug")
    log = run.stdout + run.stderr
    assert "Initial blacklist: linux-image- linux-headers- linux-modules-" in log
