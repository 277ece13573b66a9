"""``gpuward agent kernel-hold``: hold the running kernel under the NVIDIA driver.

``status`` exits 3 when the hold is not fully in force (1 is for errors), so
monitoring can tell "the kernel may move" from "could not look". ``apply`` and
``release`` need root.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit

if TYPE_CHECKING:
    from applier.kernel_hold import HoldState

EXIT_NOT_HELD = 3


def register_under_agent(agent: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = agent.add_parser(
        "kernel-hold", help="keep the package manager from upgrading the running kernel"
    )
    sub = group.add_subparsers(dest="hold_command", metavar="COMMAND", required=True)
    for name, help_text in (
        ("status", "show what the hold covers and whether it is in force (exit 3: not held)"),
        ("apply", "hold the running kernel's packages (apt-mark hold / dnf versionlock)"),
        ("release", "undo the hold gpuward applied, leaving other holds alone"),
    ):
        command = sub.add_parser(name, help=help_text)
        add_json_flag(command)
        command.set_defaults(func=_run, action=name)


def _run(args: argparse.Namespace) -> int:
    from applier.command_runner import CommandRunner
    from applier.kernel_hold import KernelHold

    hold = KernelHold.detect(CommandRunner())
    state: HoldState = getattr(hold, args.action)()
    held = ", ".join(state.held) or "nothing"
    verdict = "held" if state.applied else "NOT held"
    extra = ""
    if state.family == "apt":
        extra = f"; unattended-upgrades blacklist {'in place' if state.blacklisted else 'absent'}"
    emit(args, state.to_dict(), f"kernel {state.kernel}: {verdict} ({held}{extra})")
    return EXIT_NOT_HELD if args.action == "status" and not state.applied else 0
