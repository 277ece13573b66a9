"""Fetching from the server or, when it fails, from mirrors: all of them untrusted.

python-tuf dropped mirror support from ngclient; failover belongs in a
``FetcherInterface``. URLs under the primary base are tried on each mirror base
in order. A definite answer (HTTP 4xx, e.g. the 404 that ends a root-version
probe) moves on to the next mirror at once; network failures and 5xx are
retried in rounds with jittered exponential backoff. Nothing here is trusted:
whatever any mirror serves is verified by ngclient afterwards, and ngclient
cuts off any response longer than the length it expects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence

import structlog
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

log = structlog.get_logger(__name__)


class MirrorFetcher(FetcherInterface):
    def __init__(
        self,
        bases: Sequence[str],
        inner: FetcherInterface,
        *,
        rounds: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bases:
            raise ValueError("at least one base URL is needed")
        self.bases = [b.rstrip("/") for b in bases]
        self.inner = inner
        self.rounds = rounds
        self.backoff_s = backoff_s
        self.sleep = sleep

    def _fetch(self, url: str) -> Iterator[bytes]:
        primary = self.bases[0]
        if not url.startswith(primary):
            return self.inner.fetch(url)
        tail = url[len(primary) :]
        last: DownloadError | None = None
        for attempt in range(self.rounds):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)  # noqa: S311
                log.warning(
                    "fetch_retrying", url=tail, attempt=attempt + 1, delay_s=round(delay, 2)
                )
                self.sleep(delay)
            definite = True
            for base in self.bases:
                try:
                    return self.inner.fetch(base + tail)
                except DownloadHTTPError as exc:
                    last = exc
                    definite = definite and 400 <= exc.status_code < 500
                except DownloadError as exc:
                    last = exc
                    definite = False
                if len(self.bases) > 1:
                    log.info("mirror_failed", base=base, url=tail, error=type(last).__name__)
            if definite:
                break  # every mirror answered, and the answer was no
        assert last is not None
        raise last
