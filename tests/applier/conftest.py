"""The applier's tests use the attestation tests' swtpm and verifier (to measure
drivers and check the measurements) and the NVML tests' fake libnvidia-ml (for
the health gate)."""

from tests.attest.conftest import (
    challenges,
    clock,
    enrollment,
    start_tpm,
    tpm,
    tpm_templates,
    trust,
)
from tests.nvml.conftest import fake_nvml_libs

__all__ = [
    "challenges",
    "clock",
    "enrollment",
    "fake_nvml_libs",
    "start_tpm",
    "tpm",
    "tpm_templates",
    "trust",
]
