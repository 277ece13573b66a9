"""The slots backend on a temporary root: ld.so.conf.d, ldconfig, depmod, the link flip.

Bundles carry NVIDIA's real ``libnvidia-ml.so.1`` of two 535 releases (from
Debian's packages) and stand-in module files for a kernel; the applier runs
the real ``ldconfig -r`` and ``depmod -b`` against the temporary root, so the
linker cache and modules.dep are what a node would get. Loading modules needs
the host's kernel, so that step is checked by the commands it runs.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from applier.installers.base import UnsupportedPayload
from applier.installers.slots import LD_CONF, SlotsInstaller
from keys.bundle import build_bundle, sha256_file
from node.config import load_config
from node.kernel_hold_record import load_hold_record
from tests.applier.helpers import Node
from tests.conftest import GPU_NAME, PASSPHRASE, Site
from tests.debian_nonfree import NEW_535, OLD_535, fetch_debs
from tests.installers.debs import DRIVER_VERSION
from tests.installers.staging import KERNEL, manifest, recorded_node, stage

LIB = "var/lib/gpuward-applier/slots/active/payload/lib"


def real_nvml(debian_version: str, work: Path) -> Path:
    """NVIDIA's libnvidia-ml.so of one release, extracted from Debian's package."""
    (deb,) = fetch_debs([("libnvidia-ml1", debian_version)])
    tree = work / f"deb-{debian_version}"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=60)
    (found,) = tree.rglob("libnvidia-ml.so.535.*")
    return found


def slots_payload(debian_version: str, work: Path) -> Path:
    payload = work / f"payload-{debian_version}"
    (payload / "lib").mkdir(parents=True)
    (payload / "lib/libnvidia-ml.so.1").write_bytes(real_nvml(debian_version, work).read_bytes())
    modules = payload / "modules" / KERNEL
    modules.mkdir(parents=True)
    for name in ("nvidia.ko", "nvidia-uvm.ko"):
        (modules / name).write_bytes(f"stand-in {name} {debian_version}\n".encode())
    return payload


def publish(site: Site, debian_version: str, work: Path) -> str:
    version = DRIVER_VERSION[debian_version]
    bundle = work / f"nvidia-{version}.bundle"
    build_bundle(
        slots_payload(debian_version, work),
        driver_version=version,
        branch="R535",
        payload_kind="files",
        output=bundle,
        kernels=[KERNEL],
        module_flavour="proprietary",
        cuda_version="12.2",
    )
    site.repo.add_bundle(bundle, lambda: PASSPHRASE)
    return sha256_file(bundle)


def node_at(site: Site, folder: Path, unhealthy: str = "") -> Node:
    host = folder / "host"
    (host / "etc/ld.so.conf.d").mkdir(parents=True, exist_ok=True)
    (host / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    toml = folder / "agent.toml"
    toml.write_text(
        f'node_id = "n1"\nserver_url = "{site.url}"\n'
        f'trusted_root = "{site.base / "trusted-root.json"}"\nbranch = "R535"\n'
        f'root_dir = "{host}"\nhealth_backend = "simulated"\nkernel = "{KERNEL}"\n'
        f'[simulated]\ncount = 2\nname = "{GPU_NAME}"\nunhealthy_drivers = [{unhealthy}]\n'
    )
    return Node(toml, load_config(toml))


def linker_cache(root: Path) -> list[str]:
    listing = subprocess.run(
        ["ldconfig", "-r", str(root), "-p"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in listing.splitlines() if "libnvidia" in line]


def assert_runs(node: Node, slot: str, debian_version: str, work: Path) -> None:
    root = node.config.root_dir
    assert node.slots.active() == slot
    assert (root / LD_CONF).read_text() == f"/{LIB}\n"
    assert linker_cache(root) == [f"libnvidia-ml.so.1 (libc6,x86-64) => /{LIB}/libnvidia-ml.so.1"]
    # What the linker finds through the cache is this release's library.
    assert (root / LIB / "libnvidia-ml.so.1").read_bytes() == real_nvml(
        debian_version, work
    ).read_bytes()
    modules = root / "lib/modules" / KERNEL
    dep = (modules / "modules.dep").read_text().split()
    assert dep == ["updates/gpuward/nvidia-uvm.ko:", "updates/gpuward/nvidia.ko:"]
    assert (modules / "updates/gpuward/nvidia.ko").read_text() == (
        f"stand-in nvidia.ko {debian_version}\n"
    )


def test_update_and_rollback_on_a_temporary_root(site: Site, tmp_path: Path) -> None:
    publish(site, OLD_535, tmp_path)
    node = node_at(site, tmp_path / "node")
    node.spool_newest()
    assert node.outcome() == "committed"
    assert_runs(node, "a", OLD_535, tmp_path)

    publish(site, NEW_535, tmp_path)
    node = node_at(site, tmp_path / "node", f'"{DRIVER_VERSION[NEW_535]}"')
    node.spool_newest()
    assert node.apply(crash_at="gate:before").returncode == -signal.SIGKILL
    assert_runs(node, "b", NEW_535, tmp_path)

    assert node.outcome() == "rolled-back"
    assert_runs(node, "a", OLD_535, tmp_path)

    # A root with no package manager to hold the kernel with: the commit stood,
    # and the record says why there is no hold.
    record = load_hold_record(node.config)
    assert record is not None and not record.applied
    assert (record.kernel, record.family) == (KERNEL, None)
    assert "os-release not found" in record.error


def test_modules_are_unloaded_before_the_flip_and_loaded_after(tmp_path: Path) -> None:
    root = tmp_path / "root"
    node, recorder = recorded_node(root)
    (root / "proc").mkdir(parents=True)
    (root / "proc/modules").write_text(
        "nvidia_uvm 1 0 - Live 0x0\nnvidia_drm 1 0 - Live 0x0\nnvidia_modeset 1 1 nvidia_drm\n"
        "nvidia 1 2 nvidia_uvm,nvidia_modeset\nxfs 1 0 - Live 0x0\n"
    )
    modules = ("nvidia.ko", "nvidia-uvm.ko", "nvidia-drm.ko", "nvidia-modeset.ko")
    for slot in ("a", "b"):
        files = {f"modules/{KERNEL}/{name}": b"" for name in modules}
        stage(node.slots, slot, manifest("535.261.03", "files"), files)
    installer = SlotsInstaller(node, KERNEL, load_modules=True)

    installer.activate("b")

    unload = ["modprobe", "-r", "-a", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia"]
    load = ["modprobe", "-a", "nvidia", "nvidia_modeset", "nvidia_drm", "nvidia_uvm"]
    assert recorder.calls == [unload, ["depmod", "-b", str(root), KERNEL], load]
    assert node.slots.active() == "b"
    link = root / "lib/modules" / KERNEL / "updates/gpuward"
    active = "var/lib/gpuward-applier/slots/active/payload"
    assert str(link.readlink()) == f"../../../../{active}/modules/{KERNEL}"

    recorder.calls.clear()
    installer.rollback("b", None)  # nothing ran before: the node is left without a driver
    assert recorder.calls == [unload, ["depmod", "-b", str(root), KERNEL]]
    assert node.slots.active() is None and not link.is_symlink()


def test_a_bundle_without_modules_for_the_running_kernel_is_refused(tmp_path: Path) -> None:
    node, _ = recorded_node(tmp_path)
    payload = tmp_path / "payload"
    (payload / "modules/6.8.0-45-generic").mkdir(parents=True)
    with pytest.raises(UnsupportedPayload, match=f"none for the running kernel {KERNEL}"):
        SlotsInstaller(node, KERNEL, load_modules=True).install(
            payload, manifest("535.261.03", "files")
        )
