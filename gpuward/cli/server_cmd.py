"""``gpuward server``: run the pull-only update server, and issue operator tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("server", help="the update server")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="serve the repository and the fleet API until SIGTERM",
        description="Every option can be set in the --config file (its key is the option's "
        "name with underscores); an option given here overrides the file's value.",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="server.toml holding the options (packaged: /etc/gpuward/server.toml)",
    )
    _add_options(run)
    run.set_defaults(func=_run)

    report_key = sub.add_parser(
        "report-key", help="show (making it if needed) the public key auditors verify reports with"
    )
    report_key.add_argument("--repo", type=Path, required=True, help="repository directory")
    report_key.add_argument("--report-key", type=Path, metavar="FILE", help="as for run")
    report_key.set_defaults(func=_report_key)

    token = sub.add_parser("token", help="operator bearer tokens")
    tokens = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = tokens.add_parser("create", help="issue a token; it is printed once, never stored")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.add_argument("--db", required=True, help="the server's store URL (as for run)")
    create.add_argument("--name", default="operator", help="who or what holds it, for logs")
    add_json_flag(create)
    create.set_defaults(func=_token_create)


def _add_options(run: argparse.ArgumentParser) -> None:
    """One flag per option of server.config_file, defaults left to the file and config."""
    from server.config_file import OPTIONS, Kind

    types: dict[Kind, type] = {Kind.INT: int, Kind.FLOAT: float}
    for option in OPTIONS:
        repeatable = option.kind in (Kind.PATHS, Kind.POOL_PATHS)
        default = option.default
        shown = f" (default {default})" if default is not None and not repeatable else ""
        run.add_argument(
            option.flag,
            dest=option.name,
            type=types.get(option.kind, str),
            action="append" if repeatable else "store",
            metavar=option.metavar,
            help=f"{option.help}{shown}",
        )


def _run(args: argparse.Namespace) -> None:
    from server import config_file
    from server.runner import run_server

    flags = {option.name: getattr(args, option.name) for option in config_file.OPTIONS}
    run_server(config_file.load(flags, args.config))


def _report_key(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from keys.report_key import default_path, load_or_create, public_path

    if args.report_key is None and not (args.repo / "metadata" / "root.json").is_file():
        raise GpuwardError(f"{args.repo} is not a repository; give the server's --repo")
    path = args.report_key or default_path(args.repo)
    signer = load_or_create(path)
    print(f"report key {signer.key_id}\npublic key: {public_path(path)} (give it to auditors)")


def _token_create(args: argparse.Namespace) -> None:
    import asyncio
    import time

    from gpuward.cli.service_owner import become_folder_owner
    from server.operators import issue_token
    from server.store import open_store, sqlite_path

    path = sqlite_path(args.db)
    if path is not None:  # the server's own database: it must stay the server's to write
        wal = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        become_folder_owner(path.parent, (path, *wal))

    async def create() -> str:
        store = await open_store(args.db)
        try:
            return await issue_token(store, args.role, args.name, int(time.time()))
        finally:
            await store.close()

    token = asyncio.run(create())
    emit(args, {"token": token, "role": args.role, "name": args.name}, token)
