"""``gpuward demo``: the story of one signed update, on one machine."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = groups.add_parser(
        "demo", help="run a server and three simulated hosts through signed updates and a rollback"
    )
    demo.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (kept afterwards) instead of a temp dir",
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    from gpuward import logs
    from gpuward.demo import run_demo

    if not args.debug:
        # The story is told on stdout; only warnings and errors from the parts.
        logs.configure(json_lines=False, level=logging.WARNING)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    run_demo(args.keep)
