"""NVIDIA's own GPU verifier as the peer gpuward's verdicts are compared with.

Run by ``tests/gpu_attest/nvidia.py`` with the Python of ``.venv-nvidia`` (the
``nv-local-gpu-verifier`` wheel with its own pinned dependencies), never
imported by pytest. It drives NVIDIA's ``cc_admin.attest`` in its test mode
(``test_no_gpu``: evidence from files instead of NVML), unchanged but for one
thing, stated here and in the tests: NVIDIA's test mode asks NVIDIA's OCSP
service about every certificate over the network, and nothing here may reach
the network, so ``CcAdminUtils.ocsp_certificate_chain_validation`` is replaced
by a stand-in that reports "good" without asking. gpuward's side waives
revocation explicitly (``--no-revocation-check``) for the same comparison.
Certificate dates are left to NVIDIA's code and its clock (the tests move the
clock with libfaketime where the sample's RIM signers have expired since).

Input on stdin (JSON): ``{"cases": [{"report", "chain", "driver_rim",
"vbios_rim", "nonce"}], "device_root": PATH or null, "rim_root": PATH or
null}``. Output on stdout (JSON): per case, NVIDIA's own check flags, the
indexes it compared and the ones it reported as mismatched (parsed from its own
log lines, ``<index> [Driver|Firmware]``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from typing import Any

# NVIDIA's config module writes verifier.log into the working directory on import.
os.chdir(tempfile.mkdtemp(prefix="nvidia-peer-"))

from verifier import cc_admin, config  # noqa: E402
from verifier.cc_admin_utils import CcAdminUtils  # noqa: E402
from verifier.config import BaseSettings, HopperSettings  # noqa: E402
from verifier.nvml.nvmlHandlerTest import NvmlHandlerTest  # noqa: E402
from verifier.rim import RIM  # noqa: E402

MISMATCH_LINE = re.compile(r"^\s*(\d+) \[(Driver|Firmware)\]\s*$")


def _no_ocsp(chain: list[Any], settings: Any, mode: Any) -> tuple[bool, str, str, None]:
    """Stand-in for NVIDIA's online OCSP query: "good", without asking anyone."""
    return True, "", "good", None


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(record.getMessage().splitlines())


def _active(path: str, name: str, settings: Any) -> list[int]:
    """The indexes NVIDIA's own RIM class reads as active in ``path``."""
    measurements = RIM(rim_name=name, settings=settings, rim_path=path).get_measurements()
    return sorted(i for i, m in measurements.items() if m.is_active())


def run_case(case: dict[str, str]) -> dict[str, Any]:
    settings = HopperSettings()
    config.GPU_ARCHITECTURE_MAP[9] = settings  # fresh flags for every case
    HopperSettings.set_attestation_report_path(case["report"])
    HopperSettings.set_gpu_attestation_certificates_path(case["chain"])
    HopperSettings.set_driver_rim_path(case["driver_rim"])
    arguments = {
        "verbose": False, "test_no_gpu": True, "driver_rim": case["driver_rim"],
        "vbios_rim": case["vbios_rim"], "user_mode": True, "allow_hold_cert": False,
        "service_key": None, "nonce": case["nonce"], "rim_root_cert": None,
        "rim_service_url": None, "ocsp_url": None, "ocsp_nonce_disabled": True,
        "claims_version": "3.0",
    }  # fmt: skip
    lines = _Lines()
    config.info_log.addHandler(lines)
    try:
        evidence = [NvmlHandlerTest(settings=BaseSettings)]
        cc_admin.attest(arguments, case["nonce"], evidence)  # test mode: None on failure
    finally:
        config.info_log.removeHandler(lines)
    compared: list[int] = []
    if settings.check_if_measurements_are_matching() is not None:
        scratch = HopperSettings()
        compared = sorted(
            _active(case["driver_rim"], "driver", scratch)
            + _active(case["vbios_rim"], "vbios", scratch)
        )
    mismatched = [[int(m.group(1)), m.group(2)] for m in map(MISMATCH_LINE.match, lines.lines) if m]
    return {
        "cert_chain": settings.check_if_gpu_attestation_report_cert_chain_validated(),
        "fwid": settings.check_if_gpu_attestation_report_cert_chain_fwid_matched(),
        "signature": settings.check_if_attestation_report_signature_verified(),
        "nonce": settings.check_if_nonce_are_matching(),
        "driver_rim_signature": settings.check_if_gpu_driver_rim_signature_verified(),
        "driver_rim_chain": settings.check_if_gpu_driver_rim_cert_chain_validated(),
        "driver_rim_version": settings.check_if_gpu_driver_rim_version_matched(),
        "vbios_rim_signature": settings.check_if_gpu_vbios_rim_signature_verified(),
        "vbios_rim_chain": settings.check_if_gpu_vbios_rim_cert_chain_validated(),
        "vbios_rim_version": settings.check_if_gpu_vbios_rim_version_matched(),
        "measurements": settings.check_if_measurements_are_matching(),
        "passed": bool(settings.check_status()),
        "compared": compared,
        "mismatched": mismatched,
    }


def main() -> None:
    request = json.load(sys.stdin)
    # NVIDIA logs its progress to stdout, where this script's answer goes: move it to stderr.
    config.info_log.removeHandler(config.shandler)
    config.info_log.addHandler(logging.StreamHandler(sys.stderr))
    CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(_no_ocsp)
    if request["device_root"]:
        BaseSettings.DEVICE_ROOT_CERT = request["device_root"]
    if request["rim_root"]:
        BaseSettings.RIM_ROOT_CERT = request["rim_root"]
        BaseSettings.ROOT_CERT_DIR = os.path.dirname(request["rim_root"])
    json.dump([run_case(case) for case in request["cases"]], sys.stdout)


if __name__ == "__main__":
    main()
