"""``gpuward policy``: measured-boot reference states for the attestation verifier.

``from-eventlog`` turns a known-good node's event log into an editable JSON
policy; the server judges every node's verified log against it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpuward.cli.eventlog_cmd import read_log
from gpuward.cli.output import add_json_flag, emit


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("policy", help="measured-boot policy")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    make = sub.add_parser(
        "from-eventlog",
        help="write the reference state of a known-good boot",
        description=(
            "Read a binary event log from a known-good node and write its boot state "
            "(Secure Boot, PK/KEK/db/dbx digests, boot application digests, kernel "
            "command lines) as a JSON policy to edit and give the server."
        ),
    )
    make.add_argument("file", type=Path, help="binary event log (binary_bios_measurements)")
    make.add_argument("-o", "--output", type=Path, help="write the policy here (default: stdout)")
    add_json_flag(make)
    make.set_defaults(func=_from_eventlog)


def _from_eventlog(args: argparse.Namespace) -> None:
    from keys.durable_files import atomic_write
    from server.attestation.policy import from_eventlog

    policy = from_eventlog(read_log(args.file)).to_dict()
    text = json.dumps(policy, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        print(text, end="")
        return
    atomic_write(args.output, text.encode(), mode=0o644)
    summary = (
        f"wrote {args.output}: Secure Boot {'on' if policy['secure_boot'] else 'off'}, "
        f"{len(policy['boot_applications'])} boot application(s), "
        f"{len(policy['kernel_cmdlines'])} kernel command line(s)"
    )
    emit(args, {"policy": str(args.output)}, summary)
