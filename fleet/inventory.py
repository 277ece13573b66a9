"""A node's hardware and software inventory: what the compatibility gate judges.

The NVML collector on the agent will produce it; operators write it by hand
for planning (``gpuward compat plan``). It is a plain schema: each GPU may be
described by model name, PCI device id, architecture or compute capability,
whichever the source knows, and the catalog resolves the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.errors import InvalidDocument
from fleet.manifest import KERNEL_RELEASE
from fleet.wire import (
    Boolean,
    Convert,
    Document,
    Field,
    ListOf,
    Nullable,
    Ref,
    Text,
    Wire,
    optional,
)

SCHEMA_VERSION = 1
MAX_NODES = 100_000
MAX_GPUS = 64
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()._/+-]{0,95}")
_DEVICE_ID = re.compile(r"0x[0-9a-fA-F]{4}")
_ARCH = re.compile(r"[A-Za-z][A-Za-z0-9 ()._-]{0,63}")
_CC = re.compile(r"\d{1,2}\.\d")
_OS = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
_CUDA = re.compile(r"\d{1,2}\.\d{1,2}(?: U\d{1,2})?")
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")


@dataclass(frozen=True)
class Gpu(Wire):
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

    WIRE = Document(
        optional("model", Text(max_len=96, pattern=_MODEL)),
        optional(
            "pci_device_id",
            Convert(
                Text(max_len=6, pattern=_DEVICE_ID),
                decode=str.lower,
                encode=str,
                examples=("0x2330", "0x20B0"),
                description="the PCI device id, read in lower case",
            ),
        ),
        optional("architecture", Text(max_len=64, pattern=_ARCH)),
        optional("compute_capability", Text(max_len=5, pattern=_CC)),
        where="gpu",
    )


@dataclass(frozen=True)
class NodeInventory(Wire):
    """A node's GPUs, kernel, OS and CUDA needs: what the compatibility gate judges."""

    node_id: str
    gpus: tuple[Gpu, ...]
    kernel: str  # the running kernel, as ``uname -r`` prints it
    os: str  # e.g. "ubuntu-24.04"
    nvswitch: bool
    required_cuda: str | None  # the CUDA version the node's workloads need, e.g. "12.8"
    fabric_manager: str | None  # the installed Fabric Manager version, if any
    driver_version: str | None = None  # the driver it runs, where the plan knows it

    WIRE = Document(
        Field("node_id", Text(max_len=128, pattern=NODE_ID)),
        Field("gpus", ListOf(Ref(Gpu), MAX_GPUS, min_items=1)),
        Field("kernel", Text(max_len=128, pattern=KERNEL_RELEASE)),
        Field("os", Text(max_len=64, pattern=_OS)),
        Field("nvswitch", Boolean()),
        optional("required_cuda", Text(max_len=8, pattern=_CUDA)),
        optional("fabric_manager", Text(max_len=16, pattern=_VERSION)),
        Field(
            "driver_version",
            Nullable(Text(max_len=16, pattern=_VERSION)),
            default=None,
            omit_default=True,
            description="the driver the node runs, for planning around the security "
            "advisories open on it; the server's fleet view gives the latest report's",
        ),
        where="inventory",
        version=SCHEMA_VERSION,
        version_refusal="unsupported inventory schema; upgrade gpuward",
    )


@dataclass(frozen=True)
class FleetInventories:
    """The nodes a plan judges, and the ones it cannot: enrolled, but no report of
    theirs carried an inventory yet (never reported, or an agent that sends none)."""

    nodes: tuple[NodeInventory, ...]
    without_inventory: tuple[str, ...] = ()


def fleet_inventories(doc: object, where: str = "fleet") -> FleetInventories:
    """A fleet file (a JSON list of node inventories), or the server's fleet view
    (``GET /v1/fleet``: each node's latest report carries its agent's inventory, and
    the driver it names is the node's ``driver_version``)."""
    if not (isinstance(doc, dict) and isinstance(doc.get("nodes"), list)):
        return FleetInventories(fleet_from_list(doc, where))
    shown: list[object] = doc["nodes"]
    if len(shown) > MAX_NODES:
        raise InvalidDocument(f"{where}: more than {MAX_NODES} nodes")
    listed: list[tuple[str, object]] = []
    without = []
    for i, node in enumerate(shown):
        report = node.get("report") if isinstance(node, dict) else None
        inventory = report.get("inventory") if isinstance(report, dict) else None
        if inventory is None:
            without.append(str(node.get("node_id")) if isinstance(node, dict) else f"[{i}]")
            continue
        if isinstance(inventory, dict) and isinstance(report, dict):
            inventory = {**inventory, "driver_version": report.get("driver_version")}
        listed.append((f"{where}: nodes[{i}].report.inventory", inventory))
    return FleetInventories(_distinct(listed), tuple(without))


def fleet_from_list(doc: object, where: str = "fleet") -> tuple[NodeInventory, ...]:
    """A fleet file: a JSON list of node inventories with distinct node ids."""
    if not isinstance(doc, list):
        raise InvalidDocument(
            f"{where}: expected a JSON list of node inventories, or the server's fleet view "
            '(GET /v1/fleet: {"nodes": [...]})'
        )
    if len(doc) > MAX_NODES:
        raise InvalidDocument(f"{where}: more than {MAX_NODES} nodes")
    return _distinct([(f"{where}[{i}]", item) for i, item in enumerate(doc)])


def _distinct(items: list[tuple[str, object]]) -> tuple[NodeInventory, ...]:
    """Each (where, document) read as an inventory; no node id twice."""
    nodes = tuple(NodeInventory.from_dict(item, where) for where, item in items)
    seen: set[str] = set()
    for (where, _), node in zip(items, nodes, strict=True):
        if node.node_id in seen:
            raise InvalidDocument(f"{where}: node_id {node.node_id!r} appears twice")
        seen.add(node.node_id)
    return nodes
