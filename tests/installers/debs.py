"""Real gpuward bundles of NVIDIA's Debian 535 user-space packages, for the apt backend.

The payload is the smallest set of packages whose dependencies resolve in a
debootstrap minbase Debian 12 (with systemd), found by letting apt ask: the
driver's own packages at one version, and what they pull in from contrib
(the glx alternatives, nvidia-installer-cleanup) and main (pciutils). The
payload is a flat apt repository: the .debs and ``apt-ftparchive``'s index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.debian_nonfree import NEW_535, OLD_535, fetch_debs

# The driver's packages: one version per bundle, and what the backend pins and holds.
DRIVER = ("libnvidia-ml1", "nvidia-alternative", "nvidia-legacy-check", "nvidia-smi")
# What they depend on beyond minbase, the same in both bundles.
SUPPORT = (
    ("glx-alternative-mesa", "1.2.2"),
    ("glx-alternative-nvidia", "1.2.2"),
    ("glx-diversions", "1.2.2"),
    ("update-glx", "1.2.2"),
    ("nvidia-installer-cleanup", "20220217+3~deb12u1"),
    ("pciutils", "1:3.9.0-4"),
    ("libpci3", "1:3.9.0-4"),
    ("pci.ids", "0.0~2023.04.11-1"),
)
DRIVER_VERSION = {OLD_535: "535.216.03", NEW_535: "535.261.03"}


def deb_payload(debian_version: str, dest: Path) -> Path:
    """A payload directory: the packages of one 535 release and an apt index of them."""
    dest.mkdir(parents=True)
    debs = fetch_debs([*((name, debian_version) for name in DRIVER), *SUPPORT])
    for deb in debs:
        # Bundle payload names are plain; apt reads the real names from the index.
        name, _, rest = deb.name.partition("_")
        shutil.copyfile(deb, dest / f"{name}_{rest.rsplit('_', 1)[-1]}")
    index = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=dest, check=True, capture_output=True, text=True
    )
    (dest / "Packages").write_text(index.stdout)
    return dest


def build_deb_bundle(debian_version: str, work: Path) -> Path:
    """``gpuward bundle build --payload-kind deb`` of one 535 release, as an operator runs it."""
    payload = deb_payload(debian_version, work / f"payload-{debian_version}")
    output = work / f"nvidia-{DRIVER_VERSION[debian_version]}.bundle"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuward",
            "bundle",
            "build",
            str(payload),
            "--driver-version",
            DRIVER_VERSION[debian_version],
            "--branch",
            "R535",
            "--payload-kind",
            "deb",
            "--dkms",
            "--module-flavour",
            "proprietary",
            "--json",
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifest"]["payload_kind"] == "deb"
    return output
