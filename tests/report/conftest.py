"""The swtpm fixtures of tests/attest, for reports on nodes a real TPM enrolled."""

from tests.attest.conftest import start_tpm, tpm, tpm_templates

__all__ = ["start_tpm", "tpm", "tpm_templates"]
