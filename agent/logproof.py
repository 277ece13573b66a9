"""Before a bundle is handed over: proof that the fleet's transparency log holds it.

TUF says the keys signed a bundle; it cannot say every node was shown the same
one. A holder of the keys (online ones stolen, a signer coerced) could sign a
second bundle under a name and serve it to one node alone. So, with ``log_key``
pinned in its config, the agent installs only a bundle whose entry (its target
path and SHA-256) the server proves is in the log (RFC 9162 inclusion) under a
checkpoint signed with that key and consistent with the last checkpoint this
node accepted (RFC 9162 consistency). A bundle the log lacks is refused; a
checkpoint that does not extend the accepted one is a split view: refused, and
kept (until a newer conflict replaces it: whichever server the next report
reaches may be the attacker's) to be sent with every report, where the honest
server (``server.tlog``) flags it. Both checkpoints live in the agent's state,
written atomically with the rest of it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from urllib.parse import urlencode

import structlog

from agent.cycle_state import AgentState
from agent.identity import load_key, signed_request
from fleet.errors import GpuwardError, InvalidDocument
from fleet.merkle import ProofError, verify_consistency, verify_inclusion
from fleet.tlog import Checkpoint, ConsistencyProof, EntryKind, InclusionProof, LogEntry
from keys.durable_files import read_bounded
from keys.tlog_key import NoteVerifier
from node.channel import Candidate, ChannelUnavailable, UpdateRefused
from node.config import AgentConfig

log = structlog.get_logger(__name__)

MAX_VKEY_BYTES = 4096


class SplitView(UpdateRefused):
    """The log showed this node a tree that does not extend the one it accepted."""

    def __init__(self, message: str, state: AgentState) -> None:
        super().__init__(message)
        self.state = state  # with the conflicting checkpoint, to report


def reported_checkpoint(state: AgentState) -> str | None:
    """What the node's reports carry: a split view it saw, else what it accepted."""
    return state.log_conflict or state.log_checkpoint or None


def require_logged(config: AgentConfig, candidate: Candidate, state: AgentState) -> AgentState:
    """The state with the checkpoint the bundle was proved under, accepted; raise
    ``UpdateRefused`` (``SplitView`` for an inconsistent checkpoint) otherwise."""
    assert config.log_key is not None
    verifier = NoteVerifier.parse(
        read_bounded(config.log_key, MAX_VKEY_BYTES, "log verifier key").decode(errors="replace")
    )
    where = f"{config.server_url}/v1/nodes/{config.node_id}/log/proof"
    query = urlencode({"bundle": candidate.target_path, "sha256": candidate.sha256})
    proof = InclusionProof.from_dict(_get(config, f"{where}/inclusion?{query}", candidate))
    try:
        checkpoint = verifier.verify(proof.checkpoint)
        entry = LogEntry.from_dict(json.loads(proof.entry))
    except (GpuwardError, ValueError) as exc:
        raise UpdateRefused(
            f"{candidate.target_path}: the log's proof is not valid: {exc}"
        ) from None
    wanted = (EntryKind.BUNDLE, candidate.target_path, candidate.sha256)
    try:
        if (
            entry.kind,
            entry.subject,
            entry.sha256,
        ) != wanted or entry.data != proof.entry.encode():
            raise ProofError("the log's entry names another bundle")
        if proof.size != checkpoint.size or entry.leaf_hash != proof.leaf_hash:
            raise ProofError("the proof is for another entry or tree than it says")
        verify_inclusion(proof.leaf_hash, proof.index, proof.size, proof.hashes, checkpoint.root)
    except ProofError as exc:
        raise UpdateRefused(f"{candidate.target_path} is not proved in the log: {exc}") from None
    if state.log_checkpoint:
        _check_extends(
            config,
            verifier.verify(state.log_checkpoint),
            checkpoint,
            proof,
            state,
            where,
            candidate,
        )
    log.info("bundle_in_log", target=candidate.target_path, index=proof.index, size=checkpoint.size)
    return replace(state, log_checkpoint=proof.checkpoint)


def _check_extends(
    config: AgentConfig,
    accepted: Checkpoint,
    shown: Checkpoint,
    proof: InclusionProof,
    state: AgentState,
    where: str,
    candidate: Candidate,
) -> None:
    try:
        if shown.size < accepted.size:
            raise ProofError(f"the log shrank from {accepted.size} entries to {shown.size}")
        hashes: tuple[bytes, ...] = ()
        if accepted.size and shown.size > accepted.size:
            query = urlencode({"old": accepted.size, "new": shown.size})
            hashes = ConsistencyProof.from_dict(
                _get(config, f"{where}/consistency?{query}", candidate)
            ).hashes
        verify_consistency(accepted.size, shown.size, accepted.root, shown.root, hashes)
    except (ProofError, InvalidDocument) as exc:
        log.error(
            "tlog_split_view",
            target=candidate.target_path,
            accepted=accepted.size,
            shown=shown.size,
            reason=str(exc),
        )
        raise SplitView(
            f"{candidate.target_path}: the log's checkpoint does not extend the one this node "
            f"accepted ({exc}); someone holding the server's keys is showing this node "
            "another log: the update is refused and the server is told",
            replace(state, log_conflict=proof.checkpoint),
        ) from None


def _get(config: AgentConfig, url: str, candidate: Candidate) -> object:
    response = signed_request(config, load_key(config), "GET", url)
    if response.status == 404:
        raise UpdateRefused(
            f"{candidate.target_path} (SHA-256 {candidate.sha256[:16]}...) is not in the "
            "fleet's transparency log: it was not published through the server, or was "
            "signed for this node alone; it is refused"
        )
    if response.status != 200:
        raise ChannelUnavailable(f"GET {url}: HTTP {response.status} {response.data[:200]!r}")
    try:
        return json.loads(response.data)
    except ValueError as exc:
        raise ChannelUnavailable(f"GET {url}: not JSON ({exc})") from None
