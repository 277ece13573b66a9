"""``gpuward log``: check the fleet's transparency log offline, with no server.

From an export (``GET /v1/log/export``, or a mirror's copy) and the log's
verifier key (``keys/tlog.vkey``, published by the server): rebuild the whole
tree, check the checkpoint's signature and root, and that checkpoints saved
earlier (by a node, an auditor, a witness) are prefixes of it. Or check one
entry's inclusion proof (``GET /v1/log/proof/inclusion``) on its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit

if TYPE_CHECKING:
    from keys.tlog_key import NoteVerifier

MAX_EXPORT_BYTES = 4 * 1024**3
MAX_SMALL_FILE = 64 * 1024


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("log", help="the fleet's transparency log, checked offline")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    verify = sub.add_parser(
        "verify",
        help="rebuild a log export's tree and check its checkpoint",
        description=(
            "Rebuild the Merkle tree of every entry of a log export, check the checkpoint's "
            "signature with the log's verifier key and that its root is the tree's, and "
            "that each --against checkpoint (saved earlier) is consistent with it."
        ),
    )
    verify.add_argument("export", type=Path, help="the log export (JSON)")
    verify.add_argument("--key", type=Path, required=True, help="the log's tlog.vkey")
    verify.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        help="an earlier checkpoint (signed note) the log must extend; repeatable",
    )
    add_json_flag(verify)
    verify.set_defaults(func=_verify)
    inclusion = sub.add_parser(
        "inclusion",
        help="check one entry's inclusion proof",
        description="Check that ENTRY (its canonical JSON) is in the log under the proof's "
        "signed checkpoint.",
    )
    inclusion.add_argument("entry", type=Path, help="the entry's canonical JSON")
    inclusion.add_argument("proof", type=Path, help="the inclusion proof (JSON)")
    inclusion.add_argument("--key", type=Path, required=True, help="the log's tlog.vkey")
    add_json_flag(inclusion)
    inclusion.set_defaults(func=_inclusion)


def _read(path: Path, what: str) -> bytes:
    from keys.durable_files import read_bounded

    return read_bounded(path, MAX_SMALL_FILE, what)


def _verifier(path: Path) -> NoteVerifier:
    from keys.tlog_key import NoteVerifier

    return NoteVerifier.parse(_read(path, "log key").decode(errors="replace"))


def _verify(args: argparse.Namespace) -> None:
    from fleet.tlog import LogExport
    from keys.durable_files import read_document
    from keys.tlog_key import check_consistent, verify_export

    verifier = _verifier(args.key)
    export = read_document(args.export, LogExport, MAX_EXPORT_BYTES, "log export")
    verified = verify_export(export, verifier)
    for older in args.against:
        checkpoint = verifier.verify(_read(older, "checkpoint").decode(errors="replace"))
        check_consistent(verified, checkpoint)
    size = verified.checkpoint.size
    emit(
        args,
        {
            "origin": verified.checkpoint.origin,
            "size": size,
            "root": verified.checkpoint.root.hex(),
            "consistent_with": [str(p) for p in args.against],
        },
        f"{args.export}: {size} entries, root {verified.checkpoint.root.hex()}, signed by "
        f"{verified.checkpoint.origin}; consistent with {len(args.against)} earlier checkpoint(s)",
    )


def _inclusion(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from fleet.merkle import ProofError, leaf_hash, verify_inclusion
    from fleet.tlog import InclusionProof
    from keys.durable_files import read_document

    verifier = _verifier(args.key)
    proof = read_document(args.proof, InclusionProof, MAX_SMALL_FILE, "inclusion proof")
    checkpoint = verifier.verify(proof.checkpoint)
    leaf = leaf_hash(_read(args.entry, "log entry"))
    if checkpoint.size != proof.size or leaf != proof.leaf_hash:
        raise GpuwardError("the proof is for another entry or tree than it says")
    try:
        verify_inclusion(leaf, proof.index, proof.size, proof.hashes, checkpoint.root)
    except ProofError as exc:
        raise GpuwardError(str(exc)) from None
    emit(
        args,
        {"index": proof.index, "size": proof.size, "origin": checkpoint.origin},
        f"{args.entry}: entry {proof.index} of {proof.size} in {checkpoint.origin}",
    )
