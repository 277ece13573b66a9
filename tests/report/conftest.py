"""The swtpm fixtures of tests/attest, for reports on nodes a real TPM enrolled, and a
SoftHSM2 token (tests/softhsm.py) for a report key kept in one."""

from tests.attest.conftest import start_tpm, tpm, tpm_templates
from tests.softhsm import softhsm

__all__ = ["softhsm", "start_tpm", "tpm", "tpm_templates"]
