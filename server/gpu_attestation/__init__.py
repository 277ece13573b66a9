"""GPU attestation, verified offline: does this GPU run the firmware NVIDIA signed for?

Hopper and later GPUs answer a nonce with an SPDM measurement report signed by a
key whose certificate chains to NVIDIA's device root; NVIDIA publishes, per
driver and per VBIOS, a Reference Integrity Manifest (RIM) of the values each
measurement may take. NVIDIA's own verifier fetches RIMs and OCSP answers from
NVIDIA's services; gpuward's users run air-gapped, so this package needs nothing
but the files: the report (``spdm``), the chains (``certs``), the RIMs (``rim``),
and the verdict per check and per measurement index (``verifier``)::

    verdict = verify_evidence(report_bytes, chain_pem, RimSources(pool=rims),
                              nonce=challenge, at=now, trust=GpuTrust.nvidia())
    verdict.verdict           # pass, fail, or unknown (a missing RIM is never a pass)
    verdict.mismatched()      # the failing measurement indexes

The verdict is a wire document (``fleet.gpu_attestation``); ``gpuward gpu-attest
verify`` prints it.
"""
