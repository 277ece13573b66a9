"""The bundle manifest rejects anything that is not exactly its schema."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleet.errors import InvalidDocument
from fleet.manifest import BundleManifest

GOOD: dict[str, Any] = {
    "schema": 1,
    "driver_version": "580.95.05",
    "branch": "R580",
    "payload_kind": "files",
    "files": [{"name": "lib/libnvidia-ml.so.1", "length": 3, "sha256": "a" * 64}],
}


def test_round_trip() -> None:
    manifest = BundleManifest.from_dict(GOOD)
    assert manifest.to_dict() == GOOD
    assert manifest.version.parts == (580, 95, 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(schema=2), "unsupported schema"),
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


def test_rejects_non_object() -> None:
    with pytest.raises(InvalidDocument, match="expected a JSON object"):
        BundleManifest.from_dict(["not", "an", "object"])
