"""The RIMs and OCSP responses the server judges GPU evidence with, as published.

``gpuward repo add-rims`` publishes them as targets of the image repository
(``gpu-rims/``), so they reach an air-gapped server through a mirror like every
other signed file. The server believes them only as an agent would believe a
target: the targets role's signature checked against root's keys, then each
file's length and hashes against its signed entry. A file that fails is left
out and logged (``gpu_rim_target_refused``); targets that fail their signature
leave out all of them (``gpu_rims_refused``). The server then judges with the
RIMs configured in ``gpu_rims`` alone, so a tampered file can make a GPU
``unknown``, never ``pass``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import structlog
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Targets

from fleet.errors import GpuwardError
from fleet.gpu_attestation import MAX_GPU_RIM_FILE_BYTES, OCSP_SUFFIX
from keys.durable_files import read_bounded
from keys.image_repo import ImageRepository
from server.gpu_attestation.ocsp import OcspAnswer, load_response
from server.gpu_attestation.rim import RimFile

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PublishedGpuRims:
    rims: tuple[RimFile, ...] = ()
    responses: tuple[OcspAnswer, ...] = ()


def published_gpu_rims(repo: Path) -> PublishedGpuRims:
    """The verified RIMs and OCSP responses published in the image repository at ``repo``."""
    try:
        # Every publication signs a new timestamp file: read again only then.
        stamp = (repo / "metadata" / "timestamp.json").stat()
    except OSError:
        return PublishedGpuRims()  # no repository yet: nothing published
    return _read(repo, stamp.st_ino, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read(repo: Path, _inode: int, _mtime_ns: int) -> PublishedGpuRims:
    image = ImageRepository(repo)
    try:
        targets = image.targets()
        image.root_metadata().verify_delegate(Targets.type, targets)
        listed = image.gpu_rim_targets()
    except (GpuwardError, RepositoryError, OSError) as exc:
        log.error("gpu_rims_refused", repo=str(repo), reason=f"{type(exc).__name__}: {exc}")
        return PublishedGpuRims()
    rims: list[RimFile] = []
    responses: list[OcspAnswer] = []
    for path, info in listed.items():
        try:
            data = read_bounded(
                image.target_file(path, info.hashes["sha256"]), MAX_GPU_RIM_FILE_BYTES, path
            )
            info.verify_length_and_hashes(data)
            if path.endswith(OCSP_SUFFIX):
                responses.append(load_response(path, data))
            else:
                rims.append(RimFile(path, data))
        except (GpuwardError, RepositoryError, OSError, KeyError) as exc:
            log.error("gpu_rim_target_refused", target=path, reason=f"{type(exc).__name__}: {exc}")
    log.info("gpu_rims_published", repo=str(repo), rims=len(rims), ocsp=len(responses))
    return PublishedGpuRims(tuple(rims), tuple(responses))
