"""Running the server: in the foreground until SIGTERM, or in a background thread.

The background form serves tests and the demo: the real app on a free loopback
port, started and stopped deterministically (``start`` returns once the socket
listens; ``stop`` returns once it is closed), so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog
from aiohttp import web

from fleet.errors import GpuwardError
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from server.app import create_app
from server.resigner import OnlineSigner
from server.store import Store

log = structlog.get_logger(__name__)


async def serve(
    repo: Path,
    db: Path,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready: Callable[[int], None] = lambda _port: None,
    director: Path | None = None,
) -> None:
    if not (repo / "metadata" / "root.json").is_file():
        raise GpuwardError(f"{repo} is not a repository; create one with 'gpuward keys init'")
    store = Store(db)
    runner = web.AppRunner(create_app(repo, store, director), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise GpuwardError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = int(runner.addresses[0][1])
        log.info("server_listening", host=host, port=bound, repo=str(repo), db=str(db))
        signer = OnlineSigner(
            ImageRepository(repo), DirectorRepository(director) if director else None
        )
        await _renew(signer)  # before announcing readiness: never serve lapsed metadata
        ready(bound)
        resigning = asyncio.create_task(_resign_forever(signer, stop))
        await stop.wait()
        await resigning
    finally:
        await runner.cleanup()
        store.close()
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


def run_server(repo: Path, db: Path, host: str, port: int, director: Path | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(repo, db, host, port, stop, director=director)

    asyncio.run(main())


class BackgroundServer:
    """``with BackgroundServer(repo, db) as server: ... server.url ...``"""

    def __init__(
        self, repo: Path, db: Path, host: str = "127.0.0.1", director: Path | None = None
    ) -> None:
        self._args = (repo, db, host)
        self._director = director
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuward-server", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._args[2]}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(*self._args, 0, self._stop, ready=self._on_ready, director=self._director)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _on_ready(self, port: int) -> None:
        self.port = port
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

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
