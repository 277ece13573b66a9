"""Running NVIDIA's verifier (``nvidia_peer.py`` in ``.venv-nvidia``) and gpuward's
command on the same evidence, both in a network namespace with no route.

``unshare --net`` gives each process a namespace holding only a loopback
interface that is down: no address, no route, no DNS. A verifier that tried to
reach NVIDIA's RIM service or OCSP responder would fail there, so a verdict
reached inside one was reached offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.gpu_attest.evidence import Evidence

REPO = Path(__file__).resolve().parents[2]
NVIDIA_VENV = REPO / ".venv-nvidia"
PEER = Path(__file__).with_name("nvidia_peer.py")


def nvidia_python() -> Path:
    python = NVIDIA_VENV / "bin" / "python"
    assert python.is_file(), (
        f"{python} is missing: `make setup` installs NVIDIA's verifier there "
        "(nv-local-gpu-verifier)"
    )
    return python


def nvidia_package() -> Path:
    """NVIDIA's ``verifier`` package as installed from the wheel (samples, roots)."""
    found = sorted(NVIDIA_VENV.glob("lib/python3*/site-packages/verifier"))
    assert found, f"NVIDIA's verifier is not installed in {NVIDIA_VENV}: run `make setup`"
    return found[0]


def offline(command: Sequence[str]) -> list[str]:
    """``command`` in a new network namespace, which has no route anywhere."""
    return ["unshare", "--net", "--", *command]


def at_time(command: Sequence[str], when: datetime | None) -> list[str]:
    """``command`` with its clock starting at ``when`` (libfaketime), or as it is."""
    if when is None:
        return list(command)
    return ["faketime", "-f", f"@{when:%Y-%m-%d %H:%M:%S}", *command]


def nvidia_verdicts(
    cases: Sequence[Evidence], *, when: datetime | None = None
) -> list[dict[str, Any]]:
    """NVIDIA's verdict on each case, run offline (and at ``when``, if given)."""
    first = cases[0]
    request = {
        "cases": [
            {
                "report": str(case.report),
                "chain": str(case.chain),
                "driver_rim": str(case.driver_rim),
                "vbios_rim": str(case.vbios_rim),
                "nonce": case.nonce.hex(),
            }
            for case in cases
        ],
        "device_root": str(first.device_root) if first.device_root else None,
        "rim_root": str(first.rim_root) if first.rim_root else None,
    }
    # -I: NVIDIA's pinned packages only, whatever PYTHONPATH the tests run with.
    done = subprocess.run(
        offline(at_time([str(nvidia_python()), "-I", "-W", "ignore", str(PEER)], when)),
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    verdicts: list[dict[str, Any]] = json.loads(done.stdout)
    return verdicts


def gpuward_verify(
    case: Evidence, *extra: str, rims: str = "dir"
) -> subprocess.CompletedProcess[str]:
    """``gpuward gpu-attest verify --json`` on ``case``, offline. ``rims``: "dir" gives
    the RIM folder, "named" the two RIM files as NVIDIA's verifier takes them."""
    args = ["--report", str(case.report), "--cert-chain", str(case.chain)]
    if rims == "dir":
        args += ["--rims", str(case.rims)]
    else:
        args += ["--driver-rim", str(case.driver_rim), "--vbios-rim", str(case.vbios_rim)]
    if case.device_root is not None:
        args += ["--device-root", str(case.device_root)]
    if case.rim_root is not None:
        args += ["--rim-root", str(case.rim_root)]
    command = [sys.executable, "-m", "gpuward", "gpu-attest", "verify", *args, *extra, "--json"]
    return subprocess.run(
        offline(command),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
