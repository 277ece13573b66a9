"""Signed webhooks: telling operators' systems of what needs a person, reliably.

Events come from two places. The rollout engine's transitions carry notices (a
halt, a missed progress deadline), stored with the rollout's change in one
transaction. Conditions that hold for a while are watched here, every watch
interval: nodes missing (silent for ``missing_after`` report intervals, as the
fleet view says), nodes whose latest attested report failed, and metadata
within ``EXPIRING_WITHIN_S`` of lapsing (from the re-signers' kept status).
Each condition is kept open in the store while it holds, so it is told once
when it begins and once (``.resolved``) when it ends, across restarts and
replicas: of replicas seeing the same change, one records it.

The store is the outbox: an event is routed to each endpoint whose filter takes
its type, and every delivery is retried until the endpoint answers 2xx or its
attempts run out, with exponential backoff and jitter, surviving restarts.
Every attempt carries the event's id (the receiver's idempotency key) and a
fresh timestamp, signed with the endpoint's secrets
(``fleet.webhook_signature``, which receivers can copy). Time comes from the
injected clock, so tests move retries and deadlines without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from fleet.webhook import (
    METADATA_EXPIRING,
    NODE_ATTESTATION_FAILING,
    NODE_MISSING,
    RESOLVED,
    Notice,
    WebhookEvent,
    matches,
    new_event_id,
)
from fleet.webhook_signature import sign
from server.config import DAY_S, ServerConfig
from server.every import every
from server.renewal import statuses
from server.store import DELIVERED, FAILED, PENDING, Store, WebhookDelivery

log = structlog.get_logger(__name__)

# A timestamp is re-signed with 12 h of its day left; under 6 h, renewal has
# failed for hours, and nodes stop updating once it lapses.
EXPIRING_WITHIN_S = 6 * 3600
# Deliveries claimed and events routed per round.
BATCH = 100
# How long beyond an attempt's timeout a claimed delivery stays held.
HOLD_MARGIN_S = 30
# Events are kept this long (all their deliveries have ended well before).
EVENT_RETENTION_S = 30 * DAY_S
USER_AGENT = "gpuward-webhook/1"
# What a delivery's stored error keeps of the failure.
MAX_ERROR = 1024
# A failing attestation's reasons shown in its event; the node's page has them all.
MAX_REASONS = 10

# A condition holding now, per subject: its episode, and the event's details.
Found = dict[str, tuple[str, dict[str, Any]]]


def retry_delay(attempts: int, first_s: float, bound_s: float, jitter: float) -> float:
    """The wait after ``attempts`` failed attempts: ``first_s`` doubled each time up
    to ``bound_s``, of which the upper half is drawn by ``jitter`` (0 to 1), so
    senders that failed together do not retry together."""
    full = min(bound_s, first_s * 2.0 ** min(attempts - 1, 32))
    return full / 2 + full / 2 * jitter


class WebhookService:
    """Watches conditions, routes events and delivers them to the configured endpoints."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        clock: Callable[[], float],
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._jitter = jitter
        self._endpoints = {e.key: e for e in config.webhooks}
        self._hold_s = HOLD_MARGIN_S + math.ceil(max(e.timeout_s for e in config.webhooks))
        self._session: aiohttp.ClientSession | None = None

    def _route(self, event_type: str) -> list[str]:
        return [key for key, e in self._endpoints.items() if matches(e.events, event_type)]

    async def deliver_due(self) -> int:
        """Route new events, then make every attempt due now; how many were made."""
        now = int(self._clock())
        while await self._store.route_webhook_events(self._route, now, BATCH) == BATCH:
            pass
        due = await self._store.claim_webhook_deliveries(
            list(self._endpoints), now, now + self._hold_s, BATCH
        )
        await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        endpoint = self._endpoints[delivery.endpoint]
        headers = {
            **sign(endpoint.secrets, delivery.event_id, int(self._clock()), delivery.body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                endpoint.url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout_s),
                allow_redirects=False,  # a redirect would carry the signature elsewhere
            ) as response:
                error = "" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        attempts = delivery.attempts + 1
        now = int(self._clock())
        context = {"endpoint": endpoint.key, "event_id": delivery.event_id, "attempts": attempts}
        if not error:
            state, next_at = DELIVERED, now
            log.info("webhook_delivered", **context)
        elif attempts >= endpoint.max_attempts:
            state, next_at = FAILED, now
            log.error(
                "webhook_given_up",
                **context,
                error=error,
                action=f"make {endpoint.key} answer 2xx; later events are still sent",
            )
        else:
            first, bound = self._config.webhook_retry_s
            delay = retry_delay(attempts, first, bound, self._jitter())
            state, next_at = PENDING, now + math.ceil(delay)
            log.warning("webhook_delivery_failed", **context, error=error, retry_in_s=delay)
        await self._store.finish_webhook_attempt(delivery, state, next_at, error[:MAX_ERROR])

    async def watch(self) -> None:
        """Open and close the conditions watched, recording an event for each change."""
        now = int(self._clock())
        await self._reconcile(NODE_MISSING, await self._missing(now), now)
        await self._reconcile(NODE_ATTESTATION_FAILING, await self._failing(), now)
        await self._reconcile(METADATA_EXPIRING, await self._expiring(now), now)

    async def _missing(self, now: int) -> Found:
        after_s = self._config.report_interval_s * self._config.missing_after
        found: Found = {}
        for n in await self._store.silent_nodes(now - after_s):
            since = n.enrolled_at if n.last_seen is None else n.last_seen
            found[f"node/{n.node_id}"] = (
                str(since),  # silent again after a report: another episode
                {
                    "node": n.node_id,
                    "pool": n.pool,
                    "last_seen": n.last_seen,
                    "missing_since": since + after_s,
                    "missing_after_s": after_s,
                },
            )
        return found

    async def _failing(self) -> Found:
        return {
            f"node/{f.node_id}": (
                "failing",
                {
                    "node": f.node_id,
                    "pool": f.pool,
                    "received_at": f.received_at,
                    "policy": f.verdict.policy,
                    "reasons": [r[:MAX_ERROR] for r in f.verdict.reasons[:MAX_REASONS]],
                    "more_reasons": max(0, len(f.verdict.reasons) - MAX_REASONS),
                },
            )
            for f in await self._store.failing_attestations()
        }

    async def _expiring(self, now: int) -> Found:
        found: Found = {}
        for status in await statuses(self._store):
            expiry = status.nearest_expiry
            if expiry is None or expiry.expires.timestamp() - now >= EXPIRING_WITHIN_S:
                continue
            found[f"metadata/{expiry.role}"] = (
                "expiring",
                {
                    "role": expiry.role,
                    "expires_at": int(expiry.expires.timestamp()),
                    "host": status.host,
                    "repo": status.repo,
                    "renewal": status.outcome,
                    "problems": [f"{p.role}: {p.reason}" for p in status.problems[:MAX_REASONS]],
                },
            )
        return found

    async def _reconcile(self, kind: str, found: Found, now: int) -> None:
        held = await self._store.webhook_conditions(kind)
        for subject, (episode, details) in found.items():
            before = held.get(subject)
            if before is not None and before.episode == episode:
                continue
            event = WebhookEvent.of(Notice(kind, subject, details), new_event_id(), now)
            if await self._store.change_webhook_condition(
                kind, subject, None if before is None else before.episode, episode, event
            ):
                log.info("webhook_condition_began", kind=kind, subject=subject)
        for subject, ended in held.items():
            if subject in found:
                continue
            facts = {"began_at": ended.since, "ended_at": now}
            event = WebhookEvent.of(Notice(kind + RESOLVED, subject, facts), new_event_id(), now)
            if await self._store.change_webhook_condition(
                kind, subject, ended.episode, None, event
            ):
                log.info("webhook_condition_ended", kind=kind, subject=subject)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch and deliver until ``stop``; a failing round is logged, not fatal."""
        next_watch = 0.0

        async def round_() -> None:
            nonlocal next_watch
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + self._config.webhook_watch_s
                await self.watch()
                cutoff = int(self._clock()) - EVENT_RETENTION_S
                await self._store.forget_webhook_events(cutoff)
            await self.deliver_due()

        await every(self._config.webhook_poll_s, stop, round_, "webhook_round_failed")

    async def close(self) -> None:
        """Close the HTTP client (the server does, when it stops)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
