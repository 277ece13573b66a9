"""The bundle manifest rejects anything that is not exactly its schema."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleet.errors import InvalidDocument
from fleet.manifest import BundleManifest

GOOD: dict[str, Any] = {
    "schema": 2,
    "driver_version": "580.95.05",
    "branch": "R580",
    "payload_kind": "files",
    "files": [{"name": "lib/libnvidia-ml.so.1", "length": 3, "sha256": "a" * 64}],
    "module_flavour": "open",
    "architectures": ["Hopper", "Ampere"],
    "kernels": ["6.8.0-45-generic"],
    "dkms": False,
    "cuda_version": "13.0 U2",
    "fabric_manager": "580.95.05",
}


def test_round_trip() -> None:
    manifest = BundleManifest.from_dict(GOOD)
    assert manifest.to_dict() == GOOD
    assert manifest.version.parts == (580, 95, 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(schema=4), "unsupported schema"),
        (lambda d: d.update(schema=3), "missing field .settings."),
        (lambda d: d.update(settings={}), "settings need manifest schema 3"),
        (lambda d: d.update(schema=1), "rebuild the bundle"),
        (lambda d: d.update(module_flavour="closed"), "must be one of"),
        (lambda d: d.update(architectures=[]), "each architecture once"),
        (lambda d: d.update(architectures=["Hopper", "Hopper"]), "each architecture once"),
        (lambda d: d.update(architectures=[7]), r"architectures\[0\]: invalid value"),
        (lambda d: d.update(kernels=["6.8.0; reboot"]), r"kernels\[0\]: invalid value"),
        (lambda d: d.update(kernels=["6.8.0-45-generic"] * 2), "each kernel once"),
        (lambda d: d.update(kernels=[], dkms=False), "or dkms"),
        (lambda d: d.update(dkms="yes"), "true or false"),
        (lambda d: d.update(cuda_version="13"), "invalid value"),
        (lambda d: d.update(fabric_manager="580.82.07"), "must equal the driver"),
        (lambda d: d.pop("fabric_manager"), "missing field"),
        (lambda d: d.update(branch="R570"), "belongs to R580"),
        (lambda d: d.update(driver_version="580.95.05;rm"), "invalid value"),
        (lambda d: d.update(driver_version="5" * 17), "longer than"),
        (lambda d: d.update(payload_kind="exe"), "must be one of"),
        (lambda d: d["files"][0].update(name="../etc/passwd"), "invalid value"),
        (lambda d: d["files"][0].update(name="/etc/passwd"), "invalid value"),
        (lambda d: d["files"][0].update(length=-1), "between"),
        (lambda d: d["files"][0].update(length=True), "integer"),
        (lambda d: d["files"][0].update(sha256="z" * 64), "invalid value"),
        (lambda d: d["files"].append(dict(d["files"][0])), "unique"),
        (lambda d: d.pop("branch"), "missing field"),
    ],
)
def test_rejects(change: Any, message: str) -> None:
    doc = copy.deepcopy(GOOD)
    change(doc)
    with pytest.raises(InvalidDocument, match=message):
        BundleManifest.from_dict(doc)


def test_dkms_without_precompiled_kernels_is_a_valid_statement() -> None:
    doc = copy.deepcopy(GOOD)
    doc.update(kernels=[], dkms=True, fabric_manager=None)
    assert BundleManifest.from_dict(doc).to_dict() == doc


def test_rejects_non_object() -> None:
    with pytest.raises(InvalidDocument, match="expected a JSON object"):
        BundleManifest.from_dict(["not", "an", "object"])
