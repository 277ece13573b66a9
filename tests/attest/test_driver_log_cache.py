"""Each node's last verified driver log, kept so that a report sending the same
bytes again skips the parse and the signature checks: attacks on that memory.

The logs are signed with real Ed25519 keys and their quoted values replayed, as
an applier and a TPM would make them; what the cache may skip is seen in the
signature checks it asks for (real ones, counted).
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.driverlog import (
    DRIVER,
    ActiveDriver,
    DriverEvent,
    DriverLogError,
    encode,
    replay,
    verified_driver_log,
)
from keys.ed25519 import verify
from server.report_attestation import DriverLogs
from server.store import EnrolledNode

PCR = 15
RESET = 7
AK_RECORD = hashlib.sha256(b"the AK record enrolled").digest()


class CountedVerify:
    """Ed25519 verification, counting the checks made."""

    def __init__(self) -> None:
        self.checks = 0

    def __call__(self, public: bytes, message: bytes, signature: bytes) -> bool:
        self.checks += 1
        return verify(public, message, signature)


def _signed(key: Ed25519PrivateKey, event: DriverEvent) -> DriverEvent:
    return dataclasses.replace(event, signature=key.sign(event.signed_bytes()).hex())


def _log(key: Ed25519PrivateKey, version: str = "580.65.06") -> tuple[DriverEvent, ...]:
    public = key.public_key().public_bytes_raw()
    bundle = DriverEvent(
        PCR, f"R580/{version}.bundle", "cd" * 32, version, kind=DRIVER, seq=1, reset_count=RESET
    )
    return (
        _signed(key, DriverEvent.key(PCR, RESET, public, 0)),
        _signed(key, bundle),
    )


def _node(node_id: str, key: Ed25519PrivateKey | None = None) -> EnrolledNode:
    pinned = None if key is None else key.public_key().public_bytes_raw()
    return EnrolledNode(node_id, b"k" * 32, "default", True, "tpm2", 1_000, "{}", pinned)


def _fresh(data: bytes, quoted: bytes) -> ActiveDriver:
    return verified_driver_log(data, PCR, quoted, RESET, verify).active


def test_the_same_log_again_is_not_checked_again_but_still_replayed_against_the_quote() -> None:
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    counted = CountedVerify()
    logs = DriverLogs(PCR, counted)
    node = _node("n1", key)

    first = logs.active(node, AK_RECORD, data, quoted, RESET)
    assert first == _fresh(data, quoted) and first.driver == events[1] and not first.problems
    checks = counted.checks
    assert logs.active(node, AK_RECORD, data, quoted, RESET) == first
    assert counted.checks == checks  # reused

    # The same bytes under another quote (the PCR extended outside the log): refused.
    with pytest.raises(DriverLogError, match=r"\(2 events\) does not replay to the quoted"):
        logs.active(node, AK_RECORD, data, hashlib.sha256(quoted).digest(), RESET)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data: data.replace(b'"seq": 1', b'"seq": 2'), id="event-edited"),
        pytest.param(lambda data: data.splitlines(keepends=True)[0], id="event-removed"),
        pytest.param(lambda data: data + data.splitlines(keepends=True)[1], id="event-repeated"),
        pytest.param(lambda data: data + b" ", id="one-byte-more"),
        pytest.param(lambda data: b"{not json\n" + data, id="garbage"),
    ],
)
def test_a_tampered_log_after_a_cached_one_is_refused_as_before(tamper: object) -> None:
    assert callable(tamper)
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    logs = DriverLogs(PCR, verify)
    node = _node("n1", key)
    logs.active(node, AK_RECORD, data, quoted, RESET)
    tampered = tamper(data)

    with pytest.raises(DriverLogError) as fresh:
        _fresh(tampered, quoted)
    with pytest.raises(DriverLogError) as cached:
        logs.active(node, AK_RECORD, tampered, quoted, RESET)
    assert str(cached.value) == str(fresh.value)
    # And the genuine log is still judged on its own afterwards.
    assert logs.active(node, AK_RECORD, data, quoted, RESET) == _fresh(data, quoted)


def test_an_event_signed_by_another_key_after_a_cached_log_is_found() -> None:
    """The tampered log replays (the agent extended the PCR with its event too):
    only the signature check, which a cache hit would skip, finds it."""
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    logs = DriverLogs(PCR, verify)
    node = _node("n1", key)
    logs.active(node, AK_RECORD, encode(events), replay(events, PCR), RESET)
    claim = DriverEvent(
        PCR, "R580/580.99.99.bundle", "ab" * 32, "580.99.99", seq=2, reset_count=RESET
    )
    forged = (*events, _signed(Ed25519PrivateKey.generate(), claim))
    data, quoted = encode(forged), replay(forged, PCR)

    active = logs.active(node, AK_RECORD, data, quoted, RESET)

    assert active == _fresh(data, quoted)
    (problem,) = active.problems
    assert "event 3 (driver): not signed by the applier key" in problem
    assert active.driver == events[1]


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(
            lambda node, key: (dataclasses.replace(node, driver_key=key), AK_RECORD),
            id="new-applier-key",
        ),
        pytest.param(
            lambda node, key: (node, hashlib.sha256(b"another AK record").digest()),
            id="new-ak-record",
        ),
        pytest.param(
            lambda node, key: (dataclasses.replace(node, public_key=b"n" * 32), AK_RECORD),
            id="new-request-key",
        ),
    ],
)
def test_a_re_enrolled_node_does_not_reuse_its_old_entry(changed: object) -> None:
    assert callable(changed)
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    counted = CountedVerify()
    logs = DriverLogs(PCR, counted)
    logs.active(_node("n1", key), AK_RECORD, data, quoted, RESET)
    checks = counted.checks

    node, enrollment = changed(_node("n1", key), Ed25519PrivateKey.generate().public_key())
    logs.active(node, enrollment, data, quoted, RESET)

    assert counted.checks == 2 * checks  # checked afresh


def test_another_node_sending_a_copy_of_a_log_is_checked_on_its_own() -> None:
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    counted = CountedVerify()
    logs = DriverLogs(PCR, counted)
    logs.active(_node("a", key), AK_RECORD, data, quoted, RESET)
    checks = counted.checks

    # Node b's TPM quotes its own driver PCR: a's log does not explain it.
    own = replay(_log(Ed25519PrivateKey.generate()), PCR)
    with pytest.raises(DriverLogError, match="does not replay") as copied:
        logs.active(_node("b"), AK_RECORD, data, own, RESET)
    with pytest.raises(DriverLogError) as fresh:
        _fresh(data, own)
    assert str(copied.value) == str(fresh.value)
    # Even where b extended its PCR with a's events, b's copy is checked afresh.
    logs.active(_node("b"), AK_RECORD, data, quoted, RESET)
    assert counted.checks == 2 * checks


def test_a_log_of_another_boot_is_checked_again() -> None:
    """The same bytes quoted after a reboot: every event is of the boot before."""
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    logs = DriverLogs(PCR, verify)
    node = _node("n1", key)
    assert not logs.active(node, AK_RECORD, data, quoted, RESET).problems

    later = logs.active(node, AK_RECORD, data, quoted, RESET + 1)

    assert later == verified_driver_log(data, PCR, quoted, RESET + 1, verify).active
    (problem,) = later.problems
    assert "measured in another boot" in problem


def test_the_least_recently_reporting_node_is_forgotten_beyond_capacity() -> None:
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    counted = CountedVerify()
    logs = DriverLogs(PCR, counted, capacity=2)
    for node_id in ("a", "b", "a", "c"):  # b is the least recently seen
        logs.active(_node(node_id, key), AK_RECORD, data, quoted, RESET)
    checks = counted.checks

    logs.active(_node("a", key), AK_RECORD, data, quoted, RESET)
    logs.active(_node("c", key), AK_RECORD, data, quoted, RESET)
    assert counted.checks == checks
    logs.active(_node("b", key), AK_RECORD, data, quoted, RESET)
    assert counted.checks > checks


def test_the_key_a_first_report_pins_keeps_its_entry_and_no_other_does() -> None:
    """Nothing is pinned when a node's first log is checked; that log's key is
    pinned then, and the entry serves the node so pinned, not pinned otherwise."""
    key = Ed25519PrivateKey.generate()
    events = _log(key)
    data, quoted = encode(events), replay(events, PCR)
    counted = CountedVerify()
    logs = DriverLogs(PCR, counted)
    logs.active(_node("n1"), AK_RECORD, data, quoted, RESET)
    checks = counted.checks

    logs.active(_node("n1", key), AK_RECORD, data, quoted, RESET)
    assert counted.checks == checks
    logs.active(_node("n1", Ed25519PrivateKey.generate()), AK_RECORD, data, quoted, RESET)
    assert counted.checks == 2 * checks
