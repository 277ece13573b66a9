"""The applier's tests measure drivers into swtpm: the attestation tests' TPM fixtures."""

from tests.attest.conftest import start_tpm, tpm, tpm_templates

__all__ = ["start_tpm", "tpm", "tpm_templates"]
