"""Entry point of the ``gpuward`` console script.

Every command group registers its subcommands from its own module. Errors meant
for people (``GpuwardError``, and the OS errors of missing or unreadable files)
become one line on stderr and a non-zero exit; a traceback appears only with
``--debug``. A reader that stops early (``gpuward rollout status | head -1``)
ends the command quietly, as it ends any Unix filter.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from fleet.errors import GpuwardError
from gpuward import __version__, logs
from gpuward.cli import (
    agent_cmd,
    bundle_cmd,
    compat_cmd,
    demo_cmd,
    director_cmd,
    eventlog_cmd,
    firewall_cmd,
    fleet_cmd,
    gpu_attest_cmd,
    keys_cmd,
    log_cmd,
    mirror_cmd,
    nodes_cmd,
    policy_cmd,
    repo_cmd,
    report_cmd,
    rollout_cmd,
    server_cmd,
)
from gpuward.cli.output import terminal_text

GROUPS = (
    keys_cmd,
    bundle_cmd,
    repo_cmd,
    director_cmd,
    mirror_cmd,
    log_cmd,
    rollout_cmd,
    report_cmd,
    server_cmd,
    fleet_cmd,
    nodes_cmd,
    agent_cmd,
    firewall_cmd,
    compat_cmd,
    eventlog_cmd,
    gpu_attest_cmd,
    policy_cmd,
    demo_cmd,
)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
# What a shell reports for a command that SIGPIPE ended: 128 + 13.
EXIT_BROKEN_PIPE = 141


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors reach the journal at err (subcommands too:
    argparse makes them of the top parser's class)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, logs.stderr_text(f"{self.prog}: error: {message}", logs.ERR) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gpuward",
        description="Keep a GPU fleet's NVIDIA driver stack on signed, known-good versions.",
    )
    parser.add_argument("--version", action="version", version=f"gpuward {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log format on stderr (default: console on a terminal, JSON lines otherwise)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_lines = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json_lines=json_lines, level=logging.DEBUG if args.debug else logging.INFO)
    try:
        result: int | None = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is still caught
        return result or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except GpuwardError as exc:
        return _fail(args, exc, str(exc), EXIT_ERROR)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, exc, f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except Exception as exc:
        message = (
            f"internal error: {type(exc).__name__}: {exc} "
            "(run again with --debug for details, and report it)"
        )
        return _fail(args, exc, message, EXIT_INTERNAL)


def _reader_gone() -> int:
    """The reader of stdout went away: nothing more to say, and nowhere to say it.
    Python's own advice: point stdout at /dev/null, or the interpreter's final
    flush fails again and prints "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _fail(args: argparse.Namespace, exc: BaseException, message: str, code: int) -> int:
    if args.debug:
        import traceback

        trace = "".join(traceback.format_exception(exc)).rstrip("\n")
        print(logs.stderr_text(trace, logs.ERR), file=sys.stderr)
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    # A server's message may quote what a node sent (gpuward.cli.output).
    first_line = terminal_text(first_line)
    # Under systemd the line is filed at err, where journalctl -p err looks.
    print(logs.stderr_text(f"gpuward: error: {first_line}", logs.ERR), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
