"""The director: per-node TUF repositories naming the bundle each node should run.

Uptane's answer to fleets: the image repository (offline keys) says which
bundles exist; the director (online keys, so the server can re-target nodes
during a rollout without a human) says which of them a given node installs.
Each node has its own small repository under ``nodes/<node>/metadata`` whose
single driver target copies the image repository's target (path, length,
hashes, manifest) and adds the node id, the hardware id it is meant for, and a
release counter that only grows. The agent installs only what both agree on,
so a stolen director key can re-point nodes only at bundles the image
repository signed, never at older release counters, never at other hardware.

The director's root is offline (sealed); every node repository shares it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from fleet.errors import GpuwardError
from keys.keyring import Keyring, PassphraseSource
from keys.tuf_repo import RoleSpec, TufRepository, load_expiry, no_passphrase

DIRECTOR_FIELD = "gpuward_director"
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class DirectorAssignment:
    node_id: str
    target_path: str
    hardware_id: str
    release_counter: int


class NodeRepository(TufRepository):
    online_roles = frozenset({"targets", "snapshot", "timestamp"})


class DirectorRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keyring = Keyring(root / "keys")
        self.expiry = load_expiry(root)
        self.base = NodeRepository(root / "metadata", self.keyring, self.expiry)

    @classmethod
    def init(
        cls, root: Path, passphrase: str, specs: dict[str, RoleSpec] | None = None
    ) -> DirectorRepository:
        """Director keys: root sealed offline, targets/snapshot/timestamp online."""
        director = cls(root)
        if director.keyring.dir.exists() and any(director.keyring.dir.iterdir()):
            raise GpuwardError(f"{root} already holds keys; choose an empty directory")
        director.base.create(specs or {}, passphrase)
        return director

    def node(self, node_id: str) -> NodeRepository:
        if not _NODE.fullmatch(node_id):
            raise GpuwardError(f"invalid node id {node_id!r}")
        return NodeRepository(self.root / "nodes" / node_id / "metadata", self.keyring, self.expiry)

    def enroll(self, node_id: str) -> NodeRepository:
        """The node's repository, created empty (no assignment) on first use."""
        node = self.node(node_id)
        if not (node.metadata_dir / "timestamp.json").exists():
            self._sync_roots(node)
            node.start_from_root(no_passphrase)
        return node

    def assignment(self, node_id: str) -> DirectorAssignment | None:
        node = self.node(node_id)
        if not (node.metadata_dir / "timestamp.json").exists():
            return None
        for path, info in node.targets().signed.targets.items():
            return _assignment_of(node_id, path, info)
        return None

    def assign(
        self, node_id: str, image_target: TargetFile, hardware_id: str, release_counter: int
    ) -> DirectorAssignment:
        """Point ``node_id`` at ``image_target`` (as the image repository signed it)."""
        node = self.node(node_id)
        current = self.assignment(node_id)
        if current is not None and release_counter <= current.release_counter:
            raise GpuwardError(
                f"release counter {release_counter} for {node_id} is not above the current "
                f"{current.release_counter}; release counters only grow"
            )
        self.enroll(node_id)
        info = TargetFile(
            length=image_target.length,
            hashes=dict(image_target.hashes),
            path=image_target.path,
            unrecognized_fields={
                "custom": {
                    **(image_target.custom or {}),
                    DIRECTOR_FIELD: {
                        "node_id": node_id,
                        "hardware_id": hardware_id,
                        "release_counter": release_counter,
                    },
                }
            },
        )
        targets_md = node.targets()
        targets_md.signed.targets = {info.path: info}
        node.bump(targets_md, "targets")
        node.sign_and_write(targets_md, no_passphrase)
        node.publish_snapshot({"targets": targets_md.signed.version})
        return DirectorAssignment(node_id, info.path, hardware_id, release_counter)

    def _sync_roots(self, node: NodeRepository) -> None:
        """Every root version the director ever had, so any agent can walk the chain."""
        node.metadata_dir.mkdir(parents=True, exist_ok=True)
        for path in self.base.metadata_dir.glob("*root.json"):
            shutil.copyfile(path, node.metadata_dir / path.name)

    def node_ids(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "nodes").glob("*/metadata"))

    def refresh_timestamps(self) -> None:
        """Re-sign every node's timestamp (run before they expire)."""
        for node_id in self.node_ids():
            self.node(node_id).sign_timestamp()

    def rotate(self, role: str, passphrase: PassphraseSource) -> None:
        self.base.rotate(role, passphrase)
        for node_id in self.node_ids():
            node = self.node(node_id)
            self._sync_roots(node)
            targets_md = node.targets()
            node.bump(targets_md, "targets")
            node.sign_and_write(targets_md, no_passphrase)
            node.publish_snapshot({"targets": targets_md.signed.version})


def _assignment_of(node_id: str, path: str, info: TargetFile) -> DirectorAssignment:
    custom: Any = info.custom
    field = custom.get(DIRECTOR_FIELD, {}) if isinstance(custom, dict) else {}
    return DirectorAssignment(
        node_id=node_id,
        target_path=path,
        hardware_id=str(field.get("hardware_id", "")),
        release_counter=int(field.get("release_counter", 0)),
    )
