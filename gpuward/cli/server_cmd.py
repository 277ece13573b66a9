"""``gpuward server``: run the pull-only update server, and issue operator tokens."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fleet.human_time import when
from gpuward.cli.output import add_json_flag, emit, table

if TYPE_CHECKING:
    from server.store import OperatorToken, Store

T = TypeVar("T")


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
        "report-key",
        help="show (making it if needed) the public key auditors verify reports with",
        description=(
            "With --pkcs11-token, the report key lives in that PKCS#11 token (an HSM): it is "
            "made there (ECDSA P-256, labelled gpuward-report) unless the token holds it "
            "already, its public half is written to REPO/keys/report.pub, and the signer URI "
            "to give the server as report_key_uri is printed. The token's user PIN comes from "
            "the file GPUWARD_HSM_PIN_FILE names, from GPUWARD_HSM_PIN, or a prompt."
        ),
    )
    report_key.add_argument("--repo", type=Path, required=True, help="repository directory")
    report_key.add_argument("--report-key", type=Path, metavar="FILE", help="as for run")
    report_key.add_argument(
        "--pkcs11-token", metavar="LABEL", help="keep the report key in this PKCS#11 token"
    )
    report_key.add_argument(
        "--pkcs11-module",
        type=Path,
        metavar="FILE",
        help="the token's PKCS#11 module (default: PYKCS11LIB)",
    )
    report_key.set_defaults(func=_report_key)

    token = sub.add_parser("token", help="operator bearer tokens")
    tokens = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = tokens.add_parser("create", help="issue a token; it is printed once, never stored")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.add_argument(
        "--name", default="operator", help="who or what holds it, for logs (default %(default)s)"
    )
    create.add_argument(
        "--expires-in",
        default="90d",
        metavar="DURATION",
        help="how long it is accepted: N followed by m, h, d or w (default 90d); "
        "'never' only if you mean it",
    )
    listing = tokens.add_parser(
        "list",
        help="every token: id, name, role, state, created, expires, last used (never the token)",
    )
    revoke = tokens.add_parser(
        "revoke", help="refuse a token from now on and end its dashboard sessions"
    )
    revoke.add_argument("token", metavar="ID-or-NAME", help="its id (see list) or its name")
    for command, func in ((create, _token_create), (listing, _token_list), (revoke, _token_revoke)):
        command.add_argument("--db", required=True, help="the server's store URL (as for run)")
        add_json_flag(command)
        command.set_defaults(func=func)


def _add_options(run: argparse.ArgumentParser) -> None:
    """One flag per option of server.config_file, defaults left to the file and config."""
    from server.config_file import OPTIONS, OptionKind

    types: dict[OptionKind, type] = {OptionKind.INT: int, OptionKind.FLOAT: float}
    for option in OPTIONS:
        if option.file_only:
            continue
        repeatable = option.kind in (OptionKind.PATHS, OptionKind.POOL_PATHS, OptionKind.ADDRESSES)
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
    from server.lifecycle import run_server

    flags = {option.name: getattr(args, option.name, None) for option in config_file.OPTIONS}
    run_server(config_file.load(flags, args.config))


def _report_key(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from keys.hsm import pin_source, select_module
    from keys.report_key import (
        create_in_token,
        default_path,
        load_from_token,
        load_or_create,
        public_path,
    )

    if args.report_key is None and not (args.repo / "metadata" / "root.json").is_file():
        raise GpuwardError(f"{args.repo} is not a repository; give the server's --repo")
    path = args.report_key or default_path(args.repo)
    if args.pkcs11_token is None:
        signer = load_or_create(path)
        print(f"report key {signer.key_id}\npublic key: {public_path(path)} (give it to auditors)")
        return
    if args.report_key is not None:
        raise GpuwardError("give --report-key (a file) or --pkcs11-token, not both")
    select_module(args.pkcs11_module)
    pin = pin_source(args.pkcs11_token)
    uri = create_in_token(args.pkcs11_token, pin)
    signer = load_from_token(uri, pin, public_path(path))
    print(
        f"report key {signer.key_id} (ECDSA P-256, in PKCS#11 token {args.pkcs11_token})\n"
        f"public key: {public_path(path)} (give it to auditors)\n"
        f'server.toml: report_key_uri = "{uri}" (with report_key_pin_file, and report_key_module '
        "unless PYKCS11LIB is set)"
    )


def _with_store(db: str, act: Callable[[Store, int], Awaitable[T]]) -> T:
    """Run ``act`` on the server's store, as the store's owner for a SQLite file."""
    import asyncio
    import time

    from gpuward.cli.service_owner import become_folder_owner
    from server.store import open_store, sqlite_path

    path = sqlite_path(db)
    if path is not None:  # the server's own database: it must stay the server's to write
        wal = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        become_folder_owner(path.parent, (path, *wal))

    async def run() -> T:
        store = await open_store(db)
        try:
            return await act(store, int(time.time()))
        finally:
            await store.close()

    return asyncio.run(run())


def _token_create(args: argparse.Namespace) -> None:
    from server.operators import issue_token, parse_expiry

    lifetime = parse_expiry(args.expires_in)

    async def create(store: Store, now: int) -> tuple[str, int | None]:
        expires_at = None if lifetime is None else now + lifetime
        return await issue_token(store, args.role, args.name, now, expires_at), expires_at

    token, expires_at = _with_store(args.db, create)
    doc = {"token": token, "role": args.role, "name": args.name, "expires_at": expires_at}
    if expires_at is None and not args.json:
        print("warning: this token never expires; revoke it when no longer needed", file=sys.stderr)
    elif not args.json:
        print(f"expires {when(expires_at)}", file=sys.stderr)
    emit(args, doc, token)


def _token_list(args: argparse.Namespace) -> None:
    async def listing(store: Store, _now: int) -> list[OperatorToken]:
        return await store.tokens()

    found = _with_store(args.db, listing)
    now = int(time.time())
    docs = [
        {
            "id": t.token_id,
            "name": t.name,
            "role": t.role,
            "created_at": t.created_at,
            "expires_at": t.expires_at,
            "revoked_at": t.revoked_at,
            "last_used_at": t.last_used_at,
            "state": _state(t, now),
        }
        for t in found
    ]
    rows = [
        (t.token_id, t.name, t.role, _state(t, now), when(t.created_at), when(t.expires_at),
         when(t.last_used_at))
        for t in found
    ]  # fmt: skip
    text = table(("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED"), rows)
    emit(args, {"tokens": docs}, text)


def _state(token: OperatorToken, now: int) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "live"


def _token_revoke(args: argparse.Namespace) -> None:
    from server.operators import revoke_token

    async def revoke(store: Store, now: int) -> OperatorToken:
        return await revoke_token(store, args.token, now)

    token = _with_store(args.db, revoke)
    doc = {"id": token.token_id, "name": token.name, "role": token.role, "revoked": True}
    emit(args, doc, f"revoked {token.token_id} ({token.name}, {token.role})")
