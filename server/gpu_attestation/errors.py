"""The error GPU evidence raises when it cannot even be read.

Evidence that parses but does not verify is not an error: it becomes a failed
check in the verdict (``fleet.gpu_attestation``). This one is for what cannot be
judged at all (a report that is not SPDM, a certificate file that is not PEM),
and its message names the field or file so the operator knows what to fix.
"""

from __future__ import annotations

from fleet.errors import GpuwardError


class GpuEvidenceError(GpuwardError):
    """GPU attestation evidence (report, certificates, RIM) is malformed."""


class EvidenceRefused(GpuwardError):
    """GPU evidence was read but is not to be trusted: the verdict's failed check says why."""
