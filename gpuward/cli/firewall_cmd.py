"""``gpuward firewall``: the outbound nftables allowlist of this node.

The policy is the ``[firewall]`` table of the agent config; the config's
``server_url``, when present, is allowed too, so the server is named once.
``check`` exits 3 when the live table has drifted from the policy (1 is for
errors), so monitoring can tell "tampered with" from "could not look".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit

if TYPE_CHECKING:
    from node.firewall.policy import FirewallPolicy

EXIT_DRIFT = 3


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser(
        "firewall",
        help="the outbound firewall (nftables table inet gpuward)",
    )
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    render = sub.add_parser("render", help="print the table the config gives, changing nothing")
    render.add_argument(
        "--script", action="store_true", help="print the nft script apply runs, not nft JSON"
    )
    render.set_defaults(func=_render)

    apply = sub.add_parser("apply", help="replace the table in one transaction, then verify it")
    apply.add_argument(
        "--write-state",
        action="store_true",
        help="also leave the result in the config's [firewall] state_file, for an agent "
        "without CAP_NET_ADMIN (gpuward-firewall.service does)",
    )
    add_json_flag(apply)
    apply.set_defaults(func=_apply)

    check = sub.add_parser("check", help="compare the live table with the config (exit 3: drift)")
    add_json_flag(check)
    check.set_defaults(func=_check)

    remove = sub.add_parser("remove", help="delete the gpuward table (and nothing else)")
    remove.set_defaults(func=_remove)

    for parser in (render, apply, check):
        parser.add_argument("--config", type=Path, required=True, help="agent config (TOML)")


def _load(path: Path) -> FirewallPolicy:
    from fleet.errors import GpuwardError
    from keys.durable_files import read_toml
    from node.firewall.policy import Endpoint, FirewallPolicy

    doc = read_toml(path, "config")
    if "firewall" not in doc:
        raise GpuwardError(f"config {path} has no [firewall] table")
    policy = FirewallPolicy.from_dict(doc["firewall"])
    server_url = doc.get("server_url")
    if isinstance(server_url, str):
        policy = policy.with_endpoint(Endpoint.from_url(server_url))
    return policy


def _render(args: argparse.Namespace) -> None:
    from node.firewall.nft import Nft
    from node.firewall.resolve import resolve
    from node.firewall.ruleset import render

    policy = _load(args.config)
    ruleset = render(policy, resolve(policy))
    if args.script:
        print(Nft.script(ruleset), end="")
    else:
        print(json.dumps({"nftables": ruleset.to_json()}, indent=2))


def _apply(args: argparse.Namespace) -> None:
    import time

    from fleet.errors import GpuwardError
    from node.firewall.enforcer import Enforcer
    from node.firewall.nft import Nft
    from node.firewall.state import write_result

    policy = _load(args.config)
    report = Enforcer(policy, Nft()).cycle()
    if args.write_state:
        # A failure is a result too: the agent must report it, not an older success.
        write_result(policy.state_file, report, int(time.time()))
    if report.error is not None:
        raise GpuwardError(report.error)
    lines = [f"{report.action}: table inet gpuward, digest {report.digest}"]
    lines += [f"drift repaired: {d}" for d in report.drift]
    lines += [f"note: {n}" for n in report.notes]
    emit(args, report.to_dict(), "\n".join(lines))


def _check(args: argparse.Namespace) -> int:
    from node.firewall.enforcer import observe
    from node.firewall.nft import Nft
    from node.firewall.resolve import resolve
    from node.firewall.ruleset import digest, render

    policy = _load(args.config)
    expected = render(policy, resolve(policy))
    live, drift = observe(Nft(), expected)
    live_digest = None if live is None else digest(live)
    text = (
        f"in sync: table inet gpuward, digest {live_digest}"
        if not drift
        else "\n".join(["drift: the live table differs from the config", *drift])
    )
    emit(
        args,
        {
            "in_sync": not drift,
            "digest": live_digest,
            "expected_digest": expected.digest,
            "drift": drift,
        },
        text,
    )
    return EXIT_DRIFT if drift else 0


def _remove(args: argparse.Namespace) -> None:
    from node.firewall.nft import Nft

    removed = Nft().remove()
    print("removed table inet gpuward" if removed else "no table inet gpuward to remove")
