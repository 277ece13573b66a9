"""Node inventories and bundle manifests for the compat tests, with facts-neutral defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet.catalog import default_catalog
from fleet.inventory import NodeInventory
from fleet.manifest import BundleManifest
from fleet.versions import DriverVersion

KERNEL = "6.8.0-45-generic"
PASSPHRASE = "correct horse battery staple"


def node_doc(
    *models: str,
    cc: str | None = None,
    kernel: str = KERNEL,
    cuda: str | None = None,
    nvswitch: bool = False,
    fabric_manager: str | None = None,
    node_id: str = "node-1",
) -> dict[str, Any]:
    return {
        "schema": 1,
        "node_id": node_id,
        "gpus": [{"model": m, "compute_capability": cc} for m in models or ("H100",)],
        "kernel": kernel,
        "os": "ubuntu-24.04",
        "nvswitch": nvswitch,
        "required_cuda": cuda,
        "fabric_manager": fabric_manager,
    }


def bundle_doc(
    version: str,
    flavour: str = "open",
    archs: Sequence[str] | None = None,
    kernels: Sequence[str] = (KERNEL,),
    dkms: bool = False,
    cuda: str | None = None,
    fabric_manager: str | None = None,
) -> dict[str, Any]:
    """A manifest; architectures default to all nine, so only the facts decide."""
    catalog = default_catalog()
    driver = DriverVersion.parse(version)
    return {
        "schema": 2,
        "driver_version": version,
        "branch": driver.branch,
        "payload_kind": "files",
        "files": [],
        "module_flavour": flavour,
        "architectures": list(archs or [a.name for a in catalog.architectures]),
        "kernels": list(kernels),
        "dkms": dkms,
        "cuda_version": cuda or str(catalog.cuda_for_driver(driver)),
        "fabric_manager": fabric_manager,
    }


def make_node(*models: str, **kw: Any) -> NodeInventory:
    return NodeInventory.from_dict(node_doc(*models, **kw))


def make_bundle(version: str, **kw: Any) -> BundleManifest:
    return BundleManifest.from_dict(bundle_doc(version, **kw))


def gpuward(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUWARD_KEY_PASSPHRASE": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "gpuward", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
