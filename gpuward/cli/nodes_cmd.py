"""``gpuward nodes``: the enrolled nodes, from the server's operator API.

``remove`` is what re-enrollment needs: a node id stays bound to the key it
enrolled with, and a TPM to the one node it vouched for, so a node that lost its
key (or was reinstalled), or a TPM moved to a machine with another id, is
refused until an admin removes the node. Removal deletes the node's history
with it, so whoever enrolls the id next starts with none; the server logs it
as an audit event naming the admin's token.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from fleet.human_time import when
from gpuward.cli.operator_client import add_server_flags, call
from gpuward.cli.output import add_json_flag, emit, table

HISTORY = 10


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("nodes", help="enrolled nodes (viewer token; remove: admin)")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="every enrolled node with its state and driver")
    listing.add_argument("--pool", help="only the nodes of this pool")
    listing.set_defaults(func=_list)
    show = sub.add_parser("show", help="one node, its latest report and its recent reports")
    show.add_argument("node_id")
    show.add_argument(
        "--limit",
        type=int,
        default=HISTORY,
        metavar="N",
        help="how many recent reports (default %(default)s)",
    )
    show.set_defaults(func=_show)
    remove = sub.add_parser(
        "remove",
        help="remove a node and its history, freeing its TPM: the node may enroll again "
        "with a new key, or its TPM under another id (admin; audited)",
    )
    remove.add_argument("node_id")
    remove.set_defaults(func=_remove)
    for parser in (listing, show, remove):
        add_server_flags(parser)
        add_json_flag(parser)


def _node_path(node_id: str) -> str:
    return f"/v1/nodes/{quote(node_id, safe='')}"


def _driver(node: dict[str, Any]) -> str | None:
    """The driver the node runs, marked when its bundle was withdrawn ('repo remove')."""
    report = node["report"] or {}
    driver: str | None = report.get("driver_version")
    return f"{driver or '-'} (withdrawn)" if node["withdrawn"] else driver


def _open(node: dict[str, Any]) -> str | None:
    """The security advisories open on the node's driver, in a few words."""
    advisories = node.get("advisories")
    if advisories is None:
        return None
    found = advisories["open"]
    return f"{len(found)} open ({found[0]['severity']})" if found else "none open"


def _advisory_lines(node: dict[str, Any]) -> list[str]:
    advisories = node.get("advisories")
    if advisories is None:
        return ["security advisories: unknown (no driver reported, or no feed in the catalog)"]
    found, driver = advisories["open"], advisories["driver_version"]
    if not found:
        return [f"security advisories: none open on {driver}"]
    closes = (
        f"{advisories['fixed_by']} closes them all"
        if advisories["fixed_by"]
        else "no fix listed in its branch ('gpuward compat plan' names the nearest)"
    )
    rows = [
        (a["cve"], a["severity"], a["score"], a["status"], a["fixed"], a["bulletin"]) for a in found
    ]
    return [
        f"security advisories: {len(found)} open on {driver}; {closes}",
        table(("CVE", "SEVERITY", "SCORE", "STATUS", "FIXED IN BRANCH", "BULLETIN"), rows),
    ]


def _gpus_ok(report: dict[str, Any]) -> str:
    gpus = report["gpus"]
    return f"{sum(1 for g in gpus if g['healthy'])}/{len(gpus)}"


def _list(args: argparse.Namespace) -> None:
    nodes = call(args, "GET", "/v1/fleet")["nodes"]
    if args.pool is not None:
        nodes = [n for n in nodes if n["pool"] == args.pool]
    rows = [
        (
            n["node_id"],
            n["pool"],
            n["state"],
            n["attestation"],
            _driver(n),
            _open(n),
            when(n["last_seen"]),
        )
        for n in nodes
    ]
    emit(
        args,
        nodes,
        table(("NODE", "POOL", "STATE", "ATTESTATION", "DRIVER", "ADVISORIES", "LAST SEEN"), rows)
        if rows
        else "no enrolled nodes",
    )


def _show(args: argparse.Namespace) -> None:
    node = call(args, "GET", f"{_node_path(args.node_id)}?limit={args.limit}")
    report = node["report"] or {}
    lines = [
        f"{node['node_id']}: {node['state']}, pool {node['pool']}, {node['attestation']}",
        f"enrolled {when(node['enrolled_at'])}, last seen {when(node['last_seen'])}",
        f"driver {_driver(node) or '-'}, bundle {report.get('bundle') or '-'}, "
        f"assigned {node['assigned'] or '-'}",
    ]
    if report:
        lines.append(f"last update: {report['update']} ({report['reason'] or '-'})")
    lines.extend(_advisory_lines(node))
    rows = [
        (
            when(h["received_at"]),
            h["report"]["update"],
            h["report"]["driver_version"],
            h["report"]["active_slot"],
            _gpus_ok(h["report"]),
        )
        for h in node["history"]
    ]
    if rows:
        lines.append(table(("RECEIVED", "UPDATE", "DRIVER", "SLOT", "GPUS OK"), rows))
    emit(args, node, "\n".join(lines))


def _remove(args: argparse.Namespace) -> None:
    doc = call(args, "DELETE", _node_path(args.node_id))
    freed = "; its TPM may enroll again, under this id or another" if doc["ek_released"] else ""
    reports = doc["reports_deleted"]
    emit(
        args,
        doc,
        f"{doc['removed']}: removed with its history ({reports} report"
        f"{'' if reports == 1 else 's'}){freed}; it can enroll again "
        "('gpuward agent enroll' on the node)",
    )
