"""A node's hardware and software inventory: what the compatibility gate judges.

The NVML collector on the agent will produce it; operators write it by hand
for planning (``gpuward compat plan``). It is a plain schema: each GPU may be
described by model name, PCI device id, architecture or compute capability,
whichever the source knows, and the catalog resolves the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleet.errors import InvalidDocument
from fleet.manifest import KERNEL_RELEASE
from fleet.report import MAX_GPUS, NODE_ID
from fleet.schema import Reader

SCHEMA_VERSION = 1
MAX_NODES = 100_000
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()._/+-]{0,95}")
_DEVICE_ID = re.compile(r"0x[0-9a-fA-F]{4}")
_ARCH = re.compile(r"[A-Za-z][A-Za-z0-9 ()._-]{0,63}")
_CC = re.compile(r"\d{1,2}\.\d")
_OS = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
_CUDA = re.compile(r"\d{1,2}\.\d{1,2}(?: U\d{1,2})?")
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")


@dataclass(frozen=True)
class Gpu:
    """One GPU as the node sees it; at least one field identifies it."""

    model: str | None  # "H100", or NVML's "NVIDIA H100 80GB HBM3"
    pci_device_id: str | None  # "0x2330", lower case
    architecture: str | None  # a catalog architecture name
    compute_capability: str | None  # "9.0"

    def __post_init__(self) -> None:
        if not (self.model or self.pci_device_id or self.architecture or self.compute_capability):
            raise InvalidDocument(
                "gpu: give at least one of model, pci_device_id, architecture, compute_capability"
            )

    def label(self) -> str:
        return (
            self.model or self.pci_device_id or self.architecture or f"sm_{self.compute_capability}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pci_device_id": self.pci_device_id,
            "architecture": self.architecture,
            "compute_capability": self.compute_capability,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> Gpu:
        r = Reader(
            doc,
            where,
            allowed=frozenset({"model", "pci_device_id", "architecture", "compute_capability"}),
        )
        device_id = r.optional_text("pci_device_id", max_len=6, pattern=_DEVICE_ID)
        try:
            return cls(
                model=r.optional_text("model", max_len=96, pattern=_MODEL),
                pci_device_id=None if device_id is None else device_id.lower(),
                architecture=r.optional_text("architecture", max_len=64, pattern=_ARCH),
                compute_capability=r.optional_text("compute_capability", max_len=5, pattern=_CC),
            )
        except InvalidDocument as exc:
            raise InvalidDocument(f"{where}: {str(exc).removeprefix('gpu: ')}") from None


@dataclass(frozen=True)
class NodeInventory:
    node_id: str
    gpus: tuple[Gpu, ...]
    kernel: str  # the running kernel, as ``uname -r`` prints it
    os: str  # e.g. "ubuntu-24.04"
    nvswitch: bool
    required_cuda: str | None  # the CUDA version the node's workloads need, e.g. "12.8"
    fabric_manager: str | None  # the installed Fabric Manager version, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "node_id": self.node_id,
            "gpus": [g.to_dict() for g in self.gpus],
            "kernel": self.kernel,
            "os": self.os,
            "nvswitch": self.nvswitch,
            "required_cuda": self.required_cuda,
            "fabric_manager": self.fabric_manager,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "inventory") -> NodeInventory:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "schema",
                    "node_id",
                    "gpus",
                    "kernel",
                    "os",
                    "nvswitch",
                    "required_cuda",
                    "fabric_manager",
                }
            ),
        )
        if r.integer("schema") != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported inventory schema; upgrade gpuward")
        items = r.items("gpus", max_items=MAX_GPUS)
        if not items:
            raise InvalidDocument(f"{where}: 'gpus' is empty; a GPU node lists its GPUs")
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            gpus=tuple(Gpu.from_dict(g, r.item_where("gpus", i)) for i, g in enumerate(items)),
            kernel=r.text("kernel", pattern=KERNEL_RELEASE, max_len=128),
            os=r.text("os", pattern=_OS, max_len=64),
            nvswitch=r.boolean("nvswitch"),
            required_cuda=r.optional_text("required_cuda", max_len=8, pattern=_CUDA),
            fabric_manager=r.optional_text("fabric_manager", max_len=16, pattern=_VERSION),
        )


def fleet_from_list(doc: object, where: str = "fleet") -> tuple[NodeInventory, ...]:
    """A fleet file: a JSON list of node inventories with distinct node ids."""
    if not isinstance(doc, list):
        raise InvalidDocument(f"{where}: expected a JSON list of node inventories")
    if len(doc) > MAX_NODES:
        raise InvalidDocument(f"{where}: more than {MAX_NODES} nodes")
    nodes = tuple(NodeInventory.from_dict(item, f"{where}[{i}]") for i, item in enumerate(doc))
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.node_id in seen:
            raise InvalidDocument(f"{where}[{i}]: node_id {node.node_id!r} appears twice")
        seen.add(node.node_id)
    return nodes
