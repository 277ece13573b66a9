"""Reading the GPUs through NVML (nvidia-ml-py).

This is the only module that talks to ``libnvidia-ml.so.1``. Two rules shape it:

* A query the GPU or the loaded driver does not support (``NotSupported``, or a
  symbol an older driver lacks: ``FunctionNotFound``) means "unknown" (``None``),
  never a crash and never a problem. Any other failure of a per-GPU query is
  recorded on that GPU, so the health gate sees it.
* Nothing here raises NVML errors at the caller: when NVML cannot be used at all
  (no kernel module, no library, user-space and kernel versions differ) the probe
  returns ``ProbeResult(error=...)`` with a message saying what to do.

``python -m agent.nvml`` prints what the probe sees as JSON, for operators.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pynvml
import structlog

from agent.health import ProbeResult
from fleet.errors import GpuwardError
from fleet.gpu import ClockEvents, GpuSample, RemappedRows
from fleet.gpu_rules import gate_problems
from fleet.report import GpuHealth

log = structlog.get_logger()

T = TypeVar("T")

# What to do about the failures that stop NVML from working at all.
_HINTS = {
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "the NVIDIA kernel module is not loaded; check `dmesg | grep -i nvrm` and that a "
        "module was built for the running kernel (`dkms status`)"
    ),
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: (
        "libnvidia-ml.so.1 was not found; install the driver's NVML library "
        "(Debian: libnvidia-ml1) or fix the library path"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: (
        "the agent may not open /dev/nvidia*; check the device permissions and the groups "
        "of the agent's user"
    ),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the user-space driver and the loaded kernel module are different versions; reboot "
        "into the slot whose driver is installed, or reload the nvidia modules"
    ),
    pynvml.NVML_ERROR_GPU_IS_LOST: (
        "a GPU fell off the bus; look for Xid 79 in `dmesg`, then reset the GPU or drain the node"
    ),
}
_DEFAULT_HINT = "check `nvidia-smi` and the kernel log"


class NvmlUnavailable(GpuwardError):
    """NVML cannot be used at all on this host right now."""


def explain(error: pynvml.NVMLError, during: str) -> str:
    """One line for an operator: what failed, where, and what to do."""
    hint = _HINTS.get(getattr(error, "value", None), _DEFAULT_HINT)
    return f"NVML: {error} ({during}): {hint}"


@contextmanager
def nvml_session() -> Iterator[None]:
    """Initialise NVML for the block and always shut it down again."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(explain(error, "nvmlInit")) from error
    try:
        yield
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            log.warning("nvml_shutdown_failed", error=str(error))


class _GpuQueries:
    """Runs the queries for one GPU, keeping "unknown" apart from "failed"."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.errors: list[str] = []

    def get(self, *functions: Callable[..., T], args: tuple[Any, ...] = ()) -> T | None:
        """The first of ``functions`` the driver has, applied to the handle and ``args``.

        Later functions are fallbacks for older drivers that lack the earlier
        symbol (for example ...ThrottleReasons before ...ClocksEventReasons).
        """
        for function in functions:
            try:
                return function(self.handle, *args)
            except pynvml.NVMLError_FunctionNotFound:
                continue
            except pynvml.NVMLError_NotSupported:
                return None
            except pynvml.NVMLError as error:
                self.errors.append(f"{function.__name__}: {error}")
                return None
        return None


def read_sample(index: int, handle: Any) -> GpuSample:
    q = _GpuQueries(handle)
    clock_mask = q.get(
        pynvml.nvmlDeviceGetCurrentClocksEventReasons,
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
    )
    remap = q.get(pynvml.nvmlDeviceGetRemappedRows)
    return GpuSample(
        index=index,
        uuid=q.get(pynvml.nvmlDeviceGetUUID),
        name=q.get(pynvml.nvmlDeviceGetName),
        clock_events=None if clock_mask is None else ClockEvents(clock_mask),
        ecc_uncorrected_volatile=q.get(
            pynvml.nvmlDeviceGetTotalEccErrors,
            args=(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
        ),
        remapped_rows=None
        if remap is None
        else RemappedRows(
            correctable=remap[0],
            uncorrectable=remap[1],
            pending=bool(remap[2]),
            failure=bool(remap[3]),
        ),
        errors=tuple(q.errors),
    )


def _gpu_health(index: int, driver_version: str) -> GpuHealth:
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as error:
        problems: tuple[str, ...] = (explain(error, f"opening GPU {index}"),)
        return GpuHealth(index, "unknown", "unknown", driver_version, False, problems)
    sample = read_sample(index, handle)
    problems = gate_problems(sample)
    return GpuHealth(
        index=index,
        name=sample.name or "unknown",
        uuid=sample.uuid or "unknown",
        driver_version=driver_version,
        healthy=not problems,
        problems=problems,
    )


class NvmlProbe:
    """The health probe of a real host: ``agent.health.HealthProbe`` over NVML."""

    def probe(self) -> ProbeResult:
        try:
            with nvml_session():
                driver_version = pynvml.nvmlSystemGetDriverVersion()
                gpus = tuple(
                    _gpu_health(index, driver_version)
                    for index in range(pynvml.nvmlDeviceGetCount())
                )
        except NvmlUnavailable as error:
            log.warning("nvml_unavailable", error=str(error))
            return ProbeResult(driver_version=None, gpus=(), error=str(error))
        except pynvml.NVMLError as error:
            message = explain(error, "reading the driver version and GPU list")
            log.warning("nvml_probe_failed", error=message)
            return ProbeResult(driver_version=None, gpus=(), error=message)
        except Exception as error:
            # The gate runs in the middle of an update: a bug here must fail the
            # gate (and roll back), not kill the agent between switch and commit.
            log.exception("nvml_probe_crashed")
            return ProbeResult(driver_version=None, gpus=(), error=f"NVML probe crashed: {error!r}")
        return ProbeResult(driver_version=driver_version, gpus=gpus)


def probe_to_dict(result: ProbeResult) -> dict[str, Any]:
    return {
        "driver_version": result.driver_version,
        "error": result.error,
        "gpus": [gpu.to_dict() for gpu in result.gpus],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.nvml", description="Print what NVML sees on this host as JSON."
    )
    parser.parse_args(argv)
    # Only as a program does this module own logging: to stderr, keeping stdout JSON.
    from gpuward import logs

    logs.configure()
    result = NvmlProbe().probe()
    print(json.dumps(probe_to_dict(result), indent=2, sort_keys=True))
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
