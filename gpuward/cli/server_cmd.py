"""``gpuward server``: run the pull-only update server, and issue operator tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit

MAX_WORKERS = 64


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("server", help="the update server")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="serve the repository and the fleet API until SIGTERM")
    run.add_argument("--repo", type=Path, required=True, help="repository directory")
    run.add_argument(
        "--db",
        required=True,
        help="store: a SQLite file (path or sqlite:///path) or postgresql://user@host/db",
    )
    run.add_argument("--director", type=Path, help="director repository directory (optional)")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8470, help="port (default 8470)")
    run.add_argument(
        "--report-interval",
        type=int,
        default=300,
        metavar="S",
        help="how often nodes report, in seconds (default 300)",
    )
    run.add_argument(
        "--missing-after",
        type=int,
        default=3,
        metavar="N",
        help="a node silent for N report intervals is shown as missing (default 3)",
    )
    run.add_argument(
        "--unattested-enrollment-token-file",
        type=Path,
        metavar="FILE",
        help="no-TPM mode: enroll nodes presenting the token in FILE, shown as unattested",
    )
    run.add_argument(
        "--ek-ca",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="enable TPM enrollment: EK certificates must chain to the CA certificates in "
        "FILE (PEM, or a folder of them); repeatable",
    )
    run.add_argument(
        "--tpm-enrollment-token-file",
        type=Path,
        metavar="FILE",
        help="with --ek-ca: nodes must present the token in FILE to begin TPM enrollment "
        "(it admits the exchange; the TPM vouches for the node)",
    )
    run.add_argument(
        "--preauth-rate",
        type=float,
        default=2.0,
        metavar="R",
        help="enrollment requests per second admitted from one address, sustained (default 2)",
    )
    run.add_argument(
        "--preauth-burst",
        type=int,
        default=100,
        metavar="N",
        help="enrollment requests admitted from one address at once (default 100; raise "
        "it for a site enrolling behind one NAT or proxy address)",
    )
    run.add_argument(
        "--boot-policy",
        type=Path,
        metavar="FILE",
        help="measured-boot policy (from 'gpuward policy from-eventlog') judging every "
        "TPM node's boot, unless its pool has its own",
    )
    run.add_argument(
        "--pool-boot-policy",
        action="append",
        default=[],
        metavar="POOL=FILE",
        help="the measured-boot policy of one pool; repeatable",
    )
    run.add_argument(
        "--rollout-tick",
        type=float,
        default=15.0,
        metavar="S",
        help="advance rollouts every S seconds (default 15)",
    )
    run.add_argument(
        "--driver-pcr",
        type=int,
        metavar="N",
        help="the PCR the nodes' appliers measure the active driver bundle into: their "
        "[attestation] driver_pcr (default 15; never 0-10 or 14)",
    )
    run.add_argument(
        "--report-key",
        type=Path,
        metavar="FILE",
        help="Ed25519 key signing compliance reports (default REPO/keys/report.key, made if "
        "missing)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, about one core each (PostgreSQL "
        "only; default 1). If one dies, the server stops with a non-zero status, to be "
        "restarted whole (systemd: Restart=on-failure)",
    )
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


def _run(args: argparse.Namespace) -> None:
    from fleet.driverlog import DEFAULT_DRIVER_PCR, driver_pcr_problem
    from fleet.errors import GpuwardError
    from server.config import ServerConfig
    from server.runner import run_server

    if args.report_interval < 1 or args.missing_after < 1:
        raise GpuwardError("--report-interval and --missing-after must be at least 1")
    driver_pcr = DEFAULT_DRIVER_PCR if args.driver_pcr is None else args.driver_pcr
    problem = driver_pcr_problem(driver_pcr)
    if problem is not None:
        raise GpuwardError(f"--driver-pcr {driver_pcr}: {problem}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise GpuwardError(f"--workers must be between 1 and {MAX_WORKERS}")
    pool_policies = []
    for item in args.pool_boot_policy:
        pool, sep, path = item.partition("=")
        if not sep or not pool or not path:
            raise GpuwardError(f"--pool-boot-policy {item!r}: write POOL=FILE")
        pool_policies.append((pool, Path(path)))
    run_server(
        ServerConfig(
            repo=args.repo,
            director=args.director,
            db=args.db,
            host=args.host,
            port=args.port,
            report_interval_s=args.report_interval,
            missing_after=args.missing_after,
            rollout_tick_s=args.rollout_tick,
            unattested_enrollment_token=_read_token(args.unattested_enrollment_token_file),
            ek_ca=tuple(args.ek_ca),
            tpm_enrollment_token=_read_token(args.tpm_enrollment_token_file),
            preauth_rate_per_s=args.preauth_rate,
            preauth_burst=args.preauth_burst,
            boot_policy=args.boot_policy,
            pool_boot_policies=tuple(pool_policies),
            report_key=args.report_key,
            driver_pcr=driver_pcr,
            workers=args.workers,
        )
    )


def _read_token(path: Path | None) -> str | None:
    from fleet.errors import GpuwardError

    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise GpuwardError(f"cannot read token file {path}: {exc.strerror}") from None


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
