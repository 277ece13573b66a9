"""The kernel hold's commands and files, through a recording runner.

The dnf side has no RHEL machine here, so it is tested by the exact commands it
runs and the files it writes (none: dnf's versionlock plugin keeps its own
list). The apt side's package selection is checked against listings of
Debian and Ubuntu kernels; tests/kernel_hold/test_apt.py runs it for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from applier.kernel_hold import APT_CONF, KernelHold, apt_conf, package_family
from fleet.errors import GpuwardError
from tests.recorder import Recorder

RHEL_KERNEL = "5.14.0-427.13.1.el9_4.x86_64"
RPM_QA = f"""\
kernel {RHEL_KERNEL}
kernel-core {RHEL_KERNEL}
kernel-modules {RHEL_KERNEL}
kernel-modules-core {RHEL_KERNEL}
kernel-core 5.14.0-362.8.1.el9_3.x86_64
kernel-devel {RHEL_KERNEL}
kernel-firmware 20240220-143.el9.noarch
bash 5.1.8-9.el9.x86_64
"""
RHEL_PACKAGES = [
    f"kernel-{RHEL_KERNEL}",
    f"kernel-core-{RHEL_KERNEL}",
    f"kernel-devel-{RHEL_KERNEL}",
    f"kernel-modules-{RHEL_KERNEL}",
    f"kernel-modules-core-{RHEL_KERNEL}",
]
RPM_QUERY = ["rpm", "-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}.%{ARCH}\n"]


def os_release(root: Path, text: str) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(text)
    return root


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dnf_commands_and_files(tmp_path: Path) -> None:
    root = os_release(tmp_path, 'ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    before = files_under(root)
    recorder = Recorder({"rpm -qa --qf %{NAME} %{VERSION}-%{RELEASE}.%{ARCH}\n": RPM_QA})
    hold = KernelHold.detect(recorder, root, RHEL_KERNEL)
    assert hold.family == "dnf"

    assert not hold.status().applied
    recorder.calls.clear()
    hold.apply()
    assert recorder.calls[:2] == [RPM_QUERY, ["dnf", "-q", "versionlock", "add", *RHEL_PACKAGES]]

    # dnf lists locks as name-epoch:version-release.*
    recorder.answers["dnf -q versionlock list"] = "".join(
        f"{p.replace('-5.14', '-0:5.14', 1).removesuffix('.x86_64')}.*\n" for p in RHEL_PACKAGES
    )
    state = hold.status()
    assert state.applied and list(state.held) == RHEL_PACKAGES

    recorder.calls.clear()
    hold.release()
    assert recorder.calls[:2] == [RPM_QUERY, ["dnf", "-q", "versionlock", "delete", *RHEL_PACKAGES]]
    assert files_under(root) == before


@pytest.mark.parametrize(
    ("kernel", "installed", "expected"),
    [
        (  # Debian 12: the signed image, headers, and the metapackages
            "6.1.0-27-amd64",
            [
                "linux-image-6.1.0-27-amd64",
                "linux-image-6.1.0-26-amd64",
                "linux-headers-6.1.0-27-amd64",
                "linux-headers-6.1.0-27-common",
                "linux-image-amd64",
                "linux-headers-amd64",
                "linux-libc-dev",
                "linux-base",
            ],
            [
                "linux-headers-6.1.0-27-amd64",
                "linux-headers-amd64",
                "linux-image-6.1.0-27-amd64",
                "linux-image-amd64",
            ],
        ),
        (  # Ubuntu 22.04 HWE: modules packages, and a metapackage named with a release
            "6.8.0-45-generic",
            [
                "linux-image-6.8.0-45-generic",
                "linux-modules-6.8.0-45-generic",
                "linux-modules-extra-6.8.0-45-generic",
                "linux-headers-6.8.0-45-generic",
                "linux-hwe-6.8-headers-6.8.0-45",
                "linux-generic-hwe-22.04",
                "linux-image-generic-hwe-22.04",
            ],
            [
                "linux-generic-hwe-22.04",
                "linux-headers-6.8.0-45-generic",
                "linux-image-6.8.0-45-generic",
                "linux-image-generic-hwe-22.04",
                "linux-modules-6.8.0-45-generic",
                "linux-modules-extra-6.8.0-45-generic",
            ],
        ),
        ("6.18.44-custom", ["linux-image-amd64", "linux-image-6.1.0-27-amd64"], []),
    ],
)
def test_apt_package_selection(
    tmp_path: Path, kernel: str, installed: list[str], expected: list[str]
) -> None:
    root = os_release(tmp_path, "ID=debian\n")
    # The first one held already ("hi"); a removed kernel's leftovers ("rc") do not count.
    listing = "".join(f"{p} {'hi' if i == 0 else 'ii'} \n" for i, p in enumerate(installed))
    listing += "linux-image-5.10.0-9-amd64 rc \n"
    recorder = Recorder({"dpkg-query -W -f ${Package} ${db:Status-Abbrev}\n": listing})
    hold = KernelHold.detect(recorder, root, kernel)
    assert list(hold.status().packages) == expected


def test_apt_files_and_commands(tmp_path: Path) -> None:
    root = os_release(tmp_path, "ID=ubuntu\nID_LIKE=debian\n")
    listing = "linux-image-6.8.0-45-generic ii \nlinux-generic ii \n"
    recorder = Recorder({"dpkg-query -W -f ${Package} ${db:Status-Abbrev}\n": listing})
    hold = KernelHold.detect(recorder, root, "6.8.0-45-generic")
    hold.apply()
    packages = ["linux-generic", "linux-image-6.8.0-45-generic"]
    assert ["apt-mark", "hold", *packages] in recorder.calls
    assert (root / APT_CONF).read_text() == apt_conf(packages)
    assert "// held: linux-generic linux-image-6.8.0-45-generic\n" in apt_conf(packages)

    # An edited file is not trusted to be in force.
    (root / APT_CONF).write_text(apt_conf(packages).replace('"linux-image-";', ""))
    recorder.answers["apt-mark showhold"] = "\n".join(packages)
    assert not hold.status().blacklisted

    recorder.calls.clear()
    hold.release()
    assert recorder.calls[0] == ["apt-mark", "unhold", *packages]
    assert not (root / APT_CONF).exists()


def test_a_new_kernel_moves_the_hold(tmp_path: Path) -> None:
    root = os_release(tmp_path, "ID=debian\n")
    listing = "linux-image-6.1.0-27-amd64 hi \nlinux-image-6.1.0-28-amd64 ii \n"
    recorder = Recorder({"dpkg-query -W -f ${Package} ${db:Status-Abbrev}\n": listing})
    KernelHold.detect(recorder, root, "6.1.0-27-amd64").apply()
    recorder.calls.clear()
    KernelHold.detect(recorder, root, "6.1.0-28-amd64").apply()
    assert ["apt-mark", "hold", "linux-image-6.1.0-28-amd64"] in recorder.calls
    assert ["apt-mark", "unhold", "linux-image-6.1.0-27-amd64"] in recorder.calls
    assert (root / APT_CONF).read_text() == apt_conf(["linux-image-6.1.0-28-amd64"])


def test_nothing_to_hold_is_an_error(tmp_path: Path) -> None:
    root = os_release(tmp_path, "ID=debian\n")
    hold = KernelHold.detect(Recorder({}), root, "6.18.44-custom")
    with pytest.raises(GpuwardError, match="no installed apt package carries the running kernel"):
        hold.apply()


def test_unknown_distribution(tmp_path: Path) -> None:
    with pytest.raises(GpuwardError, match="supports Debian, Ubuntu and the RHEL family"):
        package_family(os_release(tmp_path, "ID=alpine\n"))


def test_cli_status_on_this_host() -> None:
    """Read-only on the host running the tests: exit 0 when held, 3 when not, never 1."""
    done = subprocess.run(
        [sys.executable, "-m", "gpuward", "agent", "kernel-hold", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 3), done.stderr
    state = json.loads(done.stdout)
    assert state["family"] == "apt"
    assert state["applied"] is (done.returncode == 0)
