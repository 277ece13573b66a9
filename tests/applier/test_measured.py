"""The measured driver: the applier extends PCR 15 with its key event and each
committed bundle, signed, and logs them; the server replays the log against the
quoted PCR and records which bundle is active, refuses a log that does not
replay, and does not attest one holding an event the applier did not measure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import enroll
from applier.measure import read_log
from fleet.attestation import PcrSelection
from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.driverlog import DRIVER, ZERO, DriverEvent, DriverLogError, encode, parse, replay
from fleet.eventlog import parse as parse_event_log
from fleet.schema import canonical_json
from gpuward.node import run_once
from node.attest.attestor import Attestor
from node.config import AgentConfig, load_config
from server.attestation.challenges import Challenges
from server.attestation.enrollment import TpmEnrollmentVerifier
from server.attestation.verifier import REPORT
from server.report_attestation import ReportAttestation
from server.store import EnrolledNode as StoredNode
from server.store import Store
from tests.applier.helpers import NEW, OLD, Node, attested, bundles, measured, node_with
from tests.attest.conftest import LOCAL_CA, Tpm, extend_log
from tests.attest.conftest import enroll as enroll_tpm
from tests.attest.test_end_to_end import LOGS, make_report, startup_locality
from tests.conftest import Site, make_site
from tests.simnode import dashboard_sign_in
from tests.store.test_store import run

PCR = 15


def _reboot(tpm: Tpm) -> None:
    """What a reboot does to the TPM: TPM_Init, then TPM2_Startup(CLEAR) zeroes the PCRs."""
    subprocess.run(
        ["swtpm_ioctl", "--tcp", f"127.0.0.1:{tpm.port + 1}", "-i"], check=True, capture_output=True
    )
    subprocess.run(
        ["tpm2_startup", "-c"],
        check=True,
        capture_output=True,
        env={**os.environ, "TPM2TOOLS_TCTI": tpm.tcti},
    )


def test_each_commit_extends_the_driver_pcr_and_the_log_explains_it(
    site: Site, tmp_path: Path, tpm: Tpm
) -> None:
    node, old = node_with(site, tmp_path / "node", tables=attested(tpm))
    events, pcr = measured(node)
    assert [e.sha256 for e in bundles(events)] == [old] and pcr == replay(events, PCR) != ZERO

    new = node.spool_newest()
    assert node.outcome() == "committed"

    events, pcr = measured(node)
    assert [(e.sha256, e.driver_version) for e in bundles(events)] == [(old, OLD), (new, NEW)]
    # Computed here from first principles: each event's digest is SHA-256 of
    # the canonical JSON of what it measures, extended in order from zero.
    value = ZERO
    for event in events:
        digest = hashlib.sha256(canonical_json(event.measured())).digest()
        value = hashlib.sha256(value + digest).digest()
    assert pcr == value
    # The key event first, then the bundles, numbered, of this boot, each signed
    # by the key the first names, which only root can read.
    key_file = node.config.measurement_key
    assert key_file.stat().st_mode & 0o777 == 0o600
    public = Ed25519PrivateKey.from_private_bytes(key_file.read_bytes()).public_key()
    assert [e.kind for e in events] == ["key", "driver", "driver"]
    assert bytes.fromhex(events[0].public_key) == public.public_bytes_raw()
    assert [e.seq for e in events] == [0, 1, 2]
    assert {e.reset_count for e in events} == {_reset_count(node)}
    for event in events:
        public.verify(bytes.fromhex(event.signature), event.signed_bytes())
    # A further start measures nothing twice.
    assert node.outcome() == "nothing"
    assert measured(node) == (events, pcr)


def test_a_rolled_back_bundle_is_never_measured(site: Site, tmp_path: Path, tpm: Tpm) -> None:
    node, old = node_with(
        site, tmp_path / "node", f'unhealthy_drivers = ["{NEW}"]\n', tables=attested(tpm)
    )
    before = measured(node)
    node.spool_newest()
    assert node.outcome() == "rolled-back"
    assert measured(node) == before and bundles(before[0])[-1].sha256 == old


def test_after_a_reboot_the_active_bundle_is_measured_into_a_fresh_log(
    site: Site, tmp_path: Path, tpm: Tpm
) -> None:
    node, _ = node_with(site, tmp_path / "node", tables=attested(tpm))
    new = node.spool_newest()
    assert node.outcome() == "committed"

    before = measured(node)[0]
    _reboot(tpm)
    assert measured(node)[1] == ZERO
    assert node.outcome() == "nothing"  # the applier's start at boot

    events, pcr = measured(node)
    assert [e.sha256 for e in bundles(events)] == [new] and pcr == replay(events, PCR)
    assert [(e.kind, e.seq) for e in events] == [("key", 0), ("driver", 1)]
    assert events[0].public_key == before[0].public_key  # the same applier key
    assert events[0].reset_count == before[0].reset_count + 1 == _reset_count(node)


def test_a_pcr_extended_outside_the_log_is_reported_not_papered_over(
    site: Site, tmp_path: Path, tpm: Tpm
) -> None:
    node, _ = node_with(site, tmp_path / "node", tables=attested(tpm))
    assert node.config.attestation is not None
    with Attestor(node.config.attestation, node.config.state_dir) as attestor:
        attestor.extend_pcr(PCR, hashlib.sha256(b"someone else's measurement").digest())
    node.spool_newest()

    done = node.apply()

    result = json.loads(done.stdout)
    assert result["outcome"] == "committed"  # measuring never blocks an update
    assert "does not explain" in result["measured"] and "driver_pcr" in result["measured"]


def test_a_log_from_before_signing_is_started_afresh_at_the_next_boot(
    site: Site, tmp_path: Path, tpm: Tpm
) -> None:
    """An upgrade leaves the unsigned format's log behind: it cannot be extended
    (the PCR already holds it), and once a reboot zeroes the PCR it is replaced."""
    node, _ = node_with(site, tmp_path / "node", tables=attested(tpm))
    log = node.config.measurement_log
    log.write_bytes(log.read_bytes().replace(b'"schema": 2', b'"schema": 1'))
    assert "reboot the node" in json.loads(node.apply().stdout)["measured"]

    _reboot(tpm)
    assert node.outcome() == "nothing"
    events, pcr = measured(node)
    assert [(e.kind, e.seq) for e in events] == [("key", 0), ("driver", 1)]
    assert pcr == replay(events, PCR)


def _reset_count(node: Node) -> int:
    assert node.config.attestation is not None
    with Attestor(node.config.attestation, node.config.state_dir) as attestor:
        return attestor.reset_count()


def test_a_key_event_is_measured_at_boot_before_any_bundle(
    site: Site, tmp_path: Path, tpm: Tpm
) -> None:
    """The applier's boot start measures its key first, even with no driver yet: the
    agent, started after it, can only add events after the key event."""
    folder = tmp_path / "node"
    folder.mkdir()
    toml = site.agent_toml(folder, extra=attested(tpm), mode="applier")
    node = Node(toml, load_config(toml))
    assert node.outcome() == "nothing"
    events, pcr = measured(node)
    assert [(e.kind, e.seq) for e in events] == [("key", 0)] and pcr == replay(events, PCR)


# The server's side.


def _firmware_log() -> Path:
    """A reference log swtpm can reproduce (not started at locality 3), with sha256."""
    for path in LOGS:
        banks = parse_event_log(path.read_bytes()).digest_sizes
        if startup_locality(path) != 3 and "sha256" in banks:
            return path
    raise AssertionError(f"no usable event log in {LOGS}")


@pytest.fixture
def tpm_site(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """A server that enrolls TPMs with swtpm's CA."""
    base = tmp_path / "site"
    base.mkdir()
    yield from make_site(_template_repo, base, str(base / "server.db"), ek_ca=(LOCAL_CA,))


def _attested_node(site: Site, tpm: Tpm, folder: Path) -> tuple[Node, AgentConfig]:
    folder.mkdir()
    firmware = _firmware_log()
    extend_log(tpm, firmware)
    tables = f'[attestation]\ntcti = "{tpm.tcti}"\nevent_log = "{firmware}"\n'
    toml = site.agent_toml(folder, extra=tables, mode="applier")
    config = load_config(toml)
    assert enroll(config)["attestation"] == "tpm2"
    return Node(toml, config), config


def test_the_server_records_the_active_bundle_from_the_replayed_log(
    tpm_site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    node, config = _attested_node(tpm_site, tpm, tmp_path / "node")
    published = tpm_site.publish(OLD)

    assert run_once(config).outcome.update == "staged"
    before = tpm_site.fleet()["n1"]["report_attestation"]
    assert before["passed"] is True and before["driver"] is None  # nothing measured yet

    assert node.outcome() == "committed"
    assert run_once(config).outcome.update == "committed"

    shown = tpm_site.fleet()["n1"]
    verdict = shown["report_attestation"]
    assert verdict["passed"] is True and verdict["reasons"] == []
    assert verdict["driver"]["target_path"] == published.target_path
    assert verdict["driver"]["sha256"] == published.sha256
    assert verdict["driver"]["driver_version"] == OLD
    assert shown["report"]["bundle"] == published.target_path
    # The dashboard's node page shows the bundle the quote proves, not the one claimed.
    viewer = tpm_site.server.issue_token("viewer")
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = dashboard_sign_in(tpm_site.url, viewer)
    page = http.request("GET", f"{tpm_site.url}/nodes/n1", headers={"Cookie": cookie})
    html = page.data.decode()
    shown_driver = html[html.index('<p id="attested-driver">') :].split("</p>")[0]
    assert published.target_path in shown_driver and f"driver {OLD}" in shown_driver
    assert published.sha256[:12] in shown_driver and "PCR 15" in shown_driver


# Attacks on the log, against real quotes of swtpm.


@pytest.fixture
def measured_node(
    site: Site,
    tmp_path: Path,
    tpm: Tpm,
    challenges: Challenges,
    enrollment: TpmEnrollmentVerifier,
) -> Iterator[tuple[Attestor, str, Node]]:
    """A node whose applier measured OLD then NEW, enrolled with the verifier."""
    node, _ = node_with(site, tmp_path / "node", tables=attested(tpm))
    node.spool_newest()
    assert node.outcome() == "committed"
    firmware = _firmware_log()
    extend_log(tpm, firmware)
    with Attestor(tpm.config(event_log=firmware), tmp_path / "agent-state") as attestor:
        record = json.dumps(enroll_tpm(attestor, enrollment).to_dict())
        yield attestor, record, node


def _verify(
    challenges: Challenges,
    measured_node: tuple[Attestor, str, Node],
    log: bytes | None,
    bundle: str | None = None,
) -> AttestationVerdict:
    """The server's verdict on a report quoted now, sent with ``log``."""
    attestor, record, node = measured_node
    active = node.slots.content(node.slots.active())
    assert active is not None
    report = dataclasses.replace(make_report(), bundle=bundle or active.target_path)
    enrolled = StoredNode("n1", b"k" * 32, "default", True, "tpm2", 1_000, record)

    async def verify(store: Store) -> AttestationVerdict:
        # As a request finds it: enrolled, with the applier key pinned (or not yet).
        stored, _ = await store.enroll(enrolled)
        evidence = attestor.attest_report(report, await challenges.issue("n1", REPORT), log)
        # The driver PCR is required whatever the operator's selection leaves out.
        verifier = ReportAttestation(
            challenges, PcrSelection.parse("sha256:0-9"), store, next_ttl_s=challenges.ttl_s
        )
        return (await verifier.verify(stored, evidence)).verdict

    return run(str(node.config.state_dir.parent / "server.db"), verify)


def test_the_honest_log_names_the_active_bundle(
    challenges: Challenges, measured_node: tuple[Attestor, str, Node]
) -> None:
    log = measured_node[2].config.measurement_log.read_bytes()
    verdict = _verify(challenges, measured_node, log)
    assert verdict.passed is True and verdict.reasons == ()
    assert verdict.driver is not None and verdict.driver.driver_version == NEW


def _lines(measured_node: tuple[Attestor, str, Node]) -> list[bytes]:
    return measured_node[2].config.measurement_log.read_bytes().splitlines(keepends=True)


def _edited_digest(lines: list[bytes]) -> bytes:
    doc = json.loads(lines[-1])
    doc["digest"] = hashlib.sha256(b"a driver I would like to have").hexdigest()
    return b"".join(lines[:-1]) + json.dumps(doc).encode() + b"\n"


def _other_bundle(lines: list[bytes]) -> bytes:
    """A consistent event (digest recomputed) for a bundle the PCR never saw."""
    *first, last = parse(b"".join(lines))
    claimed = dataclasses.replace(last, target_path="R580/580.99.99.bundle", sha256="ab" * 32)
    return encode((*first, claimed))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        pytest.param(
            lambda lines: b"".join(lines[1:]), "does not replay", id="first-event-removed"
        ),
        pytest.param(
            lambda lines: b"".join(lines[:-1]), "does not replay", id="last-event-removed"
        ),
        pytest.param(lambda lines: b"".join(lines) * 2, "does not replay", id="events-repeated"),
        pytest.param(_edited_digest, "digest is not the SHA-256", id="digest-edited"),
        pytest.param(_other_bundle, "does not replay", id="claims-another-bundle"),
        pytest.param(lambda lines: b"", "does not replay", id="log-left-out"),
        pytest.param(lambda lines: b"{not json\n", "not JSON", id="garbage"),
        pytest.param(
            lambda lines: b"".join(lines).replace(b'"schema": 2', b'"schema": 1'),
            "reboot the node",
            id="unsigned-older-format",
        ),
    ],
)
def test_a_log_that_does_not_prove_the_pcr_is_refused(
    challenges: Challenges,
    measured_node: tuple[Attestor, str, Node],
    tamper: object,
    message: str,
) -> None:
    assert callable(tamper)
    log = tamper(_lines(measured_node))
    with pytest.raises(DriverLogError, match=message):
        _verify(challenges, measured_node, log or None)


def test_a_report_naming_another_bundle_than_the_pcr_is_not_attested(
    challenges: Challenges, measured_node: tuple[Attestor, str, Node]
) -> None:
    log = measured_node[2].config.measurement_log.read_bytes()
    verdict = _verify(challenges, measured_node, log, bundle="R580/580.99.99.bundle")
    assert verdict.passed is False
    (reason,) = verdict.reasons
    assert "names bundle R580/580.99.99.bundle" in reason and "TPM shows" in reason


# Attacks by a compromised agent: it can extend the driver PCR and send any log
# lines, but cannot read the applier's key (root's, 0600).

NEWER = "R580/580.99.99.bundle"


def _sign(key: Ed25519PrivateKey, event: DriverEvent) -> DriverEvent:
    return dataclasses.replace(event, signature=key.sign(event.signed_bytes()).hex())


def _claim(seq: int, reset_count: int) -> DriverEvent:
    """An event naming a bundle newer than any the applier measured."""
    return DriverEvent(
        PCR, NEWER, "ab" * 32, "580.99.99", kind=DRIVER, seq=seq, reset_count=reset_count
    )


def _extended(attestor: Attestor, events: tuple[DriverEvent, ...]) -> bytes:
    """Extend the driver PCR with ``events`` as the agent can; their log lines."""
    for event in events:
        attestor.extend_pcr(PCR, event.digest)
    return encode(events)


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        pytest.param(lambda genuine, reset: _claim(len(genuine), reset), "unsigned", id="unsigned"),
        pytest.param(
            lambda genuine, reset: _sign(Ed25519PrivateKey.generate(), _claim(len(genuine), reset)),
            "not signed by the applier key",
            id="forged-with-own-key",
        ),
        # After a rollback, say: the genuine event of the older bundle extended again.
        pytest.param(
            lambda genuine, reset: genuine[1],
            "sequence number 1 repeats an earlier event's",
            id="replayed-this-boot",
        ),
    ],
)
def test_an_event_the_agent_extends_is_not_attested(
    challenges: Challenges,
    measured_node: tuple[Attestor, str, Node],
    attack: Callable[[tuple[DriverEvent, ...], int], DriverEvent],
    reason: str,
) -> None:
    attestor, _, node = measured_node
    genuine = read_log(node.config.measurement_log)
    event = attack(genuine, attestor.reset_count())
    log = encode(genuine) + _extended(attestor, (event,))

    verdict = _verify(challenges, measured_node, log, bundle=event.target_path)

    assert verdict.passed is False
    shown, claimed = verdict.reasons
    assert shown.startswith("driver log event 4 (driver): ") and reason in shown, shown
    # The active driver is the last event the applier measured, not the claim.
    assert verdict.driver == AttestedDriver.of(genuine[-1])
    assert f"names bundle {event.target_path}" in claimed and "TPM shows" in claimed


@pytest.fixture
def enrolled_node(
    site: Site, tmp_path: Path, tpm: Tpm, enrollment: TpmEnrollmentVerifier
) -> tuple[str, Node]:
    """A node whose applier measured OLD then NEW, enrolled; no TPM session held,
    so the tests may reboot the TPM and run the applier."""
    node, _ = node_with(site, tmp_path / "node", tables=attested(tpm))
    node.spool_newest()
    assert node.outcome() == "committed"
    extend_log(tpm, _firmware_log())
    with _agent(tpm, tmp_path) as attestor:
        return json.dumps(enroll_tpm(attestor, enrollment).to_dict()), node


@contextmanager
def _agent(tpm: Tpm, tmp_path: Path) -> Iterator[Attestor]:
    with Attestor(tpm.config(event_log=_firmware_log()), tmp_path / "agent-state") as attestor:
        yield attestor


def _report(
    challenges: Challenges,
    tpm: Tpm,
    tmp_path: Path,
    enrolled: tuple[str, Node],
    log: bytes | None = None,
    bundle: str | None = None,
) -> AttestationVerdict:
    """The server's verdict on a report quoted now, with ``log`` or the applier's."""
    record, node = enrolled
    sent = log if log is not None else node.config.measurement_log.read_bytes()
    with _agent(tpm, tmp_path) as attestor:
        return _verify(challenges, (attestor, record, node), sent, bundle)


def _boot(tpm: Tpm, node: Node) -> None:
    """A reboot: the PCRs reset, the firmware measures the boot again, the applier starts."""
    _reboot(tpm)
    extend_log(tpm, _firmware_log())
    node.outcome()


def test_a_genuine_event_of_an_earlier_boot_is_not_attested(
    challenges: Challenges, tpm: Tpm, tmp_path: Path, enrolled_node: tuple[str, Node]
) -> None:
    node = enrolled_node[1]
    earlier = read_log(node.config.measurement_log)  # key, OLD, NEW
    _boot(tpm, node)
    now = read_log(node.config.measurement_log)  # key, NEW
    assert [(e.kind, e.seq) for e in now] == [("key", 0), ("driver", 1)]
    # The earlier boot's event numbered 2 is the next number due, and signed by
    # the very same applier key: only the reset count gives it away.
    with _agent(tpm, tmp_path) as attestor:
        log = encode(now) + _extended(attestor, (earlier[2],))

    verdict = _report(challenges, tpm, tmp_path, enrolled_node, log)

    assert verdict.passed is False
    (shown,) = verdict.reasons
    assert "measured in another boot" in shown and "a replayed event" in shown


def _own_key_boot(attestor: Attestor) -> bytes:
    """The log of a boot the agent measured first, with a key of its own."""
    key = Ed25519PrivateKey.generate()
    reset = attestor.reset_count()
    own = DriverEvent.key(PCR, reset, key.public_key().public_bytes_raw(), 0)
    return _extended(attestor, (_sign(key, own), _sign(key, _claim(1, reset))))


def test_a_key_event_the_agent_measures_before_the_applier_fails_the_pinned_key(
    challenges: Challenges, tpm: Tpm, tmp_path: Path, enrolled_node: tuple[str, Node]
) -> None:
    node = enrolled_node[1]
    assert _report(challenges, tpm, tmp_path, enrolled_node).passed is True  # pins the key
    _reboot(tpm)
    extend_log(tpm, _firmware_log())
    with _agent(tpm, tmp_path) as attestor:
        log = _own_key_boot(attestor)
    # The applier, started after the agent this once, cannot measure any more.
    result = json.loads(node.apply().stdout)
    assert "does not explain" in result["measured"]

    verdict = _report(challenges, tpm, tmp_path, enrolled_node, log, bundle=NEWER)

    assert verdict.passed is False and verdict.driver is None
    (shown,) = verdict.reasons
    assert "not the key" in shown and "pinned for this node" in shown


def test_a_replaced_applier_key_is_not_attested_until_the_node_is_re_enrolled(
    challenges: Challenges, tpm: Tpm, tmp_path: Path, enrolled_node: tuple[str, Node]
) -> None:
    node = enrolled_node[1]
    assert _report(challenges, tpm, tmp_path, enrolled_node).passed is True  # pins the key
    node.config.measurement_key.unlink()
    _boot(tpm, node)  # the applier makes a new key and measures with it

    verdict = _report(challenges, tpm, tmp_path, enrolled_node)
    assert verdict.passed is False and verdict.driver is None
    (shown,) = verdict.reasons
    assert "pinned for this node" in shown and "re-enroll the node" in shown

    # Re-enrolling starts by removing the node, which unpins its key.
    db = str(node.config.state_dir.parent / "server.db")
    run(db, lambda store: store.remove_node("n1"))
    verdict = _report(challenges, tpm, tmp_path, enrolled_node)
    assert verdict.passed is True and verdict.driver is not None
    assert verdict.driver.driver_version == NEW


def test_a_boot_whose_first_event_is_no_key_event_is_not_attested(
    challenges: Challenges, tpm: Tpm, tmp_path: Path, enrolled_node: tuple[str, Node]
) -> None:
    _reboot(tpm)
    extend_log(tpm, _firmware_log())
    with _agent(tpm, tmp_path) as attestor:
        log = _extended(attestor, (_claim(0, attestor.reset_count()),))

    verdict = _report(challenges, tpm, tmp_path, enrolled_node, log, bundle=NEWER)

    assert verdict.passed is False and verdict.driver is None
    (shown,) = verdict.reasons
    assert "first event is not the applier's key event" in shown
