"""Running the server: in the foreground until SIGTERM, or in a background thread.

The background form serves tests and the demo: the real app on a free loopback
port, started and stopped deterministically (``start`` returns once the socket
listens; ``stop`` returns once it is closed), so nothing is left running.
Tests reach into it only through ``call``, which runs a coroutine on the
server's own loop with its services (issuing a token, advancing rollouts now).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import structlog
from aiohttp import web

from fleet.attestation import PcrSelection
from fleet.errors import GpuwardError
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from keys.report_key import default_path, load_or_create
from server.app import create_app
from server.attestation.challenges import Challenges
from server.attestation.enrollment import EkTrust
from server.config import ServerConfig
from server.http import Services
from server.limits import RateLimiter
from server.nodeauth import (
    TOKEN_EVIDENCE,
    ByEvidence,
    EnrollmentVerifier,
    NoEnrollment,
    RequestVerifier,
    UnattestedTokenVerifier,
)
from server.operators import issue_token
from server.report_attestation import BootPolicies, ReportAttestation
from server.resigner import OnlineSigner
from server.rollout.engine import RolloutEngine
from server.store import Store, open_store
from server.tpm_enrollment import EVIDENCE_TYPE as TPM_EVIDENCE
from server.tpm_enrollment import TpmEnrollment

log = structlog.get_logger(__name__)
T = TypeVar("T")
Clock = Callable[[], float]


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
        TpmEnrollment(trust, challenges, required, clock),
        ReportAttestation(challenges, required, store, policies, config.driver_pcr),
    )


def _verifier(
    config: ServerConfig, injected: EnrollmentVerifier | None, tpm: TpmEnrollment | None
) -> EnrollmentVerifier:
    if injected is not None:
        return injected
    verifiers: dict[str, EnrollmentVerifier] = {}
    if tpm is not None:
        verifiers[TPM_EVIDENCE] = tpm
    if config.unattested_enrollment_token is not None:
        log.warning("unattested_enrollment_enabled", mode="no-TPM enrollment token")
        verifiers[TOKEN_EVIDENCE] = UnattestedTokenVerifier(config.unattested_enrollment_token)
    if not verifiers:
        return NoEnrollment()
    # One mode alone answers wrong evidence with its own, more specific message.
    return ByEvidence(verifiers) if len(verifiers) > 1 else next(iter(verifiers.values()))


async def serve(
    config: ServerConfig,
    stop: asyncio.Event,
    ready: Callable[[int, Services], None] = lambda _port, _svc: None,
    verifier: EnrollmentVerifier | None = None,
    clock: Clock = time.time,
) -> None:
    if not (config.repo / "metadata" / "root.json").is_file():
        raise GpuwardError(
            f"{config.repo} is not a repository; create one with 'gpuward keys init'"
        )
    store = await open_store(config.db)
    try:
        attestation = _tpm(config, store, clock)
    except BaseException:
        await store.close()
        raise
    tpm, reports = (None, None) if attestation is None else attestation
    svc = Services(
        config=config,
        store=store,
        verifier=_verifier(config, verifier, tpm),
        clock=clock,
        requests=RequestVerifier(store, clock),
        limiter=RateLimiter(config.node_rate_per_s, config.node_burst, clock),
        preauth_limiter=RateLimiter(config.preauth_rate_per_s, config.preauth_burst, clock),
        engine=RolloutEngine(
            store,
            config.repo,
            clock,
            DirectorRepository(config.director) if config.director else None,
        ),
        report_signer=load_or_create(config.report_key or default_path(config.repo)),
        tpm=tpm,
        reports=reports,
    )
    runner = web.AppRunner(create_app(svc), access_log=None)
    ticker: asyncio.Task[None] | None = None
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            raise GpuwardError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        bound = int(runner.addresses[0][1])
        if config.rollout_tick_s > 0:
            ticker = asyncio.create_task(svc.engine.run(stop, config.rollout_tick_s))
        log.info("server_listening", host=config.host, port=bound, repo=str(config.repo))
        signer = OnlineSigner(
            ImageRepository(config.repo),
            DirectorRepository(config.director) if config.director else None,
        )
        await _renew(signer)  # before announcing readiness: never serve lapsed metadata
        ready(bound, svc)
        resigning = asyncio.create_task(_resign_forever(signer, stop))
        await stop.wait()
        await resigning
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await runner.cleanup()
        await store.close()
        log.info("server_stopped")


RESIGN_INTERVAL_S = 300.0


async def _renew(signer: OnlineSigner) -> None:
    try:
        await asyncio.to_thread(signer.run_once)
    except GpuwardError as exc:
        log.error("metadata_renewal_failed", reason=str(exc))


async def _resign_forever(signer: OnlineSigner, stop: asyncio.Event) -> None:
    """Renew online metadata every few minutes until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESIGN_INTERVAL_S)
        if not stop.is_set():
            await _renew(signer)


def run_server(config: ServerConfig) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    import uvloop  # the server's only: agents never load it

    # libuv's event loop: less of each request is spent in the loop and sockets.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


class BackgroundServer:
    """``with BackgroundServer(config) as server: ... server.url ...``"""

    def __init__(
        self,
        config: ServerConfig,
        verifier: EnrollmentVerifier | None = None,
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
        return f"http://{self.config.host}:{self.port}"

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

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
