"""Fixtures: NVIDIA's sample evidence from the wheel, and a test PKI that re-signs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gpu_attest.evidence import (
    Evidence,
    LabPki,
    Sample,
    make_pki,
    resign,
    resigned_rims,
    write_evidence,
)
from tests.gpu_attest.nvidia import nvidia_package

# (folder name, nonce, RIM index to flip or None) -> the case's files
MakeCase = Callable[..., Evidence]


@pytest.fixture(scope="session")
def sample() -> Sample:
    return Sample(nvidia_package() / "samples")


@pytest.fixture(scope="session")
def pki(sample: Sample) -> LabPki:
    return make_pki(sample)


@pytest.fixture(scope="session")
def lab_rims(sample: Sample, pki: LabPki) -> tuple[bytes, bytes]:
    """The sample's RIMs, for the report's versions and values, re-signed."""
    return resigned_rims(sample, pki)


@pytest.fixture(scope="session")
def lab_case(
    sample: Sample,
    pki: LabPki,
    lab_rims: tuple[bytes, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> MakeCase:
    """Writes one case of re-signed evidence: ``lab_case(name, nonce, flip=None,
    chain=None, vbios_rim=...)``."""
    base: Path = tmp_path_factory.mktemp("gpu-evidence")

    def make(
        name: str,
        nonce: bytes,
        *,
        flip: int | None = None,
        chain: bytes | None = None,
        vbios_rim: bytes | None = None,
    ) -> Evidence:
        report = resign(sample.report_bytes(), pki.gpu.key, nonce=nonce, flip=flip)
        return write_evidence(
            base / name,
            pki,
            report,
            nonce=nonce,
            driver_rim=lab_rims[0],
            vbios_rim=lab_rims[1] if vbios_rim is None else vbios_rim,
            chain=chain,
        )

    return make
