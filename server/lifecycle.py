"""Running the server: in the foreground until SIGTERM, or in a background thread.

In the foreground it is one process, or (``workers`` > 1, PostgreSQL only) a
supervisor and N worker processes sharing the port through SO_REUSEPORT: one
process verifies about one core's worth of reports, and every worker is a full
replica of the others, as replicas on several hosts are. The supervisor checks
the settings, migrates the store and renews metadata once before the workers
start; worker 0 alone runs the background duties (rollout ticks, re-signing),
so no two processes sign the same metadata at once. A worker that dies takes
the service down with a non-zero status, for systemd's ``Restart=on-failure``
to start it whole again, rather than running on with less capacity unnoticed.

The background form serves tests and the demo: the real app on a free loopback
port, started and stopped deterministically (``start`` returns once the socket
listens; ``stop`` returns once it is closed), so nothing is left running.
Tests reach into it only through ``call``, which runs a coroutine on the
server's own loop with its services (issuing a token, advancing rollouts now).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, TypeVar

import structlog
from aiohttp import web

from fleet.attestation import PcrSelection
from fleet.errors import GpuwardError
from keys import tlog_key
from keys.director_repo import DirectorRepository
from keys.hsm import read_pin_file, select_module
from keys.image_repo import ImageRepository
from keys.keyring import Keyring
from keys.report_key import (
    ReportSigner,
    default_path,
    load_from_token,
    load_or_create,
    public_path,
)
from server import metrics_api, report_runs, retention
from server.app import create_app
from server.attestation.challenges import Challenges
from server.attestation.enrollment import EkTrust
from server.attribution import fleet_attribution
from server.config import ServerConfig
from server.connections import ConnectionGuard, ConnectionLimits
from server.gpu_attestation.verifier import GpuEvidenceVerifier
from server.http import Services
from server.limits import RateLimiter
from server.nodeauth import (
    TOKEN_EVIDENCE,
    ByEvidence,
    KeyEnrollmentVerifier,
    NoEnrollment,
    RequestVerifier,
    UnattestedTokenVerifier,
)
from server.operators import issue_token
from server.remediation.engine import RemediationEngine
from server.renewal import Renewer, log_problems
from server.report_attestation import BootPolicies, ReportAttestation
from server.resigner import OnlineSigner
from server.rollout.engine import RolloutEngine
from server.store import Store, open_store
from server.stragglers import straggler_reasons
from server.tlog import TransparencyLog
from server.tpm_enrollment import EVIDENCE_TYPE as TPM_EVIDENCE
from server.tpm_enrollment import TpmEnrollment
from server.webhooks import WebhookService

log = structlog.get_logger(__name__)
T = TypeVar("T")
Clock = Callable[[], float]
# The response header naming the worker process that answered (workers > 1).
WORKER_HEADER = "Gpuward-Worker"
# How long workers get to finish their requests after SIGTERM before SIGKILL.
STOP_GRACE_S = 30.0
# An idle keep-alive connection is closed after this (aiohttp's default is 75 s).
KEEPALIVE_S = 15.0
# Pending connections the kernel queues: a burst of nodes connecting at once is
# queued rather than refused.
LISTEN_BACKLOG = 1024


def _tpm(
    config: ServerConfig, store: Store, clock: Clock
) -> tuple[TpmEnrollment, ReportAttestation] | None:
    if not config.ek_ca:
        return None
    if config.tpm_enrollment_token is None:
        raise GpuwardError(
            "TPM enrollment (--ek-ca) needs an enrollment token: give "
            "--tpm-enrollment-token-file, and the same token to the nodes"
        )
    trust = EkTrust.load(config.ek_ca)
    policies = BootPolicies.load(config.boot_policy, config.pool_boot_policies)
    log.info(
        "tpm_enrollment_enabled",
        ek_roots=len(trust.roots),
        default_policy=policies.default is not None,
        pool_policies=sorted(policies.pools),
    )
    # In the store: a challenge issued by one replica is redeemed at another.
    challenges = Challenges(
        store,
        ttl_s=config.challenge_ttl_s,
        max_pending=config.max_pending_challenges,
        clock=clock,
    )
    required = PcrSelection.parse(config.required_pcrs)
    return (
        TpmEnrollment(trust, challenges, required, clock, config.ek_type),
        ReportAttestation(
            challenges,
            required,
            store,
            policies,
            config.driver_pcr,
            next_ttl_s=config.next_challenge_ttl_s,
            gpus=GpuEvidenceVerifier.load(
                config.gpu_rims,
                config.gpu_device_root,
                config.gpu_rim_root,
                waive_revocation=config.gpu_revocation == "waived",
                repo=config.repo,
            ),
            clock=clock,
        ),
    )


def _verifier(
    config: ServerConfig, injected: KeyEnrollmentVerifier | None, tpm: TpmEnrollment | None
) -> KeyEnrollmentVerifier:
    if injected is not None:
        return injected
    verifiers: dict[str, KeyEnrollmentVerifier] = {}
    if tpm is not None:
        verifiers[TPM_EVIDENCE] = tpm
    if config.unattested_enrollment_token is not None:
        log.warning("unattested_enrollment_enabled", mode="no-TPM enrollment token")
        verifiers[TOKEN_EVIDENCE] = UnattestedTokenVerifier(config.unattested_enrollment_token)
    if not verifiers:
        return NoEnrollment()
    # One mode alone answers wrong evidence with its own, more specific message.
    return ByEvidence(verifiers) if len(verifiers) > 1 else next(iter(verifiers.values()))


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """HTTPS on the port, when the config names a certificate: Python's server-side
    defaults (no client certificates asked), TLS 1.2 at least. Nodes verify it
    against the CA file they are given (their agent.toml's server_ca)."""
    cert, key = config.tls_cert, config.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise GpuwardError(
            "TLS needs both a certificate and its key: give --tls-cert and --tls-key "
            "(tls_cert and tls_key in server.toml)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise GpuwardError(
            f"TLS certificate {cert} and key {key} do not load ({exc.reason or exc}): give the "
            "PEM certificate (then any intermediates) and its matching private key"
        ) from None
    except OSError as exc:
        raise GpuwardError(
            f"cannot read TLS certificate {cert} or key {key}: {exc.strerror or exc}"
        ) from None
    return context


def _check_repo(config: ServerConfig) -> None:
    if not (config.repo / "metadata" / "root.json").is_file():
        raise GpuwardError(
            f"{config.repo} is not a repository; create one with 'gpuward keys init'"
        )


async def serve(
    config: ServerConfig,
    stop: asyncio.Event,
    ready: Callable[[int, Services], None] = lambda _port, _svc: None,
    verifier: KeyEnrollmentVerifier | None = None,
    clock: Clock = time.time,
    worker: int | None = None,
) -> None:
    """Serve until ``stop``; ``worker``: this process's number among several sharing
    the port, of which only worker 0 runs the background duties."""
    _check_repo(config)
    tls = tls_context(config)
    report_signer = _report_signer(config)  # a token's wrong PIN stops the start here
    store = await open_store(config.db, config.retention)
    tlog = TransparencyLog(
        store,
        tlog_key.load_or_create(tlog_key.default_path(config.repo)),
        notify=bool(config.webhooks),
    )
    try:
        attestation = _tpm(config, store, clock)
    except BaseException:
        await store.close()
        raise
    tpm, reports = (None, None) if attestation is None else attestation
    duties = worker in (None, 0)
    limiter = RateLimiter(config.node_rate_per_s, config.node_burst, clock)
    svc = Services(
        config=config,
        store=store,
        verifier=_verifier(config, verifier, tpm),
        clock=clock,
        requests=RequestVerifier(store, clock, limiter),
        limiter=limiter,
        preauth_limiter=RateLimiter(config.preauth_rate_per_s, config.preauth_burst, clock),
        engine=RolloutEngine(
            store,
            config.repo,
            clock,
            DirectorRepository(config.director) if config.director else None,
            notify=bool(config.webhooks),
            attribution=functools.partial(
                fleet_attribution,
                store,
                clock,
                config.report_interval_s * config.missing_after,
            ),
        ),
        report_signer=report_signer,
        tlog=tlog,
        tpm=tpm,
        reports=reports,
        renewer=Renewer(_signer(config), store, config, clock, tlog) if duties else None,
        webhooks=WebhookService(store, config, clock) if duties and config.webhooks else None,
    )
    if config.remediation is not None:
        svc.remediation = RemediationEngine(
            store,
            config.remediation,
            clock,
            config.report_interval_s * config.missing_after,
            notify=bool(config.webhooks),
            stragglers=functools.partial(straggler_reasons, svc),
        )
    app = create_app(svc)
    if worker is not None:
        app.on_response_prepare.append(_worker_header(worker))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_S)
    listener: asyncio.Server | None = None
    metrics: web.AppRunner | None = None
    ticker: asyncio.Task[None] | None = None
    sweeping: asyncio.Task[None] | None = None
    resigning: asyncio.Task[None] | None = None
    notifying: asyncio.Task[None] | None = None
    remediating: asyncio.Task[None] | None = None
    reporting: asyncio.Task[None] | None = None
    await runner.setup()
    try:
        listener = await _listen(config, runner, tls, reuse_port=worker is not None)
        bound = int(listener.sockets[0].getsockname()[1])
        if duties:
            metrics = await _serve_metrics(config, svc)
        if duties and config.rollout_tick_s > 0:
            ticker = asyncio.create_task(svc.engine.run(stop, config.rollout_tick_s))
        if duties:
            sweeping = asyncio.create_task(retention.run(store, clock, stop))
        remediation = svc.remediation
        if duties and remediation is not None and remediation.tick_s > 0:
            remediating = asyncio.create_task(remediation.run(stop))
        if duties and config.report_schedule != "off":
            reporting = asyncio.create_task(report_runs.run_schedule(svc, stop))
        if svc.webhooks is not None and config.webhook_poll_s > 0:
            notifying = asyncio.create_task(svc.webhooks.run(stop))
        log.info(
            "server_listening",
            host=config.host,
            port=bound,
            repo=str(config.repo),
            tls=tls is not None,
        )
        if svc.renewer is not None:
            _warn_of_offline_keys(config)
            await svc.renewer.run_pass()  # before announcing readiness: never serve lapsed metadata
            resigning = asyncio.create_task(svc.renewer.run(stop))
        ready(bound, svc)
        await stop.wait()
        if resigning is not None:
            await resigning
        if sweeping is not None:
            await sweeping
        if notifying is not None:
            await notifying
        if remediating is not None:
            await remediating
        if reporting is not None:
            await reporting
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if listener is not None:
            listener.close()
        if metrics is not None:
            await metrics.cleanup()
        await runner.cleanup()
        if svc.webhooks is not None:
            await svc.webhooks.close()
        await store.close()
        log.info("server_stopped")


async def _listen(
    config: ServerConfig, runner: web.AppRunner, tls: ssl.SSLContext | None, reuse_port: bool
) -> asyncio.Server:
    """The listening socket, each connection passing ``server.connections``' limits
    before aiohttp's handler sees it; with ``tls``, once its handshake is done, which
    gets as long as the request headers do."""
    assert runner.server is not None  # set up
    limits = ConnectionLimits.within_fds(
        config.header_timeout_s, config.max_connections_per_address
    )
    try:
        return await asyncio.get_running_loop().create_server(
            ConnectionGuard(runner.server, limits),
            config.host,
            config.port,
            reuse_port=reuse_port,
            backlog=LISTEN_BACKLOG,
            ssl=tls,
            ssl_handshake_timeout=None if tls is None else config.header_timeout_s,
        )
    except OSError as exc:
        raise GpuwardError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None


async def _serve_metrics(config: ServerConfig, svc: Services) -> web.AppRunner | None:
    """The ``metrics_listen`` address, if set: GET /metrics alone, without a token
    (``server.metrics_api``); with several workers, worker 0's."""
    address = config.metrics_address
    if address is None:
        return None
    runner = web.AppRunner(
        create_app(svc, metrics_api.LISTENER_ROUTES), access_log=None, keepalive_timeout=KEEPALIVE_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, *address, backlog=LISTEN_BACKLOG).start()
    except OSError as exc:
        await runner.cleanup()
        raise GpuwardError(
            f"cannot listen on {config.metrics_listen} (metrics_listen): {exc.strerror}"
        ) from None
    svc.metrics_port = int(runner.addresses[0][1])
    log.info("metrics_listening", host=address[0], port=svc.metrics_port)
    return runner


def _worker_header(
    worker: int,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def name_worker(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = str(worker)

    return name_worker


def _report_signer(config: ServerConfig) -> ReportSigner:
    """The report key: in a PKCS#11 token if the config names one, else a file."""
    if config.report_key_uri is None:
        return load_or_create(config.report_key or default_path(config.repo))
    if config.report_key is not None:
        raise GpuwardError("give report_key (a file) or report_key_uri (a token), not both")
    pin_file = config.report_key_pin_file
    if pin_file is None:
        raise GpuwardError(
            "report_key_uri needs report_key_pin_file: the file holding the token's user PIN"
        )
    select_module(config.report_key_module)
    signer = load_from_token(
        config.report_key_uri,
        functools.cache(lambda: read_pin_file(pin_file)),
        public_path(default_path(config.repo)),
    )
    log.info("report_key_in_token", uri=config.report_key_uri, key_id=signer.key_id)
    return signer


def _signer(config: ServerConfig) -> OnlineSigner:
    return OnlineSigner(
        ImageRepository(config.repo),
        DirectorRepository(config.director) if config.director else None,
    )


def _warn_of_offline_keys(config: ServerConfig) -> None:
    """Offline keys belong with the operator: a server holding them lets whoever
    takes the server sign anything (only a passphrase stands in the way)."""
    for repo in filter(None, (config.repo, config.director)):
        sealed = Keyring(repo / "keys").sealed_keys()
        if sealed:
            log.warning(
                "offline_keys_on_server",
                repo=str(repo),
                keys=sealed,
                action="keep only the server's part here: 'gpuward repo export-server' "
                "writes it; move these keys to the offline workstation",
            )


def run_server(config: ServerConfig) -> None:
    """Serve in the foreground until SIGTERM or SIGINT, in ``config.workers`` processes."""
    if config.workers > 1:
        _supervise(config)
        return

    async def main() -> None:
        await serve(config, _stop_on_signals())

    _run_uvloop(main())


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _run_uvloop(main: Coroutine[Any, Any, None]) -> None:
    import uvloop  # the server's only: agents never load it

    # libuv's event loop: less of each request is spent in the loop and sockets.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _supervise(config: ServerConfig) -> None:
    if not config.db.startswith(("postgresql://", "postgres://")):
        raise GpuwardError(
            "--workers needs a PostgreSQL store (--db postgresql://...): the SQLite store "
            "keeps caches that are valid in one process only; run one worker on SQLite"
        )
    _check_repo(config)
    asyncio.run(_preflight(config))
    config = replace(config, port=_free_port(config))
    # Before any worker serves: never serve lapsed metadata. Worker 0 retries failures.
    log_problems(_signer(config).run_once())
    # Only the supervisor keeps the write end: the workers see EOF once it is gone.
    parent_alive, parent_alive_w = os.pipe()
    # fork: the workers start from this checked state, without re-importing anything.
    context = multiprocessing.get_context("fork")
    processes, readiness = [], []
    for index in range(config.workers):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker,
            args=(config, index, send, parent_alive, parent_alive_w),
            name=f"gpuward-worker-{index}",
        )
        process.start()
        send.close()
        processes.append(process)
        readiness.append(receive)
    os.close(parent_alive)
    try:
        failed = _watch(processes, readiness, config.port)
    finally:
        _stop(processes)
        os.close(parent_alive_w)
    if failed is not None:
        raise GpuwardError(
            f"{failed.name} exited with status {failed.exitcode}; its log above says why. "
            "The whole server stopped so that it restarts whole"
        )
    log.info("server_stopped", workers=config.workers)


def _watch(
    processes: Sequence[BaseProcess], readiness: Sequence[Connection], port: int
) -> BaseProcess | None:
    """Wait for SIGTERM or SIGINT (None) or a worker's exit (that worker)."""
    wakeup, wakeup_w = socket.socketpair()
    wakeup_w.setblocking(False)
    signal.set_wakeup_fd(wakeup_w.fileno())
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    sentinels = {p.sentinel: p for p in processes}
    waiting: set[Connection | socket.socket | int] = {*readiness, *sentinels, wakeup}
    failed, listening = None, 0
    while failed is None and not stopping:
        for ready in wait(list(waiting)):
            if ready is wakeup:
                wakeup.recv(512)
            elif isinstance(ready, int):
                failed = sentinels[ready]
            elif isinstance(ready, Connection):
                waiting.discard(ready)
                with contextlib.suppress(EOFError):  # EOF: it died; its sentinel says so
                    listening += int(ready.recv())
                    if listening == len(processes):
                        log.info("workers_ready", workers=len(processes), port=port)
    # Workers that stopped on the same SIGINT (a terminal's) did not fail.
    return None if stopping else failed


def _stop(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: each finishes its requests and closes the store
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker_killed", worker=process.name, after_s=STOP_GRACE_S)
            process.kill()
            process.join()


async def _preflight(config: ServerConfig) -> None:
    """What every worker would fail on, said once: the store (migrated here, once)
    and the attestation and TLS settings."""
    tls_context(config)
    store = await open_store(config.db)
    try:
        _tpm(config, store, time.time)
    finally:
        await store.close()


def _free_port(config: ServerConfig) -> int:
    """The port the workers share: ``config.port``, or a free one for port 0. Bound
    here without SO_REUSEPORT, so a server already on the port is refused rather than
    joined (it would take a share of the connections)."""
    family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            raise GpuwardError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        return int(probe.getsockname()[1])


def _worker(
    config: ServerConfig, index: int, ready: Connection, parent_alive: int, parent_alive_w: int
) -> None:
    """One worker process: serve until SIGTERM, or until the supervisor is gone."""
    os.close(parent_alive_w)
    structlog.contextvars.bind_contextvars(worker=index)

    async def main() -> None:
        stop = _stop_on_signals()
        asyncio.get_running_loop().add_reader(parent_alive, stop.set)
        await serve(config, stop, lambda _port, _svc: ready.send(1), worker=index)

    try:
        _run_uvloop(main())
    except GpuwardError as exc:
        log.error("worker_failed", reason=str(exc))
        raise SystemExit(1) from None


class BackgroundServer:
    """``with BackgroundServer(config) as server: ... server.url ...``"""

    def __init__(
        self,
        config: ServerConfig,
        verifier: KeyEnrollmentVerifier | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self._verifier = verifier
        self._clock = clock
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._services: Services | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuward-server", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "http" if self.config.tls_cert is None else "https"
        return f"{scheme}://{self.config.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """GET /metrics on the ``metrics_listen`` address (set in the config)."""
        address = self.config.metrics_address
        if address is None or self._services is None or self._services.metrics_port is None:
            raise GpuwardError("the server serves no metrics address: set metrics_listen")
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"http://{host}:{self._services.metrics_port}/metrics"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(
                self.config, self._stop, self._on_ready, verifier=self._verifier, clock=self._clock
            )

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _on_ready(self, port: int, svc: Services) -> None:
        self.port = port
        self._services = svc
        self._ready.set()

    def start(self) -> BackgroundServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def call(self, fn: Callable[[Services], Awaitable[T]], timeout: float = 60) -> T:
        """Run ``fn(services)`` on the server's loop and return its result."""
        if self._loop is None or self._services is None:
            raise GpuwardError("the server is not running")
        svc = self._services

        async def run() -> T:
            return await fn(svc)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def issue_token(self, role: str, name: str = "test") -> str:
        return self.call(lambda svc: issue_token(svc.store, role, name, int(svc.clock())))

    def tick_rollouts(self) -> None:
        self.call(lambda svc: svc.engine.tick())

    def tick_remediation(self) -> None:
        def tick(svc: Services) -> Awaitable[None]:
            if svc.remediation is None:
                raise GpuwardError("the server has no [remediation] configured")
            return svc.remediation.tick()

        self.call(tick)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
