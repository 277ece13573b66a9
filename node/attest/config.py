"""Settings of the TPM attestor: which TPM, which keys, which PCRs, which log.

Defaults fit a Linux host with a TPM 2.0 behind the kernel's resource manager;
tests point ``tcti`` at swtpm and ``event_log`` at a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fleet.attestation import PcrSelection
from fleet.driverlog import DEFAULT_DRIVER_PCR, driver_pcr_problem
from fleet.errors import GpuwardError
from fleet.schema import Reader

# EK types as tpm2-pytss's create_ek_template names them, tried in this order: the
# first whose certificate is in NV wins (RSA 2048 at 0x01c00002, ECC P-256 at
# 0x01c0000a). These low-range templates have the plain PolicySecret(endorsement)
# policy the attestor satisfies; the high-range ones (0x01c00012 and up) need a
# PolicyOR this attestor does not build yet.
DEFAULT_EK_TYPES = ("EK-RSA2048", "EK-ECC256")
KNOWN_EK_TYPES = frozenset(DEFAULT_EK_TYPES)
# TCG "Provisioning Guidance": 0x81010000-0x8101FFFF are for endorsement keys;
# tpm2-tools' examples keep the AK at 0x81010002.
DEFAULT_AK_HANDLE = 0x81010002
DEFAULT_BOOT_PCRS = tuple(range(10))
DEFAULT_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
_TCTI = re.compile(r"(device|swtpm|mssim|tabrmd):[A-Za-z0-9_./=,:-]{0,200}")


def ak_file(state_dir: Path) -> Path:
    """Where the attestor keeps the public half of the AK it persisted in the TPM."""
    return state_dir / "attest" / "ak.pub"


def default_selection(driver_pcr: int = DEFAULT_DRIVER_PCR) -> PcrSelection:
    """sha256 PCRs 0-9 (firmware, boot loader, kernel) and the driver PCR."""
    return PcrSelection.of({"sha256": (*DEFAULT_BOOT_PCRS, driver_pcr)})


@dataclass(frozen=True)
class AttestConfig:
    tcti: str = "device:/dev/tpmrm0"
    ak_handle: int = DEFAULT_AK_HANDLE
    ek_types: tuple[str, ...] = DEFAULT_EK_TYPES
    driver_pcr: int = DEFAULT_DRIVER_PCR
    selection: PcrSelection = field(default_factory=default_selection)
    event_log: Path = DEFAULT_EVENT_LOG

    def __post_init__(self) -> None:
        if not _TCTI.fullmatch(self.tcti):
            raise GpuwardError(
                f"attestation: tcti {self.tcti!r} must look like device:/dev/tpmrm0 or "
                "swtpm:port=2321"
            )
        if not 0x81000000 <= self.ak_handle <= 0x81FFFFFF:
            raise GpuwardError(
                f"attestation: ak_handle 0x{self.ak_handle:08x} is not a persistent handle "
                "(0x81000000 to 0x81ffffff)"
            )
        unknown = set(self.ek_types) - KNOWN_EK_TYPES
        if unknown or not self.ek_types:
            raise GpuwardError(
                f"attestation: ek_types must be some of {', '.join(DEFAULT_EK_TYPES)}"
            )
        problem = driver_pcr_problem(self.driver_pcr)
        if problem is not None:
            raise GpuwardError(f"attestation: driver_pcr: {problem}")
        if self.driver_pcr not in dict(self.selection.banks).get("sha256", ()):
            raise GpuwardError(
                f"attestation: the PCR selection {self.selection.text()} leaves out the "
                f"driver PCR sha256:{self.driver_pcr}; add it"
            )

    @classmethod
    def from_dict(cls, doc: object, base: Path) -> AttestConfig:
        """From the agent config's ``[attestation]`` table."""
        r = Reader(
            doc,
            "agent config [attestation]",
            allowed=frozenset({"tcti", "ak_handle", "ek_types", "driver_pcr", "pcrs", "event_log"}),
        )
        default = cls()
        driver_pcr = r.integer("driver_pcr", maximum=23, default=DEFAULT_DRIVER_PCR)
        pcrs = r.optional_text("pcrs", max_len=256)
        ek_types = r.items("ek_types", max_items=8, default=list(DEFAULT_EK_TYPES))
        if not all(isinstance(t, str) for t in ek_types):
            raise GpuwardError("agent config [attestation]: ek_types must be strings")
        return cls(
            tcti=r.text("tcti", default=default.tcti, max_len=256),
            ak_handle=r.integer("ak_handle", default=DEFAULT_AK_HANDLE, maximum=0xFFFFFFFF),
            ek_types=tuple(ek_types),
            driver_pcr=driver_pcr,
            selection=default_selection(driver_pcr) if pcrs is None else PcrSelection.parse(pcrs),
            event_log=base / r.text("event_log", default=str(DEFAULT_EVENT_LOG)),
        )
