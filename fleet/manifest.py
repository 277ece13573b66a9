"""The bundle manifest: what a driver bundle claims to contain.

The same manifest is written as ``manifest.json`` inside the bundle tar and
carried in the bundle's TUF target ``custom`` field. The signed copy is the
authority; the agent refuses a bundle whose inner copy differs from it, and any
payload file whose digest differs from the manifest's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleet.errors import InvalidDocument
from fleet.schema import Reader
from fleet.versions import DriverVersion

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PAYLOAD_DIR = "payload"
MAX_PAYLOAD_FILES = 10_000

PAYLOAD_KINDS = frozenset({"files", "deb", "rpm", "runfile"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Payload names are relative POSIX paths of plain components: no "..", no
# absolute paths, no backslashes, nothing a tar extractor could misread.
_PAYLOAD_NAME = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")
_VERSION_TEXT = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
_BRANCH_TEXT = re.compile(r"R\d{3,4}")


@dataclass(frozen=True)
class PayloadFile:
    """One file under ``payload/`` in the bundle."""

    name: str
    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "length": self.length, "sha256": self.sha256}


@dataclass(frozen=True)
class BundleManifest:
    driver_version: str
    branch: str
    payload_kind: str
    files: tuple[PayloadFile, ...]

    def __post_init__(self) -> None:
        version = DriverVersion.parse(self.driver_version)
        if version.branch != self.branch:
            raise InvalidDocument(
                f"manifest: driver {self.driver_version} belongs to {version.branch}, "
                f"not {self.branch}"
            )
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise InvalidDocument("manifest: payload file names must be unique")

    @property
    def version(self) -> DriverVersion:
        return DriverVersion.parse(self.driver_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "driver_version": self.driver_version,
            "branch": self.branch,
            "payload_kind": self.payload_kind,
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "manifest") -> BundleManifest:
        r = Reader(
            doc,
            where,
            allowed=frozenset({"schema", "driver_version", "branch", "payload_kind", "files"}),
        )
        if r.integer("schema") != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported schema; upgrade gpuward")
        files = []
        for i, item in enumerate(r.items("files", max_items=MAX_PAYLOAD_FILES)):
            fr = Reader(
                item, r.item_where("files", i), allowed=frozenset({"name", "length", "sha256"})
            )
            files.append(
                PayloadFile(
                    name=fr.text("name", pattern=_PAYLOAD_NAME, max_len=255),
                    length=fr.integer("length"),
                    sha256=fr.text("sha256", pattern=_SHA256),
                )
            )
        return cls(
            driver_version=r.text("driver_version", pattern=_VERSION_TEXT, max_len=16),
            branch=r.text("branch", pattern=_BRANCH_TEXT, max_len=8),
            payload_kind=r.text("payload_kind", choices=PAYLOAD_KINDS),
            files=tuple(files),
        )


def target_path(manifest: BundleManifest, filename: str) -> str:
    """Where a bundle lives in the image repository: one folder per branch."""
    return f"drivers/{manifest.branch}/{filename}"
