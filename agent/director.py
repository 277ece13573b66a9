"""The director repository, and the agreement Uptane demands before installing.

The director names the one bundle this node should run; the image repository
says which bundles exist. Only a bundle both describe identically (path, length,
hashes, manifest), meant for this node and its hardware, with a release counter
no lower than the last one installed, is installed. A stolen director key can
therefore re-point nodes only among bundles the offline-signed image repository
already approved.

The server hands a node's director metadata to that node only, so each fetch
from it is signed with the node's enrolled key (``agent.identity``).
"""

from __future__ import annotations

from typing import Any

from agent.channel import mirror_fetcher
from agent.identity import load_key, sign
from node.channel import Candidate, TufChannel, UpdateRefused
from node.config import AgentConfig
from node.director import DIRECTOR_FIELD, Directive, read_directive


class DirectorChannel(TufChannel):
    def __init__(self, config: AgentConfig) -> None:
        assert config.director is not None
        key = load_key(config)

        def signer(url: str) -> dict[str, str]:
            return sign(key, config.node_id, "GET", url, b"")

        super().__init__(
            "director",
            config.director.trusted_root,
            config.director_metadata_dir,
            f"{config.director_url}/metadata/",
            config.targets_url,
            config.download_dir,
            fetcher=mirror_fetcher(config, signed=(config.director_url, signer)),
        )

    def directive(self) -> Directive | None:
        """The bundle the director names for this node, if any."""
        return read_directive(self)


def agree(
    directive: Directive,
    image: Candidate | None,
    *,
    node_id: str,
    hardware_ids: frozenset[str],
    last_release_counter: int,
) -> Candidate:
    """The image candidate to install, or ``UpdateRefused`` naming the disagreement."""
    path = directive.target_path
    if directive.node_id != node_id:
        raise UpdateRefused(
            f"the director's {path} is meant for {directive.node_id}, not {node_id}"
        )
    if image is None:
        raise UpdateRefused(f"the director names {path}, which the image repository did not sign")
    if image.info.length != directive.info.length or image.info.hashes != directive.info.hashes:
        raise UpdateRefused(f"image and director disagree on the length or hashes of {path}")
    director_custom: Any = dict(directive.info.custom or {})
    director_custom.pop(DIRECTOR_FIELD, None)
    if director_custom != (image.info.custom or {}):
        raise UpdateRefused(f"image and director disagree on the manifest of {path}")
    if not hardware_ids:
        raise UpdateRefused("no GPU is visible, so the bundle's hardware id cannot be confirmed")
    if hardware_ids != {directive.hardware_id}:
        raise UpdateRefused(
            f"{path} is meant for {directive.hardware_id}; this node has "
            f"{', '.join(sorted(hardware_ids))}"
        )
    if directive.release_counter < last_release_counter:
        raise UpdateRefused(
            f"release counter {directive.release_counter} of {path} is below the last "
            f"installed {last_release_counter}: refusing a rollback"
        )
    return image
