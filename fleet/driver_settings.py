"""The driver settings an operator declares with a bundle, and how a node drifts from them.

A driver is more than its version: the nvidia.ko module parameters it loads with
(``NVreg_*``; CDMM on GB200 with R580 or later is ``NVreg_CoherentGPUMemoryMode=driver``)
and the GPU modes NVML sets (persistence, ECC, MIG, compute mode) decide how it
behaves. Where the declaration lives decides who can change it, so it rides in
the bundle manifest (``fleet.manifest``), which the image repository's offline
targets key signs into the TUF target's ``custom`` field:

* a compromised agent, server or director cannot alter it: the root applier
  re-verifies the manifest against the signed metadata before it acts, as it
  does for the bundle itself;
* it lands in the slot's ``bundle.json`` with the driver, so the one ``active``
  flip switches driver and settings together and a rollback restores the
  previous slot's settings with its driver, never a mix of the two;
* parameters are driver-specific (the CDMM switch exists from R580), so the
  manifest checks each against the driver version it travels with.

The applier's own config was the other candidate: root-owned, but per node and
unsigned, so a fleet's settings would differ by whoever last edited each host.

Module parameters end up on an ``options nvidia ...`` line of a modprobe.d file,
which modprobe reads as root, and where an ``install`` or ``remove`` line would
run a shell command. So nothing here is free text: known parameters are a
whitelist with a type each, names gpuward does not know must be opted into one
by one under ``unlisted_parameters``, every value is a short token of letters,
digits and ``. _ , : / + -`` (no space, quote, ``;``, ``$``, backquote or newline),
and ``modprobe_options`` renders the one line from those checked tokens only.

The agent compares what the node runs with the declaration: module parameters
as ``/proc/driver/nvidia/params`` shows them (``parse_params``), GPU modes as
NVML reads them (``GpuModes``); ``drift`` lists every difference for the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fleet.errors import InvalidDocument
from fleet.wire import (
    Boolean,
    Convert,
    Document,
    Field,
    Integer,
    ListOf,
    MapOf,
    Ref,
    Text,
    Wire,
    optional,
)

MAX_PARAMETERS = 32  # per map: nvidia.ko has about forty parameters in all
MAX_VALUE = 128
MAX_DRIFT = 128  # per report: 4 GPU modes on 8 GPUs plus every parameter fits

# A value modprobe passes through untouched: no whitespace, quote, ';', '$',
# backquote, '=' or newline, so it can neither end the options line nor start
# another directive, and means the same to modprobe and to the kernel.
_VALUE = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._,:/+-]{0,127}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")
_PARAMETER_NAME = re.compile(r"NVreg_[A-Za-z][A-Za-z0-9]{0,62}")
# An absolute directory without "." or ".." components.
_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._+-]+)+/?")

# nvmlComputeMode_t: 1 (exclusive thread) is no longer supported by NVML.
COMPUTE_MODES: Mapping[str, int] = {"default": 0, "prohibited": 2, "exclusive-process": 3}
# The NVML-level settings, as declarations and drift reports name them.
GPU_SETTINGS = ("persistence_mode", "ecc", "mig", "compute_mode")
CDMM = "NVreg_CoherentGPUMemoryMode"


@dataclass(frozen=True)
class ModuleParameter:
    """One nvidia.ko parameter gpuward knows: its type, and where the driver shows it."""

    name: str  # the module parameter, as modprobe takes it
    shown_as: str  # its line in /proc/driver/nvidia/params
    maximum: int | None = None  # an integer from 0 to this
    choices: frozenset[str] | None = None  # a word from these
    path: bool = False  # an absolute directory
    since: int | None = None  # the first driver branch that has it (None: before R535)

    def check(self, value: str) -> str | None:
        """Why ``value`` is not one this parameter takes; None when it is."""
        if self.maximum is not None:
            if not _DECIMAL.fullmatch(value) or int(value) > self.maximum:
                return f"must be a decimal integer from 0 to {self.maximum}"
        elif self.choices is not None:
            if value not in self.choices:
                return f"must be one of {', '.join(sorted(self.choices))}"
        elif self.path and not _PATH.fullmatch(value):
            return "must be an absolute directory without . or .. components"
        return None


def _flag(name: str, shown_as: str | None = None) -> ModuleParameter:
    return ModuleParameter(f"NVreg_{name}", shown_as or name, maximum=1)


# From the driver's own nv-reg.h (open-gpu-kernel-modules): what each takes.
KNOWN_PARAMETERS: Mapping[str, ModuleParameter] = {
    p.name: p
    for p in (
        # CDMM: "driver" lets the driver, not the OS, manage coherent GPU memory
        # (no NUMA node per GPU); GB200 from R580. Incompatible with MIG.
        ModuleParameter(
            CDMM, "CoherentGPUMemoryMode", choices=frozenset({"driver", "numa"}), since=580
        ),
        ModuleParameter("NVreg_EnableGpuFirmware", "EnableGpuFirmware", maximum=0xFF),
        ModuleParameter("NVreg_EnableGpuFirmwareLogs", "EnableGpuFirmwareLogs", maximum=2),
        _flag("EnableStreamMemOPs"),
        _flag("EnableUserNUMAManagement"),
        _flag("NvLinkDisable"),
        _flag("RestrictProfilingToAdminUsers", "RmProfilingAdminOnly"),
        _flag("PreserveVideoMemoryAllocations"),
        ModuleParameter("NVreg_TemporaryFilePath", "TemporaryFilePath", path=True),
        _flag("ModifyDeviceFiles"),
        ModuleParameter("NVreg_DeviceFileUID", "DeviceFileUID", maximum=2**31 - 1),
        ModuleParameter("NVreg_DeviceFileGID", "DeviceFileGID", maximum=2**31 - 1),
        ModuleParameter("NVreg_DeviceFileMode", "DeviceFileMode", maximum=0o777),
        _flag("InitializeSystemMemoryAllocations"),
        _flag("EnableMSI"),
        _flag("EnablePCIERelaxedOrderingMode"),
        _flag("EnableResizableBar"),
        ModuleParameter("NVreg_DynamicPowerManagement", "DynamicPowerManagement", maximum=3),
        # Up to 2**20 channels: the limit of a dev_t minor number.
        ModuleParameter("NVreg_ImexChannelCount", "ImexChannelCount", maximum=2**20),
        _flag("CreateImexChannel0"),
        _flag("DmaRemapPeerMmio"),
        _flag("GrdmaPciTopoCheckOverride"),
    )
}


def _unlisted(name: str) -> ModuleParameter:
    """A parameter gpuward does not know: the driver shows it under its own name."""
    return ModuleParameter(name, name.removeprefix("NVreg_"))


def parameter(name: str) -> ModuleParameter:
    return KNOWN_PARAMETERS.get(name) or _unlisted(name)


Parameters = tuple[tuple[str, str], ...]  # (name, value), sorted by name
_NAME = Text(max_len=70, pattern=_PARAMETER_NAME)


def _known(values: Mapping[str, str]) -> Parameters:
    for name, value in values.items():
        if name not in KNOWN_PARAMETERS:
            raise InvalidDocument(
                f"module_parameters.{name} is not a parameter gpuward knows; check its "
                "spelling, or declare it under unlisted_parameters to pass it unchecked"
            )
        problem = KNOWN_PARAMETERS[name].check(value)
        if problem is not None:
            raise InvalidDocument(f"module_parameters.{name} {problem}, not {value!r}")
    return tuple(sorted(values.items()))


def _unlisted_values(values: Mapping[str, str]) -> Parameters:
    for name in values:
        if name in KNOWN_PARAMETERS:
            raise InvalidDocument(
                f"unlisted_parameters.{name} is a parameter gpuward knows: declare it under "
                "module_parameters, where its value is checked"
            )
    return tuple(sorted(values.items()))


def _parameter_map(
    field: str,
    names: Text,
    decode: Callable[[Mapping[str, str]], Parameters],
    examples: tuple[dict[str, str], ...],
    about: str,
) -> Field:
    return Field(
        field,
        Convert(
            MapOf(names, Text(max_len=MAX_VALUE, pattern=_VALUE), MAX_PARAMETERS),
            decode=decode,
            encode=dict,
            examples=examples,
            description=about,
        ),
        default=(),
        omit_default=True,
    )


@dataclass(frozen=True)
class DriverSettings(Wire):
    """The driver settings an operator declares with a bundle: nvidia.ko parameters,
    and GPU modes NVML sets on every GPU (null: left as the node has it)."""

    module_parameters: Parameters = ()
    unlisted_parameters: Parameters = ()
    persistence_mode: bool | None = None
    ecc: bool | None = None
    mig: bool | None = None
    compute_mode: str | None = None  # one of COMPUTE_MODES

    def __post_init__(self) -> None:
        # NVIDIA's R580 release notes: CDMM is incompatible with MIG (and GPUDirect Storage).
        if dict(self.module_parameters).get(CDMM) == "driver" and self.mig:
            raise InvalidDocument(
                f"settings: {CDMM}=driver (CDMM) is incompatible with MIG; declare mig false "
                "or another coherent memory mode"
            )

    @property
    def parameters(self) -> Parameters:
        """Every module parameter declared, known and unlisted, sorted by name."""
        return tuple(sorted(self.module_parameters + self.unlisted_parameters))

    @property
    def gpu_modes(self) -> tuple[tuple[str, bool | str], ...]:
        """The NVML-level settings declared, as (name, value) in ``GPU_SETTINGS`` order."""
        values = (self.persistence_mode, self.ecc, self.mig, self.compute_mode)
        return tuple((n, v) for n, v in zip(GPU_SETTINGS, values, strict=True) if v is not None)

    def problems_for(self, branch: int) -> list[str]:
        """Parameters driver branch ``branch`` predates."""
        return [
            f"{name} needs R{spec.since} or later, not R{branch}"
            for name, _ in self.module_parameters
            if (spec := KNOWN_PARAMETERS[name]).since is not None and branch < spec.since
        ]

    WIRE = Document(
        _parameter_map(
            "module_parameters",
            _NAME,
            _known,
            ({CDMM: "driver"}, {"NVreg_EnableStreamMemOPs": "1", "NVreg_DeviceFileMode": "432"}),
            "nvidia.ko parameters gpuward knows, each value checked against its type: "
            + ", ".join(sorted(KNOWN_PARAMETERS)),
        ),
        _parameter_map(
            "unlisted_parameters",
            _NAME,
            _unlisted_values,
            ({"NVreg_RmNvlinkBandwidthLinkCount": "2"},),
            "nvidia.ko parameters gpuward does not know, opted into one by one",
        ),
        optional("persistence_mode", Boolean()),
        optional("ecc", Boolean(), "ECC mode; takes effect at the next reboot"),
        optional("mig", Boolean(), "MIG mode; may take effect only at the next GPU reset"),
        optional("compute_mode", Text(choices=frozenset(COMPUTE_MODES))),
        where="settings",
    )


def modprobe_options(settings: DriverSettings, slot: str) -> bytes:
    """The modprobe.d file that gives nvidia.ko the declared parameters.

    The slot is named, never the bundle's path: only checked tokens reach the file.
    Each token is checked again here, so no path to this file skips the reader.
    """
    tokens = []
    for name, value in settings.parameters:
        if not (_PARAMETER_NAME.fullmatch(name) and _VALUE.fullmatch(value)):
            raise InvalidDocument(f"refusing to write module parameter {name!r}={value!r}")
        tokens.append(f"{name}={value}")
    if slot not in ("a", "b"):
        raise InvalidDocument(f"refusing to name slot {slot!r} in a modprobe file")
    return (
        f"# Written by the gpuward applier from slot {slot}'s signed bundle manifest, and\n"
        "# rewritten at every switch: change the bundle's settings, not this file.\n"
        f"options nvidia {' '.join(tokens)}\n"
    ).encode()


_PARAMS_LINE = re.compile(r'([A-Za-z][A-Za-z0-9_]{0,63}): (?:"([^"\n]{0,4096})"|(\d{1,20}))')


def parse_params(text: str) -> dict[str, str]:
    """``/proc/driver/nvidia/params`` as name to value: each line is ``Name: 123``
    (nv-procfs.c prints integers with ``%u``) or ``Name: "text"``. Other lines are
    skipped: a newer driver may print more."""
    found = {}
    for line in text.splitlines():
        match = _PARAMS_LINE.fullmatch(line.strip())
        if match is not None:
            name, quoted, number = match.groups()
            found[name] = quoted if quoted is not None else number
    return found


@dataclass(frozen=True)
class GpuModes:
    """One GPU's NVML-level settings as read; None where NVML does not say."""

    index: int
    uuid: str | None
    persistence_mode: bool | None = None
    ecc: bool | None = None
    ecc_pending: bool | None = None  # ECC mode after the next reboot
    mig: bool | None = None
    mig_pending: bool | None = None  # MIG mode after the next GPU reset
    compute_mode: str | None = None
    # Why a setting reads None, by GPU_SETTINGS name, where its query failed.
    errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectiveSettings:
    """What the node runs with: the driver's parameters and every GPU's modes."""

    params: Mapping[str, str] | None  # parse_params; None: unreadable (see params_error)
    gpus: tuple[GpuModes, ...]
    params_error: str = ""
    gpus_error: str = ""  # NVML could not be used at all


@dataclass(frozen=True)
class Drift(Wire):
    """A declared setting the node does not run with."""

    setting: str  # a module parameter's name, or one of GPU_SETTINGS
    gpu: int | None  # the GPU, for NVML-level settings
    declared: str
    effective: str | None  # None: unknown (see detail)
    pending: bool  # the declared value is set, and takes effect at the next reset or reboot
    detail: str

    @property
    def message(self) -> str:
        where = self.setting if self.gpu is None else f"GPU {self.gpu}: {self.setting}"
        now = "unknown" if self.effective is None else repr(self.effective)
        when = ", pending a reset or reboot" if self.pending else ""
        why = f" ({self.detail})" if self.detail else ""
        return f"{where} is {now}, declared {self.declared!r}{when}{why}"

    @property
    def reason(self) -> str:
        """As a health reason, or a health gate's."""
        return f"driver setting {self.message}"

    WIRE = Document(
        Field("setting", Text(max_len=70)),
        optional("gpu", Integer(maximum=64)),
        Field("declared", Text(max_len=MAX_VALUE)),
        optional("effective", Text(max_len=MAX_VALUE)),
        Field("pending", Boolean()),
        Field("detail", Text(max_len=512)),
        where="drift",
    )


@dataclass(frozen=True)
class SettingsReport(Wire):
    """The active bundle's declared driver settings and where the node differs."""

    declared: DriverSettings
    drift: tuple[Drift, ...]

    WIRE = Document(
        Field("declared", Ref(DriverSettings)),
        Field("drift", ListOf(Ref(Drift), MAX_DRIFT)),
        where="settings report",
    )


def _same(declared: str, effective: str) -> bool:
    """Integers compare by value: the driver prints them in decimal, as declared."""
    if _DECIMAL.fullmatch(declared) and effective.isdigit():
        return int(declared) == int(effective)
    return declared == effective


def _text(value: bool | str) -> str:
    if isinstance(value, bool):
        return "enabled" if value else "disabled"
    return value


def drift(declared: DriverSettings, effective: EffectiveSettings) -> tuple[Drift, ...]:
    """Every declared setting the node does not run with, parameters first."""
    found: list[Drift] = []
    for name, value in declared.parameters:
        spec = parameter(name)
        if effective.params is None:
            found.append(Drift(name, None, value, None, False, effective.params_error[:512]))
        elif spec.shown_as not in effective.params:
            found.append(Drift(name, None, value, None, False, "the loaded driver lacks it"))
        elif not _same(value, now := effective.params[spec.shown_as]):
            found.append(Drift(name, None, value, now[:MAX_VALUE], False, ""))
    modes = declared.gpu_modes
    if modes and effective.gpus_error:
        found.extend(
            Drift(name, None, _text(value), None, False, effective.gpus_error[:512])
            for name, value in modes
        )
    for gpu in effective.gpus if modes else ():
        found.extend(_gpu_drift(gpu, modes))
    return tuple(found[:MAX_DRIFT])


def _gpu_drift(gpu: GpuModes, modes: Iterable[tuple[str, bool | str]]) -> list[Drift]:
    found = []
    pending = {"ecc": gpu.ecc_pending, "mig": gpu.mig_pending}
    for name, value in modes:
        now = getattr(gpu, name)
        if now == value:
            continue
        detail = gpu.errors.get(name, "not supported by this GPU or driver" if now is None else "")
        found.append(
            Drift(
                name,
                gpu.index,
                _text(value),
                None if now is None else _text(now),
                pending.get(name) == value,
                detail[:512],
            )
        )
    return found


def failing(found: Iterable[Drift]) -> list[Drift]:
    """The drift a switch must not commit with: all but what waits for a reset."""
    return [d for d in found if not d.pending]
