"""Re-signing that never stops, and that operators can see.

A renewal pass can fail for reasons no code foresees: a key file replaced by
something else, a folder the service may not write, a full disk. Timestamps
lapse within a day, so a failure must neither end re-signing nor pass unseen.
Every failure is logged at error level with the role and the reason, the pass
is tried again sooner than the normal interval (backing off, up to a bound),
and the outcome is kept in the store, so that every replica and worker answers
``GET /v1/server/status`` and shows the dashboard's banner for every re-signer
(one per host and repository), not only the process that signs.

A re-signer that stops on purpose removes its record; one that stopped without
doing so (a crash, a host gone) is shown as overdue once an interval and ten
minutes have passed beyond its next try.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from fleet.errors import InvalidDocument
from fleet.schema import Reader
from server.config import ServerConfig
from server.every import every
from server.resigner import Expiry, OnlineSigner, Pass, Problem, reason
from server.store import Store
from server.tlog import TransparencyLog

log = structlog.get_logger(__name__)

OK = "ok"
FAILED = "failed"
# How long past its next try, beyond an interval, a re-signer may stay silent.
OVERDUE_AFTER_S = 600


@dataclass(frozen=True)
class RenewalStatus:
    """One re-signer's last pass, as kept in the store and shown to operators."""

    host: str
    repo: str
    outcome: str  # OK or FAILED
    at: int  # when the pass ended (server clock, Unix seconds)
    last_ok_at: int | None  # when a pass last succeeded, by this process
    failures: int  # failed passes in a row
    problems: tuple[Problem, ...]
    next_try_at: int
    nearest_expiry: Expiry | None  # the served metadata that lapses first
    # The soonest of each role ("image:root", "director:timestamp"), for the metrics;
    # empty in a record kept by an older version.
    expiries: tuple[Expiry, ...] = ()

    @property
    def signer(self) -> str:
        return signer_id(self.host, self.repo)

    def overdue(self, now: float, interval_s: float) -> bool:
        """Silent well past its next try (a pass over a large fleet takes a while):
        it stopped re-signing."""
        return now > self.next_try_at + interval_s + OVERDUE_AFTER_S

    def to_dict(self) -> dict[str, Any]:
        expiry = self.nearest_expiry
        return {
            "host": self.host,
            "repo": self.repo,
            "outcome": self.outcome,
            "at": self.at,
            "last_ok_at": self.last_ok_at,
            "failures": self.failures,
            "problems": [{"role": p.role, "reason": p.reason} for p in self.problems],
            "next_try_at": self.next_try_at,
            "nearest_expiry": None if expiry is None else _expiry_dict(expiry),
            "expiries": [_expiry_dict(e) for e in self.expiries],
        }

    @classmethod
    def from_dict(cls, doc: object) -> RenewalStatus:
        where = "renewal status"
        r = Reader(doc, where, allowed=frozenset(f.name for f in dataclasses.fields(cls)))
        assert isinstance(doc, Mapping)
        problems = []
        for index, item in enumerate(r.items("problems", max_items=100_000)):
            p = Reader(item, r.item_where("problems", index), allowed=frozenset({"role", "reason"}))
            problems.append(Problem(p.text("role"), p.text("reason")))
        expiry = None
        if doc.get("nearest_expiry") is not None:
            expiry = _expiry(doc["nearest_expiry"], f"{where}.nearest_expiry")
        expiries = tuple(
            _expiry(item, r.item_where("expiries", index))
            for index, item in enumerate(r.items("expiries", max_items=1000, default=[]))
        )
        return cls(
            host=r.text("host"),
            repo=r.text("repo"),
            outcome=r.text("outcome", choices=frozenset({OK, FAILED})),
            at=r.integer("at"),
            last_ok_at=r.optional_integer("last_ok_at"),
            failures=r.integer("failures"),
            problems=tuple(problems),
            next_try_at=r.integer("next_try_at"),
            nearest_expiry=expiry,
            expiries=expiries,
        )


_EXPIRY_FIELDS = frozenset({"role", "expires_at"})


def _expiry_dict(expiry: Expiry) -> dict[str, Any]:
    return {"role": expiry.role, "expires_at": int(expiry.expires.timestamp())}


def _expiry(doc: object, where: str) -> Expiry:
    e = Reader(doc, where, allowed=_EXPIRY_FIELDS)
    return Expiry(datetime.fromtimestamp(e.integer("expires_at"), UTC), e.text("role"))


def signer_id(host: str, repo: str) -> str:
    """A re-signer's key in the store: one per host and repository it signs."""
    return f"{host}:{repo}"


async def statuses(store: Store) -> list[RenewalStatus]:
    """Every re-signer's last pass; a record that cannot be read is left out, logged."""
    found = []
    for text in await store.renewals():
        try:
            found.append(RenewalStatus.from_dict(json.loads(text)))
        except (ValueError, InvalidDocument) as exc:
            log.error("renewal_status_unreadable", reason=str(exc))
    return found


def status_json(found: list[RenewalStatus], now: float, config: ServerConfig) -> dict[str, Any]:
    """``GET /v1/server/status``: failing when any re-signer failed its last pass or
    went quiet; unknown before any kept one."""
    signers = [
        {**status.to_dict(), "overdue": status.overdue(now, config.resign_interval_s)}
        for status in found
    ]
    failing = any(doc["outcome"] == FAILED or doc["overdue"] for doc in signers)
    state = "unknown" if not signers else "failing" if failing else OK
    return {"renewal": {"state": state, "signers": signers}}


def next_delay(failures: int, config: ServerConfig) -> float:
    """The wait before the next pass: the interval, or after ``failures`` failed
    passes in a row a retry, twice as long each time, never beyond the bound."""
    if failures == 0:
        return config.resign_interval_s
    first, bound = config.resign_retry_s
    return float(min(bound, first * 2 ** min(failures - 1, 32)))


def log_problems(done: Pass, **context: object) -> None:
    for problem in done.problems:
        log.error("metadata_renewal_failed", role=problem.role, reason=problem.reason, **context)


class Renewer:
    """Runs the online signer's passes on schedule and keeps each outcome."""

    def __init__(
        self,
        signer: OnlineSigner,
        store: Store,
        config: ServerConfig,
        clock: Callable[[], float],
        tlog: TransparencyLog,
    ) -> None:
        self._signer = signer
        self._tlog = tlog
        self._store = store
        self._config = config
        self._clock = clock
        self._host = socket.gethostname()
        self._repo = str(config.repo.resolve())
        self._passes = asyncio.Condition()
        self.status: RenewalStatus | None = None

    async def run_pass(self) -> RenewalStatus:
        """One pass (in a thread: it reads and signs files), logged and kept."""
        done = await asyncio.to_thread(self._signer.run_once)
        # What the pass signed, and whatever the operator published since the last.
        await self._tlog.record_repository(self._signer.image, int(self._clock()))
        before = self.status
        failures = (before.failures if before else 0) + 1 if done.problems else 0
        delay = next_delay(failures, self._config)
        now = int(self._clock())
        last_ok = now if not done.problems else (before.last_ok_at if before else None)
        status = RenewalStatus(
            self._host,
            self._repo,
            FAILED if done.problems else OK,
            now,
            last_ok,
            failures,
            done.problems,
            now + math.ceil(delay),
            done.nearest_expiry,
            done.expiries,
        )
        log_problems(done, failures=failures, retry_in_s=delay)
        if not done.problems and before is not None and before.failures:
            log.info("metadata_renewal_recovered", after_failures=before.failures)
        try:
            await self._store.keep_renewal(status.signer, json.dumps(status.to_dict()))
        except Exception as exc:  # the store's trouble must not stop re-signing either
            log.error("renewal_status_not_kept", reason=reason(exc))
        async with self._passes:
            self.status = status
            self._passes.notify_all()
        return status

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until ``stop``, each after the wait the last one chose; then the
        record goes, since this re-signer no longer renews anything."""

        def delay() -> float:
            return next_delay(self.status.failures if self.status else 0, self._config)

        # The server ran the first pass before announcing readiness: wait first.
        await every(delay, stop, self.run_pass, "renewal_pass_failed", wait_first=True)
        try:
            await self._store.forget_renewal(signer_id(self._host, self._repo))
        except Exception as exc:  # shown as overdue later: the record says when it stopped
            log.error("renewal_status_not_removed", reason=reason(exc))

    async def next_pass(self) -> RenewalStatus:
        """The status of the next pass to end from now."""
        async with self._passes:
            current = self.status
            await self._passes.wait_for(lambda: self.status is not current)
            assert self.status is not None
            return self.status
