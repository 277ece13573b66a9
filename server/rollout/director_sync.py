"""From rollout assignments to signed director metadata.

The rollout engine decides, in the store, which bundle each node should run;
nodes only act on the director repository, whose online keys sign per-node
targets. This copies each changed assignment into the node's director
repository with the image repository's own target info, the node's hardware id
(the GPU model its reports show) and a release counter one above the last, so
the agent's Uptane checks hold. A node whose reports do not show exactly one
GPU model is not targeted: that would be a guess, and is logged instead.
"""

from __future__ import annotations

import asyncio

import structlog

from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from server.store import Store

log = structlog.get_logger(__name__)


async def sync_director(
    store: Store, image: ImageRepository, director: DirectorRepository
) -> list[str]:
    """Sign director metadata for every node whose assignment changed; return their ids."""
    changed = []
    for status in await store.fleet():
        node_id = status.node.node_id
        if status.assigned is None:
            continue
        current = await asyncio.to_thread(director.assignment, node_id)
        if current is not None and current.target_path == status.assigned:
            continue
        models = {g.name for g in status.report.gpus} if status.report else set()
        if len(models) != 1:
            log.warning("director_not_targeted", node=node_id, gpu_models=sorted(models))
            continue
        branch = status.assigned.split("/")[1]
        info = image.targets(branch).signed.targets.get(status.assigned)
        if info is None:
            log.error("director_target_unknown", node=node_id, target=status.assigned)
            continue
        counter = (current.release_counter if current else 0) + 1
        await asyncio.to_thread(director.assign, node_id, info, models.pop(), counter)
        log.info("director_assigned", node=node_id, target=status.assigned, release_counter=counter)
        changed.append(node_id)
    return changed
