"""``gpuward server``: run the pull-only update server."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("server", help="the update server")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="serve the repository and collect reports until SIGTERM")
    run.add_argument("--repo", type=Path, required=True, help="repository directory")
    run.add_argument("--db", type=Path, required=True, help="SQLite database file")
    run.add_argument("--director", type=Path, help="director repository directory (optional)")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8470, help="port (default 8470)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    from server.runner import run_server

    run_server(args.repo, args.db, args.host, args.port, args.director)
