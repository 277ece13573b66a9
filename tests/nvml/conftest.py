"""Fixtures that run the agent's NVML code against a fake libnvidia-ml.so.1.

The fake (``fake_nvml.c``) is compiled once per session, twice: as a current
driver, and as an old one that lacks the symbols newer drivers added. Each run
is a fresh ``python -m gpuward.cli.nvml_cmd`` process, because nvidia-ml-py loads the
library once per process and the fake reads its config on ``nvmlInit``.

``real_nvml_lib`` is NVIDIA's own ``libnvidia-ml.so.1`` (Debian non-free
``libnvidia-ml1``) on this machine, which has no NVIDIA kernel module: the
state of a node whose kernel was upgraded under its driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.debian_nonfree import NEW_535, fetch_debs
from tests.nvml.fakelib import build_fake_nvml, h100_host, write_config


@pytest.fixture(scope="session")
def fake_nvml_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directories holding a fake libnvidia-ml.so.1: ``current`` and ``old`` drivers."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the fake libnvidia-ml.so.1 (Debian package gcc)")
    root = tmp_path_factory.mktemp("fake-nvml")
    return {
        "current": build_fake_nvml(root / "current"),
        "old": build_fake_nvml(root / "old", old_driver=True),
    }


@pytest.fixture(scope="session")
def real_nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding NVIDIA's real libnvidia-ml.so.1, for ``LD_LIBRARY_PATH``."""
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is needed to unpack libnvidia-ml1 (Debian package dpkg)")
    if Path("/proc/driver/nvidia/version").exists():
        pytest.fail("this machine has an NVIDIA kernel module; these tests need one without")
    (deb,) = fetch_debs([("libnvidia-ml1", NEW_535)])
    root = tmp_path_factory.mktemp("libnvidia-ml1")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (library,) = root.glob("usr/lib/*/nvidia/current/libnvidia-ml.so.1")
    return library.parent


H100Host = Callable[..., dict[str, object]]
"""The ``h100`` fixture: ``h100_host``, config for a healthy H100 host."""

NvmlRun = Callable[..., subprocess.CompletedProcess[str]]
"""The ``run_nvml`` fixture: run a module against the fake, given its config."""

ProbeJson = Callable[..., dict[str, Any]]
"""The ``probe_json`` fixture: the health probe's JSON for a config."""


@pytest.fixture
def h100() -> H100Host:
    return h100_host


@pytest.fixture
def run_nvml(fake_nvml_libs: dict[str, Path], tmp_path: Path) -> NvmlRun:
    """Run ``python -m MODULE ARGS`` (default: the NVML command) against the configured fake."""

    def run(
        config: Mapping[str, object],
        *args: str,
        driver: str = "current",
        module: str = "gpuward.cli.nvml_cmd",
    ) -> subprocess.CompletedProcess[str]:
        config_file = write_config(tmp_path / "fake-nvml.conf", config)
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(fake_nvml_libs[driver]),
            "FAKE_NVML_CONFIG": str(config_file),
        }
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def probe_json(run_nvml: NvmlRun) -> ProbeJson:
    """Run the health probe in a fresh process and return its JSON."""

    def probe(config: Mapping[str, object], *, driver: str = "current") -> dict[str, Any]:
        done = run_nvml(config, driver=driver)
        assert "Traceback" not in done.stderr, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        assert done.returncode == (0 if result["error"] is None else 1), done.stderr
        return result

    return probe
