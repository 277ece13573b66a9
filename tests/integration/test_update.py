"""The walking skeleton end to end: real server on loopback, real python-tuf client.

Each attack leaves the running slot untouched and says why in the agent's log.
"""

from __future__ import annotations

import shutil

from structlog.testing import capture_logs

from agent.cycle_state import load_state
from gpuward.node import run_once
from node.slots import Slots
from tests.conftest import Site


def test_update_installs_verifies_and_reports(site: Site) -> None:
    site.publish("580.65.06")
    config = site.agent()

    result = run_once(config)

    assert result.outcome.update == "committed"
    slots = Slots(config.slots_dir)
    assert slots.active() == "a"
    installed = slots.path("a") / "payload" / "libnvidia-ml.so.1"
    assert installed.read_bytes() == b"NVML 580.65.06\n"
    assert result.report_sent
    node = site.fleet()["node-1"]
    assert node["report"]["driver_version"] == "580.65.06"
    assert node["report"]["update"] == "committed"


def test_newer_bundle_goes_to_the_other_slot(site: Site) -> None:
    config = site.agent()
    site.publish("580.65.06")
    run_once(config)
    site.publish("580.82.07")

    result = run_once(config)

    assert result.outcome.update == "committed"
    slots = Slots(config.slots_dir)
    assert slots.active() == "b"
    assert slots.content("a").manifest.driver_version == "580.65.06"  # type: ignore[union-attr]
    assert slots.content("b").manifest.driver_version == "580.82.07"  # type: ignore[union-attr]
    assert run_once(config).outcome.update == "up-to-date"


def _installed_then(site: Site) -> tuple[Slots, object]:
    config = site.agent()
    site.publish("580.65.06")
    assert run_once(config).outcome.update == "committed"
    return Slots(config.slots_dir), config


def _assert_refused(site: Site, expected_reason: str) -> None:
    config = site.agent()
    slots = Slots(config.slots_dir)
    with capture_logs() as logs:
        result = run_once(config)
    assert result.outcome.update == "refused"
    assert expected_reason in result.outcome.reason
    refused = [e for e in logs if e["event"] == "update_refused"]
    assert refused and expected_reason in refused[0]["reason"]
    assert slots.active() == "a"
    assert slots.content("a").manifest.driver_version == "580.65.06"  # type: ignore[union-attr]
    assert slots.content("b") is None
    assert site.fleet()["node-1"]["report"]["update"] == "refused"


def test_bundle_with_one_byte_changed_is_refused(site: Site) -> None:
    _installed_then(site)
    published = site.publish("580.82.07")
    served = site.served_target(published)
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0x01
    served.write_bytes(bytes(data))

    _assert_refused(site, "LengthOrHashMismatchError")


def test_expired_timestamp_is_refused(site: Site) -> None:
    from datetime import UTC, datetime, timedelta

    _installed_then(site)
    site.publish("580.82.07")
    site.repo.sign_timestamp(expires=datetime.now(UTC) - timedelta(minutes=1))

    _assert_refused(site, "ExpiredMetadataError")


def test_replayed_old_timestamp_and_snapshot_are_refused(site: Site) -> None:
    _installed_then(site)
    metadata = site.repo.metadata_dir
    old_timestamp = (metadata / "timestamp.json").read_bytes()
    site.publish("580.82.07")
    run_once(site.agent())  # the agent now trusts the newer snapshot
    site.publish("580.95.05")
    (metadata / "timestamp.json").write_bytes(old_timestamp)

    config = site.agent()
    with capture_logs() as logs:
        result = run_once(config)
    assert result.outcome.update == "refused"
    assert "BadVersionNumberError" in result.outcome.reason
    assert any(e["event"] == "update_refused" for e in logs)
    assert Slots(config.slots_dir).content("b").manifest.driver_version == "580.82.07"  # type: ignore[union-attr]


def test_timestamp_naming_an_older_snapshot_is_refused(site: Site) -> None:
    """A compromised online timestamp key still cannot roll the snapshot back."""
    _installed_then(site)
    trusted_snapshot = site.repo.snapshot().signed.version
    site.publish("580.82.07")
    site.repo.sign_timestamp(snapshot_version=trusted_snapshot - 1)

    _assert_refused(site, "BadVersionNumberError")


def test_snapshot_rolled_back_on_the_mirror_is_refused(site: Site) -> None:
    """The server replaces the current snapshot with an older, validly signed one."""
    _installed_then(site)
    metadata = site.repo.metadata_dir
    current = site.repo.snapshot().signed.version
    older = (metadata / f"{current - 1}.snapshot.json").read_bytes()
    site.publish("580.82.07")
    newest = site.repo.snapshot().signed.version
    (metadata / f"{newest}.snapshot.json").write_bytes(older)

    _assert_refused(site, "BadVersionNumberError")


def test_unhealthy_driver_rolls_back_and_is_not_retried(site: Site) -> None:
    config = site.agent(unhealthy=frozenset({"580.82.07"}))
    site.publish("580.65.06")
    run_once(config)
    published = site.publish("580.82.07")

    with capture_logs() as logs:
        result = run_once(config)

    assert result.outcome.update == "rolled-back"
    assert "XID 79" in result.outcome.reason
    assert any(e["event"] == "update_rolled_back" for e in logs)
    slots = Slots(config.slots_dir)
    assert slots.active() == "a"
    assert result.report.driver_version == "580.65.06"
    assert load_state(config.state_file).rejected == {published.sha256}

    again = run_once(config)
    assert again.outcome.update == "up-to-date"
    assert "skipped" in again.outcome.reason
    assert slots.active() == "a"


def test_unreachable_server_changes_nothing(site: Site) -> None:
    config = site.agent()
    site.publish("580.65.06")
    run_once(config)
    site.server.stop()

    result = run_once(config)

    assert result.outcome.update == "failed"
    assert "unreachable" in result.outcome.reason
    assert not result.report_sent
    assert Slots(config.slots_dir).active() == "a"


def test_agent_never_trusts_root_from_its_cache(site: Site) -> None:
    """A root planted in the writable cache is ignored: trust comes from the bootstrap."""
    config = site.agent()
    site.publish("580.65.06")
    run_once(config)
    cached = config.metadata_dir / "root.json"
    assert cached.exists()
    # Replace the cached root with garbage; a TOFU client would now fail or trust it.
    cached.write_text("{}")
    shutil.rmtree(config.metadata_dir / "root_history")
    site.publish("580.82.07")

    assert run_once(config).outcome.update == "committed"
