"""``gpuward fleet remediation``: what the server's remediation is doing, and the
operator's part in it (approving an action that waits, releasing a node).

Viewers read the boards and the audit log; approve and release need an
operator's token, and are audited under its name. A symptom is what a node
reported, so it is printed as untrusted text (``gpuward.cli.output``).
"""

from __future__ import annotations

import argparse
from urllib.parse import quote, urlencode

from fleet.errors import GpuwardError
from fleet.human_time import when
from fleet.remediation import (
    MAX_AUDIT_READ,
    NodeRemediation,
    RemediationAuditLog,
    RemediationBoard,
    RemediationOverview,
)
from gpuward.cli.operator_client import add_server_flags, answer, call, send
from gpuward.cli.output import add_json_flag, emit, table

DEFAULT_AUDIT = 50
STATUS = "gpuward fleet remediation status"
# What to do after the server refused a command, by its HTTP status.
_NEXT = {
    401: "pass an operator token the server issued (--token-file or GPUWARD_TOKEN)",
    403: "approve and release need an operator token: gpuward server token create --role operator",
    409: f"see '{STATUS}' for the node's stage",
}


def register(fleet: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = fleet.add_parser(
        "remediation",
        help="nodes drained, reset or held for service by the server's remediation "
        "(viewer token; approve, release: operator)",
    )
    sub = group.add_subparsers(dest="remediation_command", metavar="COMMAND", required=True)
    status = sub.add_parser(
        "status", help="each pool's nodes under remediation, and those held back or notified"
    )
    status.set_defaults(func=_status)
    audit = sub.add_parser(
        "audit", help="the newest entries of the remediation audit log, oldest first"
    )
    audit.add_argument("--node", metavar="ID", help="one node's entries only")
    audit.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_AUDIT,
        metavar="N",
        help=f"the newest N entries, at most {MAX_AUDIT_READ} (default %(default)s)",
    )
    audit.set_defaults(func=_audit)
    approve = sub.add_parser("approve", help="approve the action waiting for a node; it runs now")
    release = sub.add_parser(
        "release",
        help="end a node's remediation: drop an action not yet approved, or resume the node "
        "now (one marked for service too)",
    )
    for name, parser in (("approve", approve), ("release", release)):
        parser.add_argument("node_id", metavar="NODE")
        parser.set_defaults(func=_command, name=name)
    for parser in (status, audit, approve, release):
        add_server_flags(parser)
        add_json_flag(parser)


def _last_error(node: NodeRemediation) -> str | None:
    if not node.last_error:
        return None
    return f"{node.last_error} (failed {node.attempts} time(s), retried every tick)"


def _board_text(board: RemediationBoard) -> str:
    lines = [
        f"pool {board.pool}: {len(board.nodes)} node(s) under remediation, "
        f"{len(board.held)} held back or notified"
    ]
    if board.nodes:
        rows = [
            (n.node_id, n.stage, n.action, n.symptom.summary, when(n.since), _last_error(n))
            for n in board.nodes
        ]
        lines.append(table(("NODE", "STAGE", "ACTION", "SYMPTOM", "SINCE", "LAST ERROR"), rows))
    if board.held:
        # Why a node is held back (the budget, a failure domain); for a node whose
        # action is notify, what it shows.
        lines.append(table(("HELD OR NOTIFIED", "WHY"), sorted(board.held.items())))
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> None:
    overview = RemediationOverview.from_dict(call(args, "GET", "/v1/remediation"))
    text = "\n\n".join(_board_text(b) for b in overview.boards)
    emit(args, overview.to_dict(), text or "no pool has been remediated yet")


def _audit(args: argparse.Namespace) -> None:
    if not 1 <= args.limit <= MAX_AUDIT_READ:
        raise GpuwardError(f"--limit must be from 1 to {MAX_AUDIT_READ}")
    query = {"limit": str(args.limit)} | ({} if args.node is None else {"node": args.node})
    log = RemediationAuditLog.from_dict(
        call(args, "GET", f"/v1/remediation/audit?{urlencode(query)}")
    )
    rows = [
        (
            when(e.at),
            e.pool,
            e.node_id,
            e.event,
            e.action,
            e.symptom.summary,
            e.detail or None,
            e.by,
        )
        for e in log.entries
    ]
    headers = ("TIME", "POOL", "NODE", "EVENT", "ACTION", "SYMPTOM", "DETAIL", "BY")
    emit(args, log.to_dict(), table(headers, rows) if rows else "no remediation audit entries")


def _command(args: argparse.Namespace) -> None:
    path = f"/v1/remediation/nodes/{quote(args.node_id, safe='')}/{args.name}"
    response = send(args, "POST", path)
    try:
        doc = answer("POST", path, response)
    except GpuwardError as exc:
        then = _NEXT.get(response.status)
        raise GpuwardError(str(exc) if then is None else f"{exc}: {then}") from None
    (board,) = RemediationOverview.from_dict(doc).boards
    emit(args, doc, _outcome(args.name, args.node_id, board))


def _outcome(name: str, node_id: str, board: RemediationBoard) -> str:
    """What the command did, as the node's pool's board now shows it."""
    done = "approved" if name == "approve" else "released"
    node = board.node(node_id)
    if node is None:
        return f"{node_id}: {done}; no longer under remediation in pool {board.pool}"
    text = f"{node_id}: {done}; {node.action} for {node.symptom.summary}, now {node.stage}"
    error = _last_error(node)
    return text + (f"\nthe scheduler step failed: {error}" if error else "")
