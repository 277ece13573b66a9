"""``gpuward rollout``: start and steer staged rollouts through the server."""

from __future__ import annotations

import argparse
from typing import Any

from fleet.human_time import when
from fleet.rollout import DEFAULT_PROGRESS_DEADLINE_S
from gpuward.cli.operator_client import add_server_flags, call
from gpuward.cli.output import add_json_flag, emit, table

COMMANDS = ("pause", "resume", "abort", "rollback")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("rollout", help="staged rollouts (needs an operator token)")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    start = sub.add_parser("start", help="roll a published bundle out to a pool, in waves")
    start.add_argument("--pool", required=True)
    start.add_argument("--target", required=True, help="target path of the published bundle")
    start.add_argument(
        "--waves",
        default="1,5%,25%,100%",
        help="cumulative wave sizes, node counts or percentages of the pool (default %(default)s)",
    )
    start.add_argument(
        "--max-unavailable",
        type=int,
        default=1,
        metavar="N",
        help="nodes of a wave updating at the same time (default %(default)s)",
    )
    start.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="S",
        help="seconds to wait after each wave before the next (default %(default)s)",
    )
    start.add_argument(
        "--max-failures",
        type=int,
        default=0,
        metavar="N",
        help="halt past N failures in a wave (default %(default)s)",
    )
    start.add_argument(
        "--progress-deadline",
        type=int,
        default=DEFAULT_PROGRESS_DEADLINE_S,
        metavar="S",
        help="a node not on the target S seconds after its assignment counts as failed "
        "(default %(default)s)",
    )
    start.add_argument("--id", help="rollout id (default: generated)")
    start.set_defaults(func=_start)
    status = sub.add_parser("status", help="one rollout's waves and events, or all rollouts")
    status.add_argument("rollout_id", nargs="?")
    status.set_defaults(func=_status)
    for name in COMMANDS:
        cmd = sub.add_parser(
            name,
            help="re-assign every touched node its previous bundle"
            if name == "rollback"
            else f"{name} a rollout",
        )
        cmd.add_argument("rollout_id")
        cmd.set_defaults(func=_command, name=name)
    for parser in (start, status, *(sub.choices[n] for n in COMMANDS)):
        add_server_flags(parser)
        add_json_flag(parser)


def _describe(rollout: dict[str, Any]) -> str:
    head = f"{rollout['id']}: {rollout['target']} to pool {rollout['pool']}, {rollout['phase']}" + (
        f" ({rollout['reason']})" if rollout.get("reason") else ""
    )
    rows = [
        (w["wave"], w["nodes"], w["pending"], w["assigned"], w["done"], w["failed"])
        for w in rollout["waves"]
    ]
    return head + "\n" + table(("WAVE", "NODES", "PENDING", "ASSIGNED", "DONE", "FAILED"), rows)


def _start(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "pool": args.pool,
        "target": args.target,
        "policy": {
            "waves": args.waves,
            "max_unavailable": args.max_unavailable,
            "soak_s": args.soak,
            "max_failures": args.max_failures,
            "progress_deadline_s": args.progress_deadline,
        },
    }
    if args.id:
        body["id"] = args.id
    rollout = call(args, "POST", "/v1/rollouts", body)
    emit(args, rollout, _describe(rollout))


def _status(args: argparse.Namespace) -> None:
    if args.rollout_id:
        rollout = call(args, "GET", f"/v1/rollouts/{args.rollout_id}")
        events = "\n".join(f"  {when(e['at'])}  {e['event']}" for e in rollout["events"][-20:])
        emit(args, rollout, _describe(rollout) + "\nevents:\n" + events)
        return
    rollouts = call(args, "GET", "/v1/rollouts")["rollouts"]
    emit(
        args,
        rollouts,
        table(
            ("ID", "POOL", "TARGET", "PHASE", "WAVE"),
            [(r["id"], r["pool"], r["target"], r["phase"], r["wave"]) for r in rollouts],
        ),
    )


def _command(args: argparse.Namespace) -> None:
    rollout = call(args, "POST", f"/v1/rollouts/{args.rollout_id}/{args.name}")
    emit(args, rollout, _describe(rollout))
