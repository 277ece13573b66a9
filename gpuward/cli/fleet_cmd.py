"""``gpuward fleet``: how the fleet looks, from the server's operator API."""

from __future__ import annotations

import argparse

from gpuward.cli.operator_client import add_server_flags, call
from gpuward.cli.output import add_json_flag, emit, table


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("fleet", help="the fleet as the server sees it (operator token)")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stragglers = sub.add_parser(
        "stragglers",
        help="nodes whose GPUs are persistently slower than their peers, most deviant first",
    )
    add_server_flags(stragglers)
    add_json_flag(stragglers)
    stragglers.set_defaults(func=_stragglers)


def _stragglers(args: argparse.Namespace) -> None:
    doc = call(args, "GET", "/v1/fleet/stragglers")
    rows = [
        (
            node["rank"],
            node["node_id"],
            node["score"],
            "-" if s["gpu"] is None else s["gpu"],
            s["metric"],
            f"{s['value']:.4g}",
            f"{s['pool_median']:.4g}",
        )
        for node in doc["nodes"]
        for s in node["stragglers"]
    ]
    head = (
        f"{len(doc['nodes'])} straggler(s) among {doc['nodes_compared']} nodes "
        f"(last {doc['window_reports']} reports each)"
    )
    emit(
        args,
        doc,
        head
        + (
            "\n" + table(("RANK", "NODE", "SCORE", "GPU", "METRIC", "VALUE", "PEER MEDIAN"), rows)
            if rows
            else ""
        ),
    )
