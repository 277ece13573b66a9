"""The CLI's tests enroll through the attestation tests' swtpm and TPM-enrolling server."""

from tests.attest.conftest import start_tpm, tpm, tpm_site, tpm_templates

__all__ = ["start_tpm", "tpm", "tpm_site", "tpm_templates"]
