"""The dnf and runfile backends, by the exact commands they run and the files they write.

There is no RHEL machine and no GPU here: dnf and nvidia-installer cannot run,
so these backends are checked the way the kernel hold's dnf side is, through a
recording runner, while the files they write land on a temporary root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from applier.installers.base import UnsupportedPayload
from applier.installers.dnf import REPO_FILE, RPM_QUERY, DnfInstaller
from applier.installers.runfile import RECORD, RunfileInstaller, module_options
from tests.installers.staging import manifest, recorded_node, stage

OLD, NEW = "535.216.03", "535.261.03"
RPMS = ("egl-wayland.rpm", "nvidia-driver-cuda-libs.rpm", "nvidia-driver.rpm")


def rpm_listing(version: str) -> str:
    """``rpm -qp`` of a slot: the driver's packages and a dependency of another version."""
    return (
        "egl-wayland 0 1.1.13 3.el9 x86_64\n"
        f"nvidia-driver-cuda-libs 3 {version} 1.el9 x86_64\n"
        f"nvidia-driver 3 {version} 1.el9 x86_64\n"
    )


def rpm_query(slot: str) -> list[str]:
    paths = [f"/var/lib/gpuward-applier/slots/{slot}/payload/{name}" for name in RPMS]
    return ["rpm", "-qp", "--qf", RPM_QUERY, *paths]


def nevras(version: str) -> list[str]:
    return [
        f"nvidia-driver-3:{version}-1.el9.x86_64",
        f"nvidia-driver-cuda-libs-3:{version}-1.el9.x86_64",
    ]


def test_dnf_installs_exact_versions_version_locked_and_rolls_back(tmp_path: Path) -> None:
    node, recorder = recorded_node(
        tmp_path,
        {" ".join(rpm_query("a")): rpm_listing(OLD), " ".join(rpm_query("b")): rpm_listing(NEW)},
    )
    for slot, version in (("a", OLD), ("b", NEW)):
        files = {name: b"" for name in RPMS} | {"repodata/repomd.xml": b"<repomd/>"}
        stage(node.slots, slot, manifest(version, "rpm"), files)
    dnf = DnfInstaller(node)
    names = ["nvidia-driver", "nvidia-driver-cuda-libs"]
    enabled = ["dnf", "-y", "-q", "--disablerepo=*", "--enablerepo=gpuward-driver"]

    dnf.activate("a")
    dnf.activate("b")

    assert recorder.calls[4:] == [
        rpm_query("b"),
        ["dnf", "-q", "versionlock", "delete", *names],
        [*enabled, "install", *nevras(NEW)],
        ["dnf", "-q", "versionlock", "add", *nevras(NEW)],
    ]
    assert (tmp_path / REPO_FILE).read_text() == (
        "# Written by gpuward: the driver bundle in slot b.\n"
        "[gpuward-driver]\nname=gpuward driver bundle (slot b)\n"
        "baseurl=file:///var/lib/gpuward-applier/slots/b/payload\nenabled=1\ngpgcheck=0\n"
        "metadata_expire=0\n"
    )
    assert node.slots.active() == "b"

    recorder.calls.clear()
    dnf.rollback("b", "a")
    assert recorder.calls == [
        rpm_query("b"),
        rpm_query("a"),
        ["dnf", "-q", "versionlock", "delete", *names],
        [*enabled, "downgrade", *nevras(OLD)],
        ["dnf", "-q", "versionlock", "add", *nevras(OLD)],
    ]
    assert "slots/a/payload" in (tmp_path / REPO_FILE).read_text()
    assert node.slots.active() == "a"

    # The first driver failing: nothing to go back to, so its packages go.
    recorder.calls.clear()
    dnf.rollback("a", None)
    assert recorder.calls[1:] == [
        ["dnf", "-q", "versionlock", "delete", *names],
        ["dnf", "-y", "-q", "remove", *names],
    ]
    assert not (tmp_path / REPO_FILE).exists() and node.slots.active() is None


def test_dnf_refuses_a_payload_that_is_not_a_repository(tmp_path: Path) -> None:
    node, _ = recorded_node(tmp_path)
    (tmp_path / "payload").mkdir()
    (tmp_path / "payload/nvidia-driver.rpm").write_bytes(b"")
    with pytest.raises(UnsupportedPayload, match="createrepo_c"):
        DnfInstaller(node).install(tmp_path / "payload", manifest(NEW, "rpm"))


def test_runfile_records_the_uninstall_and_rolls_back_through_it(tmp_path: Path) -> None:
    node, recorder = recorded_node(tmp_path)
    for slot, version in (("a", OLD), ("b", NEW)):
        run = f"NVIDIA-Linux-x86_64-{version}.run"
        stage(node.slots, slot, manifest(version, "runfile", "open"), {run: b"#!/bin/sh\n"})
    runfile = RunfileInstaller(node)
    record = node.slots.root / RECORD

    runfile.activate("b")

    path = f"/var/lib/gpuward-applier/slots/b/payload/NVIDIA-Linux-x86_64-{NEW}.run"
    assert recorder.calls == [
        ["sh", path, "--silent", "--kernel-module-build-directory=kernel-open"]
    ]
    assert json.loads(record.read_text()) == {
        "slot": "b",
        "uninstall": ["nvidia-installer", "--uninstall", "--silent"],
    }
    assert runfile.describe().active_slot == "b" and node.slots.active() == "b"

    recorder.calls.clear()
    runfile.rollback("b", "a")
    assert recorder.calls == [
        ["nvidia-installer", "--uninstall", "--silent"],
        [
            "sh",
            f"/var/lib/gpuward-applier/slots/a/payload/NVIDIA-Linux-x86_64-{OLD}.run",
            "--silent",
            "--kernel-module-build-directory=kernel-open",
        ],
    ]
    assert json.loads(record.read_text())["slot"] == "a" and node.slots.active() == "a"


@pytest.mark.parametrize(
    ("version", "flavour", "options"),
    [
        ("535.261.03", "open", ("--kernel-module-build-directory=kernel-open",)),
        ("535.261.03", "proprietary", ()),
        ("580.95.05", "open", ("--kernel-module-type=open",)),
        ("580.95.05", "proprietary", ("--kernel-module-type=proprietary",)),
    ],
)
def test_runfile_module_flavour_options(
    version: str, flavour: str, options: tuple[str, ...]
) -> None:
    assert module_options(manifest(version, "runfile", flavour)) == options


def test_runfile_bundle_needs_exactly_one_installer(tmp_path: Path) -> None:
    node, _ = recorded_node(tmp_path)
    for name in ("NVIDIA-Linux-x86_64-535.261.03.run", "NVIDIA-Linux-x86_64-535.216.03.run"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UnsupportedPayload, match="exactly one"):
        RunfileInstaller(node).install(tmp_path, manifest(NEW, "runfile"))
