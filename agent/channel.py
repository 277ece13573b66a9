"""The image repository as the agent pulls it: from the server, then its mirrors.

``node.channel`` holds what the applier shares (one verified TUF repository,
the errors, the manifest a target carries); this module adds what only the
network-facing agent does: fetch through ``agent.fetcher``'s failover, signing
requests as the node where the server wants them signed, list the bundles
of a branch, and check a bundle's provenance where the node's policy requires it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from agent.fetcher import HttpFetcher, MirrorFetcher, SignedFetcher
from agent.tls import ServerTrust
from keys import provenance
from node.channel import USER_AGENT, Candidate, TufChannel, UpdateRefused, manifest_of
from node.config import AgentConfig

log = structlog.get_logger(__name__)


def mirror_fetcher(
    config: AgentConfig, signed: tuple[str, Callable[[str], Mapping[str, str]]] | None = None
) -> MirrorFetcher:
    """The server first, then each mirror, all verified against ``server_ca``;
    timeouts bound every connection and gap.

    ``signed``: a base URL and the node's signer; requests under it are signed.
    """
    trust = ServerTrust.of(config)
    timeout, agent = config.fetch_timeout_s, USER_AGENT
    fetcher: HttpFetcher = (
        HttpFetcher(trust, timeout_s=timeout, user_agent=agent)
        if signed is None
        else SignedFetcher(*signed, trust, timeout_s=timeout, user_agent=agent)
    )
    return MirrorFetcher([config.server_url, *config.mirrors], fetcher)


class ImageChannel(TufChannel):
    """The image repository: every bundle the operators signed."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(
            "image",
            config.trusted_root,
            config.metadata_dir,
            config.metadata_url,
            config.targets_url,
            config.download_dir,
            fetcher=mirror_fetcher(config),
        )

    def candidates(self, branch: str) -> list[Candidate]:
        """Every bundle of ``branch``; looking up the folder first makes ngclient
        walk the delegations and cache the branch's role."""
        prefix = f"drivers/{branch}/"
        self.targetinfo(prefix)
        found = []
        for path in sorted(self.listed(prefix)):
            if path.endswith(provenance.SUFFIX):
                continue  # a bundle's provenance, read by check_provenance
            info = self.targetinfo(path)
            if info is None:
                continue
            try:
                found.append(Candidate(path, info, manifest_of(info)))
            except UpdateRefused as exc:
                # One unreadable manifest (say, a newer schema) must not block
                # the bundles this agent does understand.
                log.warning("bundle_skipped", target=path, reason=str(exc))
        return found

    def candidate(self, path: str) -> Candidate | None:
        info = self.targetinfo(path)
        return None if info is None else Candidate(path, info, manifest_of(info))

    def check_provenance(self, candidate: Candidate, build_key: Path) -> None:
        """Refuse ``candidate`` unless the provenance published beside it is signed by
        the build key described at ``build_key`` and names the bundle's digest."""
        path = candidate.target_path + provenance.SUFFIX
        info = self.targetinfo(path)
        if info is None:
            raise UpdateRefused(
                f"{candidate.target_path} has no provenance and this node's policy requires "
                "it (require_provenance): build it with 'gpuward bundle build --build-keys' "
                "and publish it with the provenance beside it ('gpuward repo add')"
            )
        try:
            statement = provenance.verify_provenance(
                self.fetch(info).read_bytes(),
                candidate.sha256,
                provenance.load_build_key(build_key),
            )
        except provenance.ProvenanceRefused as exc:
            raise UpdateRefused(f"{candidate.target_path}: {exc}") from None
        deps = statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
        log.info("provenance_verified", target=candidate.target_path, dependencies=len(deps))
