"""The bundle manifest: what a driver bundle claims to contain.

The same manifest is written as ``manifest.json`` inside the bundle tar and
carried in the bundle's TUF target ``custom`` field. The signed copy is the
authority; the agent refuses a bundle whose inner copy differs from it, and any
payload file whose digest differs from the manifest's.

Besides the payload it states what the compatibility gate (``fleet.compat``)
needs: the kernel-module flavour, the GPU architectures, the kernels it carries
precompiled modules for (or that it builds them with DKMS), the CUDA version the
driver provides and the Fabric Manager it ships for NVSwitch systems.

A manifest may also declare the driver's settings (``fleet.driver_settings``:
module parameters and GPU modes), signed with it. Such a manifest is schema 3,
so a gpuward that predates settings refuses it as a newer schema instead of
installing the driver without them; one without settings stays schema 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from fleet.driver_settings import DriverSettings
from fleet.errors import InvalidDocument
from fleet.schema import Reader
from fleet.versions import CudaVersion, DriverVersion

SCHEMA_VERSION = 2
SETTINGS_SCHEMA_VERSION = 3  # a manifest that declares driver settings
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
_CUDA_TEXT = re.compile(r"\d{1,2}\.\d{1,2}(?: U\d{1,2})?")
_ARCH_NAME = re.compile(r"[A-Za-z][A-Za-z0-9 ()._-]{0,63}")
# A kernel release as ``uname -r`` prints it: 6.8.0-45-generic, 5.14.0-427.13.1.el9_4.x86_64
KERNEL_RELEASE = re.compile(r"\d+\.\d+[A-Za-z0-9._+~-]{0,120}")
MODULE_FLAVOURS = frozenset({"open", "proprietary"})
MAX_KERNELS = 256
MAX_ARCHITECTURES = 32
_FIELDS = frozenset(
    {
        "schema",
        "driver_version",
        "branch",
        "payload_kind",
        "files",
        "module_flavour",
        "architectures",
        "kernels",
        "dkms",
        "cuda_version",
        "fabric_manager",
        "settings",
    }
)


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
    module_flavour: str  # one of MODULE_FLAVOURS
    architectures: tuple[str, ...]  # catalog architecture names
    kernels: tuple[str, ...]  # kernel releases with precompiled modules in the payload
    dkms: bool  # the payload builds its modules on the node instead
    cuda_version: str  # the newest CUDA the driver runs, e.g. "13.0" or "13.0 U2"
    fabric_manager: str | None  # Fabric Manager version in the payload, if any
    settings: DriverSettings | None = None  # what the applier enforces with this driver

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
        if self.module_flavour not in MODULE_FLAVOURS:
            raise InvalidDocument(
                f"manifest: module_flavour must be one of {', '.join(sorted(MODULE_FLAVOURS))}"
            )
        if not self.architectures or len(set(self.architectures)) != len(self.architectures):
            raise InvalidDocument("manifest: architectures must name each architecture once")
        if len(set(self.kernels)) != len(self.kernels):
            raise InvalidDocument("manifest: kernels must name each kernel once")
        if not self.kernels and not self.dkms:
            raise InvalidDocument(
                "manifest: state the kernels the bundle has precompiled modules for, or dkms"
            )
        CudaVersion.parse(self.cuda_version)
        if self.fabric_manager is not None and self.fabric_manager != self.driver_version:
            # NVIDIA ships Fabric Manager at exactly the driver's version; another
            # version refuses to start on an NVSwitch system.
            raise InvalidDocument(
                f"manifest: fabric_manager {self.fabric_manager} must equal the driver "
                f"version {self.driver_version}"
            )
        if self.settings is not None:
            problems = self.settings.problems_for(version.parts[0])
            if problems:
                raise InvalidDocument(f"manifest: settings: {'; '.join(problems)}")

    @property
    def version(self) -> DriverVersion:
        return DriverVersion.parse(self.driver_version)

    @property
    def cuda(self) -> CudaVersion:
        return CudaVersion.parse(self.cuda_version)

    def to_dict(self) -> dict[str, Any]:
        settings = {} if self.settings is None else {"settings": self.settings.to_dict()}
        return {
            "schema": SCHEMA_VERSION if self.settings is None else SETTINGS_SCHEMA_VERSION,
            "driver_version": self.driver_version,
            "branch": self.branch,
            "payload_kind": self.payload_kind,
            "files": [f.to_dict() for f in self.files],
            "module_flavour": self.module_flavour,
            "architectures": list(self.architectures),
            "kernels": list(self.kernels),
            "dkms": self.dkms,
            "cuda_version": self.cuda_version,
            "fabric_manager": self.fabric_manager,
            **settings,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "manifest") -> BundleManifest:
        r = Reader(doc, where, allowed=_FIELDS)
        schema = r.integer("schema")
        if schema < SCHEMA_VERSION:
            raise InvalidDocument(
                f"{where}: manifest schema {schema} lacks the compatibility fields; "
                "rebuild the bundle with this gpuward"
            )
        if schema not in (SCHEMA_VERSION, SETTINGS_SCHEMA_VERSION):
            raise InvalidDocument(f"{where}: unsupported schema {schema}; upgrade gpuward")
        settings = None
        if schema == SETTINGS_SCHEMA_VERSION:
            settings = DriverSettings.from_dict(r.raw("settings"), f"{where}.settings")
        elif "settings" in cast(Mapping[str, Any], doc):  # the Reader checked it is one
            raise InvalidDocument(
                f"{where}: settings need manifest schema {SETTINGS_SCHEMA_VERSION}"
            )
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
            module_flavour=r.text("module_flavour", choices=MODULE_FLAVOURS),
            architectures=_strings(r, "architectures", MAX_ARCHITECTURES, _ARCH_NAME),
            kernels=_strings(r, "kernels", MAX_KERNELS, KERNEL_RELEASE),
            dkms=r.boolean("dkms"),
            cuda_version=r.text("cuda_version", pattern=_CUDA_TEXT, max_len=8),
            fabric_manager=r.nullable_text("fabric_manager", pattern=_VERSION_TEXT, max_len=16),
            settings=settings,
        )


def _strings(r: Reader, key: str, max_items: int, pattern: re.Pattern[str]) -> tuple[str, ...]:
    items = r.items(key, max_items=max_items)
    for i, item in enumerate(items):
        if not isinstance(item, str) or len(item) > 128 or not pattern.fullmatch(item):
            raise InvalidDocument(f"{r.item_where(key, i)}: invalid value {str(item)[:80]!r}")
    return tuple(items)


def target_path(manifest: BundleManifest, filename: str) -> str:
    """Where a bundle lives in the image repository: one folder per branch."""
    return f"drivers/{manifest.branch}/{filename}"
