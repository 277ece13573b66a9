"""The apt backend for real: NVIDIA's 535 packages moved by dpkg/apt in a Debian 12 chroot.

Issue 5: bundles of 535.216.03 and 535.261.03, built with ``gpuward bundle
build --payload-kind deb``, published, spooled by the agent and applied by
``gpuward agent apply`` with the chroot as the node's root: install one,
update to the other, hold, roll back, with ``dpkg -l`` and ``apt-mark
showhold`` shown (``pytest -s``) and checked at each step. Issue 4: the kernel
hold follows every commit, and the agent's report carries it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from applier.installers.apt import SOURCE
from fleet.report import HealthReport
from gpuward.node import run_once
from keys.bundle import build_bundle
from node.config import load_config
from node.journal import load_journal
from node.kernel_hold_record import load_hold_record
from tests.applier.helpers import Node
from tests.conftest import GPU_NAME, PASSPHRASE, Site
from tests.debian_nonfree import NEW_535, OLD_535
from tests.installers.debs import DRIVER, DRIVER_VERSION, build_deb_bundle, deb_payload
from tests.kernel_hold.conftest import publish
from tests.packaging.conftest import Chroot

KERNEL = "6.1.0-99-amd64"
KERNEL_PACKAGES = (f"linux-image-{KERNEL}", "linux-image-amd64")


def node_in(site: Site, folder: Path, root: Path, unhealthy: str = "") -> Node:
    """A simulated-GPU agent whose root is ``root`` (the chroot), tracking R535."""
    folder.mkdir(parents=True, exist_ok=True)
    toml = folder / "agent.toml"
    toml.write_text(
        f'node_id = "n1"\nserver_url = "{site.url}"\n'
        f'trusted_root = "{site.base / "trusted-root.json"}"\nbranch = "R535"\n'
        f'root_dir = "{root}"\nhealth_backend = "simulated"\nkernel = "{KERNEL}"\n'
        f'enrollment_token_file = "{site.enrollment_token_file}"\n'
        f'[simulated]\ncount = 2\nname = "{GPU_NAME}"\nunhealthy_drivers = [{unhealthy}]\n'
    )
    return Node(toml, load_config(toml))


def with_kernel(chroot: Chroot, repo: Path) -> None:
    """Stand-in packages of the running kernel, for the hold to find (tests/kernel_hold)."""
    publish(
        chroot, repo, [(KERNEL_PACKAGES[0], "1", ""), (KERNEL_PACKAGES[1], "1", KERNEL_PACKAGES[0])]
    )
    chroot.run("apt-get", "install", "-y", KERNEL_PACKAGES[1])
    # The node's own sources may need a network the applier never has: none here.
    chroot.path("/etc/apt/sources.list").write_text("")


def show(chroot: Chroot, step: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Print ``dpkg -l`` and ``apt-mark showhold`` of the driver packages; return them parsed."""
    listing = chroot.run("dpkg", "-l", *DRIVER).stdout
    holds = chroot.run("apt-mark", "showhold").stdout
    print(f"\n== {step}: dpkg -l\n{listing}== {step}: apt-mark showhold\n{holds}")
    rows = {
        words[1].split(":")[0]: (words[0], words[2])
        for words in (line.split() for line in listing.splitlines())
        if len(words) > 2 and len(words[0]) == 2 and words[0].isalpha()
    }
    return rows, set(holds.split())


def assert_runs(chroot: Chroot, step: str, debian_version: str) -> None:
    """Every driver package installed at ``debian_version``, and held ("hi")."""
    rows, holds = show(chroot, step)
    assert rows == {name: ("hi", debian_version) for name in DRIVER}
    assert holds == {*DRIVER, *KERNEL_PACKAGES}
    smi = chroot.run("dpkg-query", "-W", "-f", "${Version}", "nvidia-smi").stdout
    assert smi == debian_version


def publish_bundle(site: Site, debian_version: str, work: Path) -> None:
    site.repo.add_bundle(build_deb_bundle(debian_version, work), lambda: PASSPHRASE)


def installed_old(chroot: Chroot, site: Site, tmp_path: Path, unhealthy: str = "") -> Node:
    """A node that took 535.216.03 through the applier, with 535.261.03 then published."""
    with_kernel(chroot, tmp_path / "kernel-repo")
    publish_bundle(site, OLD_535, tmp_path)
    node = node_in(site, tmp_path / "node", chroot.root)
    node.spool_newest()
    assert node.outcome() == "committed"
    assert_runs(chroot, f"installed {DRIVER_VERSION[OLD_535]}", OLD_535)
    assert node.slots.active() == "a"
    assert (
        chroot.path(f"/{SOURCE}")
        .read_text()
        .endswith("deb [trusted=yes] file:/var/lib/gpuward-applier/slots/a/payload ./\n")
    )
    publish_bundle(site, NEW_535, tmp_path)
    return node_in(site, tmp_path / "node", chroot.root, unhealthy)


def test_install_update_hold_and_roll_back(chroot: Chroot, site: Site, tmp_path: Path) -> None:
    new = DRIVER_VERSION[NEW_535]
    node = installed_old(chroot, site, tmp_path, unhealthy=f'"{new}"')
    node.spool_newest()

    # Killed as the health gate looks: the new packages are in, held, not yet confirmed.
    assert node.apply(crash_at="gate:before").returncode == -signal.SIGKILL
    assert_runs(chroot, f"updated to {new}, not yet confirmed", NEW_535)
    assert (load_journal(node.journal_file).state, node.slots.active()) == ("verifying", "b")

    # The next start finds the driver unhealthy and reinstalls the previous exact versions.
    assert node.outcome() == "rolled-back"
    assert_runs(chroot, "rolled back", OLD_535)
    journal = load_journal(node.journal_file)
    assert journal.state == "rolled-back" and f"driver {new} failed health" in journal.reason
    assert node.slots.active() == "a"
    assert "slots/a/payload" in chroot.path(f"/{SOURCE}").read_text()

    # The hold is what keeps it there: with the newer packages in apt's view, an
    # upgrade moves everything else but not the driver.
    newer = "deb [trusted=yes] file:/var/lib/gpuward-applier/slots/b/payload ./\n"
    chroot.path("/etc/apt/sources.list").write_text(newer)
    chroot.run("apt-get", "update")
    assert NEW_535 in chroot.run("apt-cache", "policy", "nvidia-smi").stdout
    chroot.run("apt-get", "dist-upgrade", "-y")
    assert_runs(chroot, "after apt-get dist-upgrade", OLD_535)


def test_a_healthy_update_commits_and_the_kernel_hold_follows(
    chroot: Chroot, site: Site, tmp_path: Path
) -> None:
    node = installed_old(chroot, site, tmp_path)
    chroot.run("apt-mark", "unhold", *KERNEL_PACKAGES)  # an administrator lifts it
    node.spool_newest()

    assert node.outcome() == "committed"

    assert_runs(chroot, f"updated to {DRIVER_VERSION[NEW_535]}", NEW_535)
    record = load_hold_record(node.config)
    assert record is not None
    assert (record.kernel, record.family, record.applied, record.error) == (
        KERNEL,
        "apt",
        True,
        "",
    )
    assert set(record.held) == set(KERNEL_PACKAGES)
    report = run_once(node.config).report
    assert report.kernel_hold == record
    assert HealthReport.from_dict(report.to_dict()).kernel_hold == record


def test_the_applier_refuses_a_deb_bundle_that_is_no_apt_repository(
    site: Site, tmp_path: Path
) -> None:
    payload = deb_payload(OLD_535, tmp_path / "payload")
    (payload / "Packages").unlink()
    bundle = tmp_path / "no-index.bundle"
    build_bundle(
        payload,
        driver_version=DRIVER_VERSION[OLD_535],
        branch="R535",
        payload_kind="deb",
        output=bundle,
        dkms=True,
        module_flavour="proprietary",
    )
    site.repo.add_bundle(bundle, lambda: PASSPHRASE)
    node = node_in(site, tmp_path / "node", tmp_path / "host")
    node.spool_newest()

    done = node.apply()

    assert done.returncode != 0
    report = json.loads(done.stdout)
    assert (report["outcome"], report["active_slot"]) == ("refused", None)
    assert "apt-ftparchive packages . > Packages" in report["reason"]
    assert load_journal(node.journal_file).state == "failed"
