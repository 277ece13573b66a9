"""The health probe on real hosts: NVML through nvidia-ml-py.

Placeholder until the full collector lands: driver version and the GPUs' names
and UUIDs; any NVML failure becomes ``ProbeResult.error``, never an exception.
"""

from __future__ import annotations

import pynvml

from agent.health import ProbeResult
from fleet.report import GpuHealth


class NvmlProbe:
    def probe(self) -> ProbeResult:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return ProbeResult(None, (), error=f"NVML: {exc}; is the NVIDIA driver loaded?")
        try:
            driver = str(pynvml.nvmlSystemGetDriverVersion())
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                gpus.append(
                    GpuHealth(
                        index=index,
                        name=str(pynvml.nvmlDeviceGetName(handle)),
                        uuid=str(pynvml.nvmlDeviceGetUUID(handle)),
                        driver_version=driver,
                        healthy=True,
                        problems=(),
                    )
                )
            return ProbeResult(driver, tuple(gpus))
        except pynvml.NVMLError as exc:
            return ProbeResult(None, (), error=f"NVML: {exc}")
        finally:
            pynvml.nvmlShutdown()
