"""Slots staged by hand on a temporary root, for backends driven without the applier."""

from __future__ import annotations

from pathlib import Path

from applier.installers.base import NodeRoot
from fleet.manifest import PAYLOAD_DIR, BundleManifest
from node.slots import SlotContent, Slots
from tests.recorder import Recorder

KERNEL = "6.1.0-99-amd64"


def manifest(version: str, kind: str, flavour: str = "proprietary") -> BundleManifest:
    return BundleManifest(
        driver_version=version,
        branch=f"R{version.split('.')[0]}",
        payload_kind=kind,
        files=(),
        module_flavour=flavour,
        architectures=("Hopper",),
        kernels=(KERNEL,),
        dkms=False,
        cuda_version="12.2",
        fabric_manager=None,
    )


def stage(slots: Slots, slot: str, bundle: BundleManifest, files: dict[str, bytes]) -> None:
    """Put ``files`` (payload-relative names) into ``slot`` as the applier would."""
    payload = slots.scratch(slot) / PAYLOAD_DIR
    for name, data in files.items():
        (payload / name).parent.mkdir(parents=True, exist_ok=True)
        (payload / name).write_bytes(data)
    slots.commit_stage(slot, SlotContent(f"drivers/{bundle.branch}/{slot}", "0" * 64, bundle))


def recorded_node(root: Path, answers: dict[str, str] | None = None) -> tuple[NodeRoot, Recorder]:
    recorder = Recorder(answers)
    return NodeRoot(root, Slots(root / "var/lib/gpuward-applier/slots"), recorder), recorder
