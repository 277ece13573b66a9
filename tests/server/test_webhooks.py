"""Signed webhooks from a real server to a real receiver on loopback.

The receiver is an aiohttp app written as an operator would write one: it
checks every delivery with ``fleet.webhook_signature.verify`` (the module the
README tells receivers to copy) and acts on each event id once. The server's
clock is a ``FakeClock`` the receiver shares, so retries and deadlines are
moved by the test; where the server's own loop delivers, the test waits on the
receiver with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import urllib3
from aiohttp import web

from fleet.attestation_verdict import AttestationVerdict
from fleet.webhook_signature import ID_HEADER, TIMESTAMP_HEADER, SignatureRefused, verify
from server.config import ServerConfig, WebhookEndpoint
from server.http import Services
from server.lifecycle import BackgroundServer
from server.renewal import RenewalStatus
from server.resigner import Expiry, Problem
from server.store import DELIVERED, FAILED, Store, open_store
from server.webhooks import WebhookService, retry_delay
from tests.conftest import Site, make_site
from tests.simnode import FakeClock, SimNode, operator_get, operator_post
from tests.store.test_store import node, report

SECRET = b"receiver-secret-0123456789abcdef"
WAIT_S = 30.0


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int
    refusal: str


class Receiver:
    """A webhook receiver on a free loopback port, in a thread of its own."""

    def __init__(self, secret: bytes, clock: Callable[[], float]) -> None:
        self.secret = secret
        self.clock = clock
        self.handled: set[str] = set()  # event ids acted on
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[Delivery] = []
        self.fail_next = 0  # answer this many verified deliveries with 500
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, refusal = 200, ""
        try:
            event_id = verify(self.secret, request.headers, body, self.clock(), seen=self.handled)
        except SignatureRefused as exc:
            status, refusal = 401, str(exc)
        else:
            if self.fail_next:
                self.fail_next -= 1
                status = 500
            else:
                self.handled.add(event_id)
                self.events.append(json.loads(body))
        with self._changed:
            self.deliveries.append(Delivery(dict(request.headers), body, status, refusal))
            self._changed.notify_all()
        return web.Response(status=status, text=refusal)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT_S)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(WAIT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def wait_for(self, count: int) -> list[Delivery]:
        """The first ``count`` deliveries, once they have arrived (or fail at the deadline)."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.deliveries) >= count, WAIT_S)
            assert arrived, f"{len(self.deliveries)} of {count} deliveries in {WAIT_S}s"
            return list(self.deliveries[:count])

    def replay(self, delivery: Delivery) -> urllib3.BaseHTTPResponse:
        """The captured delivery, sent again as it was (as an attacker would)."""
        return urllib3.request(
            "POST", self.url, body=delivery.body, headers=delivery.headers, retries=False
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[Receiver]:
    hook = Receiver(SECRET, clock).start()
    yield hook
    hook.stop()


def _site(
    template: Path, base: Path, db: str, clock: FakeClock, *endpoints: WebhookEndpoint, **more: Any
) -> Iterator[Site]:
    return make_site(template, base, db, clock, webhooks=endpoints, **more)


def test_a_halted_rollout_reaches_the_receiver_signed_and_a_replay_is_refused(
    _template_repo: Path, tmp_path: Path, db_url: str, clock: FakeClock, receiver: Receiver
) -> None:
    # The server's own loop delivers: every 50 ms it looks for due deliveries.
    endpoint = WebhookEndpoint(receiver.url, (SECRET,), events=("rollout.*",))
    for site in _site(_template_repo, tmp_path, db_url, clock, endpoint, webhook_poll_s=0.05):
        new = site.publish("580.82.07")
        silent = SimNode(site.url, "gpu-silent", "prod", clock)
        assert silent.enroll().status == 201
        token = site.server.issue_token("operator")
        policy = {"waves": "100%", "progress_deadline_s": 600}
        started = operator_post(
            site.url, "/v1/rollouts", token,
            {"id": "r-1", "pool": "prod", "target": new.target_path, "policy": policy},
        )  # fmt: skip
        assert started.status == 201, started.data
        clock.advance(600)
        site.server.tick_rollouts()
        doc = json.loads(operator_get(site.url, "/v1/rollouts/r-1", token).data)
        assert doc["phase"] == "halted"

        deliveries = receiver.wait_for(2)
        assert [d.status for d in deliveries] == [200, 200]
        by_type = {e["type"]: e for e in receiver.events}
        assert set(by_type) == {"rollout.deadline_missed", "rollout.halted"}
        for delivery in deliveries:
            event = json.loads(delivery.body)
            assert delivery.headers[ID_HEADER] == event["id"]
            assert int(delivery.headers[TIMESTAMP_HEADER]) == int(clock()) == event["time"]
            assert event["subject"] == "rollout/r-1" and event["schema"] == 1
        missed = by_type["rollout.deadline_missed"]["details"]
        assert (missed["node"], missed["deadline_at"]) == ("gpu-silent", int(clock()))
        assert by_type["rollout.halted"]["details"]["deadline_missed"] == ["gpu-silent"]

        # A captured delivery sent again is refused: its id was handled ...
        replayed = receiver.replay(deliveries[0])
        assert replayed.status == 401 and b"replayed" in replayed.data
        # ... and once past the tolerance, even by a receiver that forgot the id.
        receiver.handled.clear()
        clock.advance(301)
        stale = receiver.replay(deliveries[0])
        assert stale.status == 401 and b"stale" in stale.data
        assert len(receiver.events) == 2


def test_a_failed_delivery_is_retried_with_the_same_id_until_it_is_taken(
    _template_repo: Path, tmp_path: Path, clock: FakeClock, receiver: Receiver
) -> None:
    # The test drives the sender: its loop does not run. (Only node
    # events: the fake clock is past the real metadata's expiry.)
    endpoint = WebhookEndpoint(receiver.url, (SECRET,), events=("node.*",))
    db = str(tmp_path / "s.db")
    for site in _site(_template_repo, tmp_path, db, clock, endpoint, webhook_poll_s=0):
        svc = site.server
        gone = SimNode(site.url, "gpu-gone", "prod", clock)
        assert gone.enroll().status == 201
        clock.advance(3 * 300 + 1)  # silent past missing_after report intervals
        receiver.fail_next = 1
        svc.call(lambda s: _watch(s.webhooks))
        assert svc.call(lambda s: _deliver(s.webhooks)) == 1
        first = receiver.wait_for(1)[0]
        assert first.status == 500
        assert svc.call(lambda s: _deliver(s.webhooks)) == 0  # not due before its backoff
        clock.advance(5)  # the first retry waits at most the first delay (5 s)
        assert svc.call(lambda s: _deliver(s.webhooks)) == 1
        second = receiver.wait_for(2)[1]
        assert second.status == 200
        assert second.headers[ID_HEADER] == first.headers[ID_HEADER]
        assert second.body == first.body
        assert int(second.headers[TIMESTAMP_HEADER]) == int(first.headers[TIMESTAMP_HEADER]) + 5
        [event] = receiver.events
        assert (event["type"], event["subject"]) == ("node.missing", "node/gpu-gone")
        assert event["details"]["last_seen"] is None
        states = svc.call(partial(_states, event_id=event["id"]))
        assert states == {receiver.url: (DELIVERED, 2)}

        # Watching again tells nothing new; the node back tells that it ended.
        svc.call(lambda s: _watch(s.webhooks))
        assert svc.call(lambda s: _deliver(s.webhooks)) == 0
        assert gone.report().status == 202
        svc.call(lambda s: _watch(s.webhooks))
        assert svc.call(lambda s: _deliver(s.webhooks)) == 1
        assert [e["type"] for e in receiver.events] == ["node.missing", "node.missing.resolved"]


def test_a_wrong_secret_is_refused_and_attempts_are_bounded(
    _template_repo: Path, tmp_path: Path, clock: FakeClock, receiver: Receiver
) -> None:
    right = WebhookEndpoint(receiver.url, (SECRET,), ("node.*",), name="right")
    wrong = WebhookEndpoint(
        receiver.url, (b"not-the-receivers-secret",), ("node.*",), name="wrong", max_attempts=2
    )
    db = str(tmp_path / "s.db")
    for site in _site(_template_repo, tmp_path, db, clock, right, wrong, webhook_poll_s=0):
        svc = site.server
        assert SimNode(site.url, "gpu-gone", "prod", clock).enroll().status == 201
        clock.advance(3 * 300 + 1)
        svc.call(lambda s: _watch(s.webhooks))
        assert svc.call(lambda s: _deliver(s.webhooks)) == 2
        statuses = sorted((d.status, d.refusal) for d in receiver.wait_for(2))
        assert statuses[0] == (200, "")
        assert statuses[1][0] == 401 and "no signature matches" in statuses[1][1]
        event_id = receiver.events[0]["id"]
        clock.advance(3600)
        assert svc.call(lambda s: _deliver(s.webhooks)) == 1  # the wrong one's second try
        assert receiver.wait_for(3)[2].status == 401
        clock.advance(3600)
        assert svc.call(lambda s: _deliver(s.webhooks)) == 0  # given up after 2
        states = svc.call(partial(_states, event_id=event_id))
        assert states == {"right": (DELIVERED, 1), "wrong": (FAILED, 2)}
        assert len(receiver.events) == 1


def test_a_pending_delivery_survives_a_restart(
    _template_repo: Path, tmp_path: Path, clock: FakeClock, receiver: Receiver
) -> None:
    endpoint = WebhookEndpoint(receiver.url, (SECRET,), events=("node.*",))
    db = str(tmp_path / "s.db")
    for site in _site(_template_repo, tmp_path, db, clock, endpoint, webhook_poll_s=0):
        assert SimNode(site.url, "gpu-gone", "prod", clock).enroll().status == 201
        clock.advance(3 * 300 + 1)
        receiver.fail_next = 1
        site.server.call(lambda s: _watch(s.webhooks))
        assert site.server.call(lambda s: _deliver(s.webhooks)) == 1
        config = site.server.config
    first = receiver.wait_for(1)[0]
    assert first.status == 500
    clock.advance(3600)
    with BackgroundServer(config, clock=clock) as again:
        assert again.call(lambda s: _deliver(s.webhooks)) == 1
    second = receiver.wait_for(2)[1]
    assert (second.status, second.headers[ID_HEADER]) == (200, first.headers[ID_HEADER])
    assert [e["type"] for e in receiver.events] == ["node.missing"]


async def _states(svc: Services, event_id: str) -> dict[str, tuple[str, int]]:
    return await svc.store.webhook_delivery_states(event_id)


async def _watch(webhooks: WebhookService | None) -> None:
    assert webhooks is not None
    await webhooks.watch()


async def _deliver(webhooks: WebhookService | None) -> int:
    assert webhooks is not None
    return await webhooks.deliver_due()


def test_attestation_and_metadata_conditions_begin_and_end_once(
    db_url: str, tmp_path: Path
) -> None:
    clock = FakeClock(10_000)
    config = ServerConfig(
        repo=tmp_path,
        db=db_url,
        webhooks=(WebhookEndpoint("http://127.0.0.1:9/", (SECRET,)),),
    )
    failing = AttestationVerdict(False, 4, "ef" * 32, "default", ("Secure Boot is off",), False)
    passing = AttestationVerdict(True, 4, "ef" * 32, "default", (), True)

    def renewal(expires_in_s: int) -> str:
        expiry = Expiry(datetime.fromtimestamp(clock() + expires_in_s, UTC), "image:timestamp")
        status = RenewalStatus(
            "host", "/repo", "failed", int(clock()), None, 3,
            (Problem("image:timestamp", "disk full"),), int(clock()) + 60, expiry,
        )  # fmt: skip
        return json.dumps(status.to_dict())

    async def events(store: Store) -> list[dict[str, Any]]:
        await store.route_webhook_events(lambda _t: ["all"], int(clock()), 100)
        claimed = await store.claim_webhook_deliveries(["all"], int(clock()), int(clock()), 100)
        for delivery in claimed:
            await store.finish_webhook_attempt(delivery, DELIVERED, int(clock()), "")
        return sorted((json.loads(d.body) for d in claimed), key=lambda e: str(e["type"]))

    async def body() -> None:
        store = await open_store(db_url)
        try:
            service = WebhookService(store, config, clock)
            await store.enroll(node("n1"))
            await store.add_report(report("n1"), int(clock()), "", "a" * 32, failing)
            await store.keep_renewal("host:/repo", renewal(3 * 3600))
            await service.watch()
            found = await events(store)
            assert [(e["type"], e["subject"]) for e in found] == [
                ("metadata.expiring", "metadata/image:timestamp"),
                ("node.attestation_failing", "node/n1"),
            ]
            assert found[0]["details"]["problems"] == ["image:timestamp: disk full"]
            assert found[1]["details"]["reasons"] == ["Secure Boot is off"]
            await service.watch()
            assert await events(store) == []  # still so: nothing new
            clock.advance(60)
            await store.add_report(report("n1"), int(clock()), "", "b" * 32, passing)
            await store.keep_renewal("host:/repo", renewal(20 * 3600))
            await service.watch()
            ended = await events(store)
            assert [e["type"] for e in ended] == [
                "metadata.expiring.resolved",
                "node.attestation_failing.resolved",
            ]
            assert ended[0]["details"] == {"began_at": 10_000, "ended_at": 10_060}
        finally:
            await store.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("attempts", "jitter", "delay"),
    [
        (1, 0.0, 2.5),
        (1, 1.0, 5.0),
        (2, 0.5, 7.5),
        (3, 1.0, 20.0),
        (20, 0.0, 1800.0),
        (60, 1.0, 3600.0),
    ],
)
def test_retries_back_off_exponentially_with_jitter_up_to_the_bound(
    attempts: int, jitter: float, delay: float
) -> None:
    assert retry_delay(attempts, 5.0, 3600.0, jitter) == delay
