"""TPM attestation on the node: enrollment, quotes bound to reports, session keys.

``Attestor`` (``node.attest.attestor``) does every TPM operation through
tpm2-pytss; ``AttestConfig`` (``node.attest.config``) says which TPM (TCTI),
which AK handle, which PCRs and which event log. The message formats are in
``fleet.attestation``, shared with the server.
"""
