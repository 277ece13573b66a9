"""Building the fake libnvidia-ml.so.1 (``fake_nvml.c``) and configuring its GPUs.

Shared by the NVML test fixtures and ``bench/agent_footprint.py``, which runs a
real agent against the same fake.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).parent

H100 = "NVIDIA H100 80GB HBM3"
DRIVER = "580.95.05"


def build_fake_nvml(out_dir: Path, *, old_driver: bool = False) -> Path:
    """Compile the fake into ``out_dir`` (for ``LD_LIBRARY_PATH``); ``old_driver`` leaves
    out the symbols newer drivers added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            *(["-DFAKE_NVML_OLD_DRIVER"] if old_driver else []),
            "-o",
            str(out_dir / "libnvidia-ml.so.1"),
            str(HERE / "fake_nvml.c"),
            "-pthread",
            "-lcrypto",  # OpenSSL: the fake GPU signs its attestation reports
        ],
        check=True,
    )
    return out_dir


def h100_host(gpus: int = 8, driver: str = DRIVER, **extra: object) -> dict[str, object]:
    """Config for a healthy, idle H100 host; ``extra`` adds or overrides keys.

    Keys with dots cannot be keyword arguments, so pass them as ``**{"gpu.3.x": 1}``.
    """
    config: dict[str, object] = {"driver_version": driver, "gpu_count": gpus}
    for i in range(gpus):
        config[f"gpu.{i}.name"] = H100
        config[f"gpu.{i}.uuid"] = f"GPU-{i:08x}-1111-2222-3333-444455556666"
        config[f"gpu.{i}.clock_events"] = 0x1  # GpuIdle
    config.update(extra)
    return config


def config_text(config: Mapping[str, object]) -> str:
    """The fake's key=value config (``FAKE_NVML_CONFIG``), as a file holds it."""
    return "".join(f"{k}={v}\n" for k, v in config.items())


def write_config(path: Path, config: Mapping[str, object]) -> Path:
    path.write_text(config_text(config))
    return path
