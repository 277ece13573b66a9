"""Reading the GPUs through NVML (nvidia-ml-py).

This is the only module that talks to ``libnvidia-ml.so.1``. Two rules shape it:

* A query the GPU or the loaded driver does not support (``NotSupported``, a
  symbol an older driver lacks: ``FunctionNotFound``, or a field value the
  driver answers with its own error) means "unknown" (``None``), never a crash
  and never a problem. Any other failure of a per-GPU query is
  recorded on that GPU, so the health gate sees it.
* Nothing here raises NVML errors at the caller: when NVML cannot be used at all
  (no kernel module, no library, user-space and kernel versions differ) the probe
  returns ``ProbeResult(error=...)`` with a message saying what to do.

Four readers share those rules: the health probe behind the update gate
(``NvmlProbe``), the collector of inventory and health samples (``collect``),
the XID listener (``XidListener``), a thread waiting on NVML events, and the
collector of each GPU's attestation evidence (``attestation_evidence``). The
GPU modes a bundle declares (``fleet.driver_settings``) are read by
``read_gpu_modes`` and set, by the root applier only, with ``set_gpu_modes``.

``python -m gpuward.cli.nvml_cmd`` prints what these readers see, for operators.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import pynvml
import structlog

from fleet.driver_settings import COMPUTE_MODES, GPU_SETTINGS, GpuModes
from fleet.errors import GpuwardError
from fleet.gpu import (
    ClockEvents,
    GpuInventory,
    GpuProcess,
    GpuSample,
    HostGpus,
    RemappedRows,
    XidEvent,
    architecture_name,
    cuda_version_text,
    recovery_action_name,
)
from fleet.gpu_attestation import GpuEvidence
from fleet.gpu_rules import classify_xid, degradations, gate_problems
from fleet.report import GpuHealth
from node.gpu_health import ProbeResult

log = structlog.get_logger()

# An XID storm (some repeat many times a second) must not grow memory without
# bound: the listener keeps the latest ones and counts the rest.
MAX_KEPT_XIDS = 1024

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

# NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (nvml.h): nvidia-ml-py before 12.570, which
# pyproject.toml still allows, lacks the name.
FI_DEV_GET_GPU_RECOVERY_ACTION = 230

# nvmlValueType_t (nvml.h): the member of a field value's union that holds an integer.
_INTEGER_MEMBERS = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


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


class _Queries:
    """Runs NVML queries, keeping "unknown" apart from "failed".

    Each query gets ``leading`` (a GPU's handle, or nothing for system queries)
    before its own arguments.
    """

    def __init__(self, *leading: Any) -> None:
        self.leading = leading
        self.errors: list[str] = []

    def get(self, *functions: Callable[..., T], args: tuple[Any, ...] = ()) -> T | None:
        """The result of the first of ``functions`` the driver has; None if unknown.

        Later functions are fallbacks for older drivers that lack the earlier
        symbol (for example ...ThrottleReasons before ...ClocksEventReasons).
        """
        for function in functions:
            try:
                return function(*self.leading, *args)
            except pynvml.NVMLError_FunctionNotFound:
                continue
            except pynvml.NVMLError_NotSupported:
                return None
            except pynvml.NVMLError as error:
                self.errors.append(f"{function.__name__}: {error}")
                return None
        return None


def _text(value: str | bytes) -> str:
    # Fields of ctypes structures (unlike the binding's string functions) come back as bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _field_value(q: _Queries, field_id: int) -> int | None:
    """An integer field value of the GPU; None where the driver does not offer it.

    The call succeeds as a whole and reports each field's own result: a driver
    that predates the field, or a GPU without it, answers there, so that
    error means "unknown", never a failure of the GPU.
    """
    values = q.get(pynvml.nvmlDeviceGetFieldValues, args=([field_id],))
    if values is None:
        return None
    (field,) = values
    member = _INTEGER_MEMBERS.get(field.valueType)
    if field.nvmlReturn != pynvml.NVML_SUCCESS or member is None:
        return None
    value: int = getattr(field.value, member)
    return value


def read_sample(index: int, handle: Any) -> GpuSample:
    q = _Queries(handle)
    clock_mask = q.get(
        pynvml.nvmlDeviceGetCurrentClocksEventReasons,
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
    )
    remap = q.get(pynvml.nvmlDeviceGetRemappedRows)
    sbe = q.get(
        pynvml.nvmlDeviceGetRetiredPages,
        args=(pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,),
    )
    dbe = q.get(
        pynvml.nvmlDeviceGetRetiredPages,
        args=(pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,),
    )
    pending_pages = q.get(pynvml.nvmlDeviceGetRetiredPagesPendingStatus)
    util = q.get(pynvml.nvmlDeviceGetUtilizationRates)
    processes = q.get(
        pynvml.nvmlDeviceGetComputeRunningProcesses_v3,
        pynvml.nvmlDeviceGetComputeRunningProcesses_v2,
    )
    recovery_action = _field_value(q, FI_DEV_GET_GPU_RECOVERY_ACTION)

    def ecc(kind: int, counter: int) -> int | None:
        return q.get(pynvml.nvmlDeviceGetTotalEccErrors, args=(kind, counter))

    return GpuSample(
        index=index,
        uuid=q.get(pynvml.nvmlDeviceGetUUID),
        name=q.get(pynvml.nvmlDeviceGetName),
        temperature_c=q.get(
            pynvml.nvmlDeviceGetTemperatureV,
            pynvml.nvmlDeviceGetTemperature,
            args=(pynvml.NVML_TEMPERATURE_GPU,),
        ),
        power_mw=q.get(pynvml.nvmlDeviceGetPowerUsage),
        power_limit_mw=q.get(pynvml.nvmlDeviceGetEnforcedPowerLimit),
        sm_clock_mhz=q.get(pynvml.nvmlDeviceGetClockInfo, args=(pynvml.NVML_CLOCK_SM,)),
        sm_clock_max_mhz=q.get(pynvml.nvmlDeviceGetMaxClockInfo, args=(pynvml.NVML_CLOCK_SM,)),
        mem_clock_mhz=q.get(pynvml.nvmlDeviceGetClockInfo, args=(pynvml.NVML_CLOCK_MEM,)),
        mem_clock_max_mhz=q.get(pynvml.nvmlDeviceGetMaxClockInfo, args=(pynvml.NVML_CLOCK_MEM,)),
        clock_events=None if clock_mask is None else ClockEvents(clock_mask),
        ecc_corrected_volatile=ecc(
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
        ecc_uncorrected_volatile=ecc(
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
        ecc_corrected_aggregate=ecc(
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC
        ),
        ecc_uncorrected_aggregate=ecc(
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC
        ),
        remapped_rows=None
        if remap is None
        else RemappedRows(
            correctable=remap[0],
            uncorrectable=remap[1],
            pending=bool(remap[2]),
            failure=bool(remap[3]),
        ),
        retired_pages_sbe=None if sbe is None else len(sbe),
        retired_pages_dbe=None if dbe is None else len(dbe),
        retired_pages_pending=None if pending_pages is None else bool(pending_pages),
        pcie_gen=q.get(pynvml.nvmlDeviceGetCurrPcieLinkGeneration),
        pcie_gen_max=q.get(pynvml.nvmlDeviceGetMaxPcieLinkGeneration),
        pcie_width=q.get(pynvml.nvmlDeviceGetCurrPcieLinkWidth),
        pcie_width_max=q.get(pynvml.nvmlDeviceGetMaxPcieLinkWidth),
        pcie_replays=q.get(pynvml.nvmlDeviceGetPcieReplayCounter),
        gpu_util_pct=None if util is None else util.gpu,
        mem_util_pct=None if util is None else util.memory,
        processes=None
        if processes is None
        else tuple(GpuProcess(p.pid, p.usedGpuMemory) for p in processes),
        recovery_action=None if recovery_action is None else recovery_action_name(recovery_action),
        errors=tuple(q.errors),
    )


def read_inventory(index: int, handle: Any) -> GpuInventory:
    q = _Queries(handle)
    pci = q.get(pynvml.nvmlDeviceGetPciInfo_v3)
    arch = q.get(pynvml.nvmlDeviceGetArchitecture)
    capability = q.get(pynvml.nvmlDeviceGetCudaComputeCapability)
    memory = q.get(pynvml.nvmlDeviceGetMemoryInfo)
    mig = q.get(pynvml.nvmlDeviceGetMigMode)
    return GpuInventory(
        index=index,
        uuid=q.get(pynvml.nvmlDeviceGetUUID),
        serial=q.get(pynvml.nvmlDeviceGetSerial),
        name=q.get(pynvml.nvmlDeviceGetName),
        pci_bus_id=None if pci is None else _text(pci.busId),
        pci_device_id=None if pci is None else pci.pciDeviceId,
        architecture=None if arch is None else architecture_name(arch),
        compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
        vbios=q.get(pynvml.nvmlDeviceGetVbiosVersion),
        memory_total_bytes=None if memory is None else memory.total,
        mig_enabled=None if mig is None else mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE,
        mig_pending=None if mig is None else mig[1] == pynvml.NVML_DEVICE_MIG_ENABLE,
        errors=tuple(q.errors),
    )


def _open(index: int) -> tuple[Any, str | None]:
    """The handle of GPU ``index``, or None and why NVML cannot open it."""
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(index), None
    except pynvml.NVMLError as error:
        return None, explain(error, f"opening GPU {index}")


def collect() -> HostGpus:
    """Inventory and a health sample of every GPU. Raises ``NvmlUnavailable``."""
    try:
        with nvml_session():
            driver_version = pynvml.nvmlSystemGetDriverVersion()
            system = _Queries()
            cuda_version = system.get(
                pynvml.nvmlSystemGetCudaDriverVersion_v2, pynvml.nvmlSystemGetCudaDriverVersion
            )
            inventory, samples = [], []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle, error = _open(index)
                if error is not None:
                    inventory.append(GpuInventory(index=index, errors=(error,)))
                    samples.append(GpuSample(index=index, errors=(error,)))
                    continue
                inventory.append(read_inventory(index, handle))
                samples.append(read_sample(index, handle))
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(explain(error, "listing the GPUs")) from error
    return HostGpus(
        driver_version=driver_version,
        cuda_driver_version=None if cuda_version is None else cuda_version_text(cuda_version),
        inventory=tuple(inventory),
        samples=tuple(samples),
        errors=tuple(system.errors),
    )


def attestation_evidence(nonce: bytes) -> tuple[tuple[GpuEvidence, ...], tuple[str, ...]]:
    """Each GPU's SPDM attestation report answering ``nonce``, with its certificate
    chain, and what failed on the way. A GPU that does not attest (not in
    confidential-computing mode, or a driver without the calls) gives none and
    no error. Raises ``NvmlUnavailable``."""
    found, errors = [], []
    try:
        with nvml_session():
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle, error = _open(index)
                if error is not None:
                    errors.append(error)
                    continue
                q = _Queries(handle)
                report = q.get(pynvml.nvmlDeviceGetConfComputeGpuAttestationReport, args=(nonce,))
                certificate = q.get(pynvml.nvmlDeviceGetConfComputeGpuCertificate)
                uuid = q.get(pynvml.nvmlDeviceGetUUID)
                errors += [f"GPU {index}: {e}" for e in q.errors]
                if report is None or certificate is None or uuid is None:
                    continue
                found.append(
                    GpuEvidence(
                        index=index,
                        uuid=uuid,
                        report=_sized(report.attestationReport, report.attestationReportSize),
                        cert_chain=_sized(
                            certificate.attestationCertChain, certificate.attestationCertChainSize
                        ),
                    )
                )
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(explain(error, "reading GPU attestation evidence")) from error
    return tuple(found), tuple(errors)


def _sized(buffer: Any, size: int) -> bytes:
    """The first ``size`` bytes of a ctypes array, never past its end (the size is the
    driver's word)."""
    return bytes(buffer[: min(size, len(buffer))])


def _gpu_health(index: int, driver_version: str) -> tuple[GpuHealth, GpuSample | None]:
    handle, error = _open(index)
    if error is not None:
        return GpuHealth(index, "unknown", "unknown", driver_version, False, (error,)), None
    sample = read_sample(index, handle)
    problems = gate_problems(sample)
    health = GpuHealth(
        index=index,
        name=sample.name or "unknown",
        uuid=sample.uuid or "unknown",
        driver_version=driver_version,
        healthy=not problems,
        problems=problems,
    )
    return health, sample


# A listener that died (no driver yet, a GPU lost) is started again, but not on
# every probe: a cycle probes several times, and each start initialises NVML.
XID_RESTART_S = 60.0


class NvmlProbe:
    """The health probe of a real host: ``node.gpu_health.HealthProbe`` over NVML.

    With ``watch_xids`` (the long-running agent) it also keeps an ``XidListener``
    running and hands out the XIDs it received with every result; ``close``
    stops it.
    """

    def __init__(self, *, watch_xids: bool = False) -> None:
        self._watch = watch_xids
        self._listener: XidListener | None = None
        self._earlier: tuple[XidEvent, ...] = ()  # kept by listeners that have ended
        self._started = -XID_RESTART_S

    def probe(self) -> ProbeResult:
        xids = self._xids()
        try:
            with nvml_session():
                driver_version = pynvml.nvmlSystemGetDriverVersion()
                seen = [
                    _gpu_health(index, driver_version)
                    for index in range(pynvml.nvmlDeviceGetCount())
                ]
        except NvmlUnavailable as error:
            log.warning("nvml_unavailable", error=str(error))
            return ProbeResult(driver_version=None, gpus=(), error=str(error), xids=xids)
        except pynvml.NVMLError as error:
            message = explain(error, "reading the driver version and GPU list")
            log.warning("nvml_probe_failed", error=message)
            return ProbeResult(driver_version=None, gpus=(), error=message, xids=xids)
        except Exception as error:
            # The gate runs in the middle of an update: a bug here must fail the
            # gate (and roll back), not kill the agent between switch and commit.
            log.exception("nvml_probe_crashed")
            return ProbeResult(
                driver_version=None, gpus=(), error=f"NVML probe crashed: {error!r}", xids=xids
            )
        return ProbeResult(
            driver_version=driver_version,
            gpus=tuple(health for health, _ in seen),
            samples=tuple(sample for _, sample in seen if sample is not None),
            xids=xids,
        )

    def _xids(self) -> tuple[XidEvent, ...]:
        if not self._watch:
            return ()
        listener = self._listener
        if (listener is None or not listener.running) and (
            time.monotonic() - self._started >= XID_RESTART_S
        ):
            if listener is not None:
                self._earlier = (self._earlier + listener.events())[-MAX_KEPT_XIDS:]
            self._started = time.monotonic()
            listener = self._listener = XidListener()
            listener.start()
        return self._earlier + (listener.events() if listener is not None else ())

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()


def _address(pointer: Any) -> int | None:
    """The address an NVML handle points at: how an event names its device."""
    value: int | None = ctypes.cast(pointer, ctypes.c_void_p).value
    return value


class XidListener:
    """Records the XIDs NVML reports, each with the time and GPU, in a thread.

    NVML only reports XIDs raised after registration; earlier ones are in the
    kernel log. ``start`` returns once every GPU that supports XID events is
    registered (``watched``); a GPU that does not is listed in ``unwatched``.
    If NVML fails, ``error`` says why and the thread ends.
    """

    def __init__(
        self,
        on_xid: Callable[[XidEvent], None] | None = None,
        *,
        wait_ms: int = 1000,
    ) -> None:
        self._on_xid = on_xid
        self._wait_ms = wait_ms  # how long stop() may take to be noticed
        self._lock = threading.Lock()
        self._events: deque[XidEvent] = deque(maxlen=MAX_KEPT_XIDS)
        self.total = 0  # XIDs received, including those no longer kept
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xid-listener", daemon=True)
        self.watched: tuple[int, ...] = ()
        self.unwatched: tuple[int, ...] = ()
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def events(self) -> tuple[XidEvent, ...]:
        """The latest XIDs received (at most ``MAX_KEPT_XIDS``), oldest first."""
        with self._lock:
            return tuple(self._events)

    def _run(self) -> None:
        try:
            with nvml_session():
                event_set = pynvml.nvmlEventSetCreate()
                try:
                    self._listen(event_set)
                finally:
                    pynvml.nvmlEventSetFree(event_set)
        except NvmlUnavailable as error:
            self.error = str(error)
        except pynvml.NVMLError as error:
            self.error = explain(error, "listening for XIDs")
        except Exception as error:
            # Losing XIDs silently would hide failing GPUs: make the failure visible.
            log.exception("xid_listener_crashed")
            self.error = f"XID listener crashed: {error!r}"
        finally:
            self._ready.set()
        if self.error is not None:
            log.error("xid_listener_failed", error=self.error)

    def _register(self, event_set: Any) -> dict[int | None, tuple[int | None, str | None]]:
        """Register every GPU that can report XIDs; map handle addresses to index and UUID."""
        gpus: dict[int | None, tuple[int | None, str | None]] = {}
        unwatched = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle, error = _open(index)
            q = _Queries(handle)
            supported = None if error else q.get(pynvml.nvmlDeviceGetSupportedEventTypes)
            if supported is None or not supported & pynvml.nvmlEventTypeXidCriticalError:
                unwatched.append(index)
                log.warning(
                    "xid_events_unsupported", gpu=index, error=error or "; ".join(q.errors) or None
                )
                continue
            pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
            gpus[_address(handle)] = (index, q.get(pynvml.nvmlDeviceGetUUID))
        self.watched = tuple(index for index, _ in gpus.values() if index is not None)
        self.unwatched = tuple(unwatched)
        return gpus

    def _listen(self, event_set: Any) -> None:
        gpus = self._register(event_set)
        self._ready.set()
        log.info("xid_listener_started", watched=self.watched, unwatched=self.unwatched)
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait_v2(event_set, self._wait_ms)
            except pynvml.NVMLError_Timeout:
                continue
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            index, uuid = gpus.get(_address(data.device), (None, None))
            event = XidEvent(at=time.time(), gpu_index=index, gpu_uuid=uuid, xid=data.eventData)
            xid_class = classify_xid(event.xid)
            log.warning(
                "xid",
                gpu=index,
                uuid=uuid,
                xid=event.xid,
                severity=xid_class.severity,
                description=xid_class.description,
                action=xid_class.action,
            )
            with self._lock:
                self._events.append(event)
                self.total += 1
            if self._on_xid is not None:
                self._on_xid(event)


_COMPUTE_MODE_NAMES = {number: name for name, number in COMPUTE_MODES.items()}
_ENABLED = pynvml.NVML_FEATURE_ENABLED


def _mode(
    q: _Queries, errors: dict[str, str], setting: str, function: Callable[..., T]
) -> T | None:
    """A mode query's result; why it failed goes in ``errors`` under ``setting``."""
    before = len(q.errors)
    value = q.get(function)
    if len(q.errors) > before:
        errors[setting] = q.errors[-1]
    return value


def _read_modes(index: int, handle: Any) -> GpuModes:
    q, errors = _Queries(handle), dict[str, str]()
    persistence = _mode(q, errors, "persistence_mode", pynvml.nvmlDeviceGetPersistenceMode)
    ecc = _mode(q, errors, "ecc", pynvml.nvmlDeviceGetEccMode)
    mig = _mode(q, errors, "mig", pynvml.nvmlDeviceGetMigMode)
    compute = _mode(q, errors, "compute_mode", pynvml.nvmlDeviceGetComputeMode)
    return GpuModes(
        index=index,
        uuid=q.get(pynvml.nvmlDeviceGetUUID),
        persistence_mode=None if persistence is None else persistence == _ENABLED,
        ecc=None if ecc is None else ecc[0] == _ENABLED,
        ecc_pending=None if ecc is None else ecc[1] == _ENABLED,
        mig=None if mig is None else mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE,
        mig_pending=None if mig is None else mig[1] == pynvml.NVML_DEVICE_MIG_ENABLE,
        compute_mode=None if compute is None else _COMPUTE_MODE_NAMES.get(compute, str(compute)),
        errors=errors,
    )


def read_gpu_modes() -> tuple[GpuModes, ...]:
    """Every GPU's persistence, ECC, MIG and compute mode. Raises ``NvmlUnavailable``."""
    try:
        with nvml_session():
            found = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle, error = _open(index)
                found.append(
                    GpuModes(index, None, errors=dict.fromkeys(GPU_SETTINGS, error))
                    if error is not None
                    else _read_modes(index, handle)
                )
            return tuple(found)
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(explain(error, "reading the GPU modes")) from error


def _set_mode(handle: Any, now: GpuModes, setting: str, value: bool | str) -> str | None:
    """Set one declared mode where the GPU differs; what is still to come, if anything."""
    enable = _ENABLED if value is True else pynvml.NVML_FEATURE_DISABLED
    if setting == "persistence_mode" and now.persistence_mode != value:
        pynvml.nvmlDeviceSetPersistenceMode(handle, enable)
    elif setting == "compute_mode" and now.compute_mode != value:
        pynvml.nvmlDeviceSetComputeMode(handle, COMPUTE_MODES[str(value)])
    elif setting == "ecc" and value not in (now.ecc, now.ecc_pending):
        pynvml.nvmlDeviceSetEccMode(handle, enable)  # NVML applies it at the next reboot
        return "ECC mode takes effect at the next reboot"
    elif setting == "mig" and now.mig != value and now.mig_pending != value:
        mig = pynvml.NVML_DEVICE_MIG_ENABLE if value else pynvml.NVML_DEVICE_MIG_DISABLE
        activation = pynvml.nvmlDeviceSetMigMode(handle, mig)
        if activation != pynvml.NVML_SUCCESS:
            why = pynvml.nvmlErrorString(activation)
            return f"MIG mode takes effect at the next GPU reset ({why})"
    return None


def set_gpu_modes(modes: tuple[tuple[str, bool | str], ...]) -> tuple[str, ...]:
    """Set ``modes`` (``DriverSettings.gpu_modes``) on every GPU where they differ.

    Returns what failed, one line per GPU and setting, for the applier to report;
    a change NVML defers to a reset is logged, not a failure. Raises ``NvmlUnavailable``.
    """
    failed = []
    try:
        with nvml_session():
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle, error = _open(index)
                if error is not None:
                    failed.append(f"GPU {index}: {error}")
                    continue
                now = _read_modes(index, handle)
                for setting, value in modes:
                    try:
                        deferred = _set_mode(handle, now, setting, value)
                    except pynvml.NVMLError as failure:
                        failed.append(f"GPU {index}: {explain(failure, f'setting {setting}')}")
                        continue
                    if deferred is not None:
                        log.info("gpu_mode_deferred", gpu=index, setting=setting, reason=deferred)
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(explain(error, "setting the GPU modes")) from error
    return tuple(failed)


def probe_to_dict(result: ProbeResult) -> dict[str, Any]:
    return {
        "driver_version": result.driver_version,
        "error": result.error,
        "gpus": [gpu.to_dict() for gpu in result.gpus],
    }


def inventory_to_dict(host: HostGpus) -> dict[str, Any]:
    return {
        "driver_version": host.driver_version,
        "cuda_driver_version": host.cuda_driver_version,
        "errors": list(host.errors),
        "gpus": [
            {
                "inventory": inventory.to_dict(),
                "sample": sample.to_dict(),
                "findings": [asdict(f) for f in degradations(sample)],
            }
            for inventory, sample in zip(host.inventory, host.samples, strict=True)
        ],
    }
