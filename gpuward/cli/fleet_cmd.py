"""``gpuward fleet``: how the fleet looks, from the server's operator API."""

from __future__ import annotations

import argparse
import urllib.parse

from fleet.attribution import Attribution
from fleet.checkpoint import CheckpointAdvice, advise
from fleet.errors import GpuwardError
from fleet.human_time import duration
from gpuward.cli import remediation_cmd
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
    advice = sub.add_parser(
        "checkpoint-advice",
        help="a job's mean time between failures and its Young/Daly checkpoint interval, "
        "from a pool's observed interruptions (or from --interruptions and --gpu-hours, "
        "offline)",
    )
    advice.add_argument("--gpus", type=int, required=True, help="GPUs in the job")
    advice.add_argument(
        "--checkpoint-cost", type=float, required=True, help="seconds one checkpoint takes"
    )
    advice.add_argument("--pool", help="the pool whose interruptions count (default: all)")
    advice.add_argument(
        "--interruptions", type=int, help="interruptions observed (with --gpu-hours: no server)"
    )
    advice.add_argument("--gpu-hours", type=float, help="GPU-hours observed (with --interruptions)")
    add_server_flags(advice)
    add_json_flag(advice)
    advice.set_defaults(func=_checkpoint_advice)
    attribution = sub.add_parser(
        "attribution",
        help="what the degraded nodes have in common (a rack, row, PDU, NVLink domain or "
        "driver version), with the evidence, and the single cards",
    )
    add_server_flags(attribution)
    add_json_flag(attribution)
    attribution.set_defaults(func=_attribution)
    remediation_cmd.register(sub)


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


def _checkpoint_advice(args: argparse.Namespace) -> None:
    offline = (args.interruptions is not None, args.gpu_hours is not None)
    if any(offline) and not all(offline):
        raise GpuwardError("give --interruptions and --gpu-hours together, or neither")
    if all(offline):
        try:
            advice = advise(
                args.interruptions, args.gpu_hours, args.gpus, args.checkpoint_cost, args.pool
            )
        except ValueError as exc:
            raise GpuwardError(f"checkpoint-advice: {exc}") from None
    else:
        query = {"gpus": args.gpus, "checkpoint_cost": args.checkpoint_cost}
        if args.pool:
            query["pool"] = args.pool
        path = "/v1/fleet/checkpoint-advice?" + urllib.parse.urlencode(query)
        advice = CheckpointAdvice.from_dict(call(args, "GET", path))
    emit(args, advice.to_dict(), _advice_text(advice))


def _advice_text(advice: CheckpointAdvice) -> str:
    seen = (
        f"{advice.interruptions} interruption(s) in {advice.gpu_hours:.0f} GPU-hours"
        f" ({advice.pool or 'whole fleet'})"
    )
    mtbf, daly, young = advice.job_mtbf_s, advice.daly_interval_s, advice.young_interval_s
    if mtbf is None or daly is None or young is None:
        return f"{seen}\n{advice.note}"
    return (
        f"{seen}\n"
        f"job of {advice.gpus} GPUs: MTBF {duration(mtbf)}\n"
        f"checkpoint every {duration(daly)} (Daly); Young: {duration(young)}\n"
        f"{advice.note}"
    )


def _attribution(args: argparse.Namespace) -> None:
    found = Attribution.from_dict(call(args, "GET", "/v1/fleet/attribution"))
    lines = [
        f"{found.degraded} of {found.nodes} node(s) heard from recently are degraded: "
        f"{len(found.clusters)} cluster(s), {len(found.cards)} suspect card(s), "
        f"{found.unexplained} unexplained"
    ]
    if found.clusters:
        clusters = [
            (c.cause, c.label, c.nodes, c.degraded, f"{c.share:.0%}", f"{c.p_value:.1e}", c.likely)
            for c in found.clusters
        ]
        headers = ("CAUSE", "LABEL", "NODES", "DEGRADED", "SHARE", "P-VALUE", "LIKELY CAUSE")
        lines += ["", table(headers, clusters)]
    if found.cards:
        cards = [(c.node_id, c.gpu, "; ".join(c.reasons) or None) for c in found.cards]
        lines += ["", table(("NODE", "GPU", "REASONS"), cards)]
    emit(args, found.to_dict(), "\n".join(lines))
