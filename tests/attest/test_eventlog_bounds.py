"""What one node can make the server keep of its event log (issue 17, item 5).

EV_NO_ACTION events are not extended into PCRs, so a node can append them to a
genuine log without its quote noticing, and the server kept the log whole: a
1 MiB one was accepted. Now a log is at most ``MAX_LOG_BYTES`` and its
EV_NO_ACTION events at most ``MAX_NO_ACTION_BYTES`` in all; a padded log is
refused, as evidence, and nothing of it is kept. The verifier refuses rather than
strips: a node names its log by digest, so the log kept must be the log sent.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.eventlog import (
    EV_NO_ACTION,
    MAX_LOG_BYTES,
    MAX_NO_ACTION_BYTES,
    EventLogError,
    parse,
)
from node.attest.attestor import Attestor
from tests.attest.conftest import LOG_DIR, Tpm
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import ask_challenge, enroll_agent, reference_log
from tests.conftest import Site

LOGS = sorted(LOG_DIR.glob("*.bin"))


def with_no_action(log: bytes, data: bytes) -> bytes:
    """``log`` with one more EV_NO_ACTION event: all-zero digests, as firmware writes
    them, in the log's own format."""
    parsed = parse(log)
    if parsed.spec_id is None:
        return log + struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(data)) + data
    algorithms = parsed.spec_id.algorithms
    digests = b"".join(struct.pack("<H", alg) + bytes(size) for alg, size in algorithms.items())
    header = struct.pack("<III", 0, EV_NO_ACTION, len(algorithms))
    return log + header + digests + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_informational_events_of_firmware_size_are_accepted(path: Path) -> None:
    log = path.read_bytes()
    sp800_155 = b"SP800-155 Event\x00" + bytes(200)
    assert len(parse(with_no_action(log, sp800_155)).events) == len(parse(log).events) + 1


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_padding_in_informational_events_is_refused_where_it_starts(path: Path) -> None:
    log = path.read_bytes()
    padded = with_no_action(log, b"SP800-155 Event\x00" + bytes(MAX_NO_ACTION_BYTES))
    with pytest.raises(EventLogError) as refused:
        parse(padded)
    assert (refused.value.offset, refused.value.index) == (len(log), len(parse(log).events))
    assert f"EV_NO_ACTION events carry over {MAX_NO_ACTION_BYTES} bytes" in str(refused.value)
    assert "padded after boot" in str(refused.value)


def test_a_log_over_the_bound_is_refused() -> None:
    log = reference_log().read_bytes()
    filler = bytes(MAX_LOG_BYTES - len(log))  # one event's framing over the bound
    with pytest.raises(EventLogError, match=f"over {MAX_LOG_BYTES}"):
        parse(with_no_action(log, filler))


def test_a_node_padding_its_log_is_refused_and_nothing_of_it_kept(
    tpm_site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    config, node = enroll_agent(tpm_site, tpm, tmp_path / "node")
    assert config.attestation is not None
    genuine = reference_log().read_bytes()

    def post(attestor: Attestor, log: bytes | None) -> tuple[int, str]:
        challenge, _ = ask_challenge(node)
        attested = attestor.attest_report(make_report(), challenge)
        if log is not None:  # the quote stands: no EV_NO_ACTION event was extended
            evidence = replace(attested.evidence, event_log=log, event_log_sha256=None)
            attested = replace(attested, evidence=evidence)
        response = node.send("POST", "/v1/reports", json.dumps(attested.to_dict()).encode())
        return response.status, response.data.decode()

    def kept() -> str | None:
        return tpm_site.server.call(lambda svc: svc.store.event_log_sha256(node.node_id))

    with Attestor(config.attestation, config.state_dir) as attestor:
        # The attack as found: one spec-legal EV_NO_ACTION event of 1 MiB.
        status, answer = post(attestor, with_no_action(genuine, bytes(1024 * 1024)))
        assert status == 400 and "event_log" in answer
        # Under the size bound, padding that no firmware writes.
        status, answer = post(attestor, with_no_action(genuine, bytes(64 * 1024)))
        assert status == 403 and "EV_NO_ACTION events carry over" in answer
        assert kept() is None and tpm_site.fleet()["n1"]["report"] is None
        # The node's genuine log: accepted, attested, kept.
        status, answer = post(attestor, None)
        assert status == 202, answer
    shown = tpm_site.fleet()["n1"]["report_attestation"]
    assert shown["passed"] is True
    assert kept() == shown["event_log_sha256"]
    assert len(tpm_site.server.call(lambda svc: svc.store.history("n1", 10))) == 1
