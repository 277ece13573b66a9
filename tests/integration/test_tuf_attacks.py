"""Every attack the TUF specification lists, against the real agent and server.

Each test makes the server (or a mirror, or a holder of some keys) misbehave
and shows the agent refusing, the running slot untouched, and a log line.

| TUF attack                       | test                                              |
|----------------------------------|---------------------------------------------------|
| arbitrary installation           | test_arbitrary_installation_*                     |
| endless data                     | test_endless_*                                    |
| extraneous dependencies          | tests/agent/test_unpack.py (unlisted members)     |
| fast-forward                     | test_fast_forward_*                               |
| indefinite freeze                | test_freeze_* and test_update.py expired timestamp|
| malicious mirrors                | test_mirror_*                                     |
| mix-and-match                    | test_mix_and_match_*                              |
| rollback                         | test_update.py (replayed / older snapshot)        |
| key compromise below threshold   | test_root_key_compromise_below_threshold_*        |
| wrong software installation      | test_wrong_software_*                             |
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from securesystemslib.signer import CryptoSigner
from structlog.testing import capture_logs
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from gpuward.node import run_once
from keys.keyring import Keyring
from node.slots import Slots
from tests.conftest import PASSPHRASE, Site


def _installed(site: Site) -> None:
    site.publish("580.65.06")
    assert run_once(site.agent()).outcome.update == "committed"


def _refused(site: Site, *reasons: str, outcome: str = "refused") -> None:
    """The agent refuses, says why in its log, and keeps running 580.65.06 from slot a."""
    config = site.agent()
    with capture_logs() as logs:
        result = run_once(config)
    assert result.outcome.update == outcome, result.outcome
    assert any(r in result.outcome.reason for r in reasons), result.outcome.reason
    assert any(e["event"] in ("update_refused", "update_unavailable") for e in logs)
    slots = Slots(config.slots_dir)
    assert slots.active() == "a"
    assert slots.content("a").manifest.driver_version == "580.65.06"  # type: ignore[union-attr]


def _write(
    site: Site,
    name: str,
    md: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
) -> None:
    (site.repo.metadata_dir / name).write_bytes(md.to_bytes(JSONSerializer(compact=False)))


def _serve_root(site: Site, md: Metadata[Root]) -> None:
    _write(site, f"{md.signed.version}.root.json", md)


# -- root: rotation works, forgery and below-threshold compromise do not -----


def test_root_rotated_twice_reaches_an_agent_offline_throughout(site: Site) -> None:
    _installed(site)
    site.repo.rotate("root", lambda: PASSPHRASE)
    site.repo.rotate("root", lambda: PASSPHRASE)
    site.repo.rotate("targets", lambda: PASSPHRASE)
    site.publish("580.82.07")

    config = site.agent()
    result = run_once(config)

    assert result.outcome.update == "committed", result.outcome
    assert site.repo.root_metadata().signed.version == 4
    assert (config.metadata_dir / "root_history" / "4.root.json").exists()


def test_forged_new_root_is_refused(site: Site) -> None:
    _installed(site)
    attacker = CryptoSigner.generate_ed25519()
    forged = site.repo.root_metadata()
    forged.signed.version += 1
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(forged.signed.roles[role].keyids):
            forged.signed.revoke_key(keyid, role)
        forged.signed.add_key(attacker.public_key, role)
        forged.signed.roles[role].threshold = 1
    forged.signatures.clear()
    forged.sign(attacker)
    _serve_root(site, forged)

    _refused(site, "UnsignedMetadataError")


def test_root_key_compromise_below_threshold_is_refused(site: Site) -> None:
    """One of the two root signatures needed: the attacker cannot move trust."""
    _installed(site)
    keyring = Keyring(site.repo.root / "keys")
    stolen = keyring.signer(keyring.keys()[site.repo.role_keys("root")[0][0]], lambda: PASSPHRASE)
    attacker = CryptoSigner.generate_ed25519()
    forged = site.repo.root_metadata()
    forged.signed.version += 1
    for keyid in list(forged.signed.roles["targets"].keyids):
        forged.signed.revoke_key(keyid, "targets")
    forged.signed.add_key(attacker.public_key, "targets")
    forged.signatures.clear()
    forged.sign(stolen, append=True)
    forged.sign(attacker, append=True)
    _serve_root(site, forged)

    _refused(site, "UnsignedMetadataError")


# -- arbitrary and wrong software -------------------------------------------------


def test_arbitrary_installation_with_an_unauthorised_key_is_refused(site: Site) -> None:
    """The mirror re-signs the branch role with its own key and points it at its bundle."""
    _installed(site)
    site.publish("580.82.07")
    attacker = CryptoSigner.generate_ed25519()
    branch = site.repo.targets("R580")
    branch.signatures.clear()
    branch.sign(attacker)
    _write(site, f"{branch.signed.version}.R580.json", branch)

    _refused(site, "UnsignedMetadataError")


def test_wrong_software_from_another_branch_role_is_ignored(site: Site) -> None:
    """A branch team signs a bundle outside its own folder: the delegation's paths bar it."""
    _installed(site)
    published = site.publish("570.124.06", branch="R570")
    r570 = site.repo.targets("R570")
    info = r570.signed.targets.pop(published.target_path)
    info.path = "drivers/R580/nvidia-580.99.99.bundle"
    r570.signed.targets[info.path] = info
    site.repo.bump(r570, "R570")
    site.repo.sign_and_write(r570, lambda: PASSPHRASE, role="R570")
    site.repo.publish_snapshot({"R570": r570.signed.version})

    result = run_once(site.agent())

    assert result.outcome.update == "up-to-date"
    assert Slots(site.agent().slots_dir).content("a").manifest.driver_version == "580.65.06"  # type: ignore[union-attr]


# -- endless data ------------------------------------------------------------------


def test_endless_timestamp_is_cut_off(site: Site) -> None:
    _installed(site)
    timestamp = site.repo.metadata_dir / "timestamp.json"
    timestamp.write_bytes(timestamp.read_bytes().rstrip(b"}") + b" " * 100_000 + b"}")

    _refused(site, "DownloadLengthMismatchError")


def test_endless_bundle_is_cut_off(site: Site) -> None:
    _installed(site)
    served = site.served_target(site.publish("580.82.07"))
    with served.open("ab") as f:
        f.write(b"\0" * 1_000_000)

    _refused(site, "LengthOrHashMismatchError", "DownloadLengthMismatchError")


@pytest.mark.parametrize("served", ["tampered", "truncated"])
def test_a_bundle_other_than_the_signed_one_is_refused_and_never_kept(
    site: Site, served: str
) -> None:
    """The agent hashes a bundle while it streams to disk: a body of the signed length
    with one byte changed, or one cut short, is refused and leaves nothing behind in
    the download folder, neither at the target's name nor as a partial file."""
    _installed(site)
    target = site.served_target(site.publish("580.82.07"))
    body = bytearray(target.read_bytes())
    if served == "tampered":
        body[len(body) // 2] ^= 0xFF
    else:
        del body[-1000:]
    target.write_bytes(body)

    _refused(site, "LengthOrHashMismatchError")
    kept = [p.name for p in site.agent().download_dir.iterdir() if "580.65.06" not in p.name]
    assert kept == []


# -- freeze --------------------------------------------------------------------------


def test_freeze_with_fresh_timestamp_but_expired_snapshot_is_refused(site: Site) -> None:
    _installed(site)
    site.publish("580.82.07")
    snapshot = site.repo.snapshot()
    site.repo.bump(snapshot, "snapshot")
    snapshot.signed.expires = datetime.now(UTC) - timedelta(seconds=1)
    site.repo.sign_and_write(snapshot, lambda: PASSPHRASE)
    site.repo.sign_timestamp(snapshot_version=snapshot.signed.version)

    _refused(site, "ExpiredMetadataError")


# -- fast-forward ------------------------------------------------------------------


def test_fast_forward_by_a_stolen_timestamp_key_is_undone_by_rotation(site: Site) -> None:
    _installed(site)
    # The thief signs a timestamp far in the future of the version sequence.
    legit = site.repo.timestamp()
    forged = site.repo.timestamp()
    forged.signed.version = 10**6
    site.repo.sign_and_write(forged, lambda: PASSPHRASE)
    assert run_once(site.agent()).outcome.update == "up-to-date"  # it verified: the key is real
    # The operator restores the honest sequence: the agent now sees a rollback...
    site.repo.write(legit, "timestamp")
    site.publish("580.82.07")
    _refused(site, "BadVersionNumberError")
    # ...until the timestamp key is rotated, which discards the poisoned state.
    site.repo.rotate("timestamp", lambda: PASSPHRASE)

    assert run_once(site.agent()).outcome.update == "committed"


# -- mix-and-match -------------------------------------------------------------------


def test_mix_and_match_of_an_old_branch_role_is_refused(site: Site) -> None:
    """New snapshot, old branch metadata: the versions do not match."""
    _installed(site)
    old = site.repo.targets("R580")
    site.publish("580.82.07")
    newest = site.repo.snapshot().signed.meta["R580.json"].version
    _write(site, f"{newest}.R580.json", old)

    _refused(site, "BadVersionNumberError")


# -- malicious mirrors --------------------------------------------------------------


def test_mirror_serving_garbage_metadata_is_refused(site: Site) -> None:
    _installed(site)
    (site.repo.metadata_dir / "timestamp.json").write_text(json.dumps({"signed": "lol"}))

    _refused(site, "DeserializationError")


def test_mirror_withholding_metadata_prevents_nothing_but_the_update(site: Site) -> None:
    _installed(site)
    site.publish("580.82.07")
    version = site.repo.snapshot().signed.version
    (site.repo.metadata_dir / f"{version}.snapshot.json").unlink()

    _refused(site, "unreachable", "404", outcome="failed")


# -- rotation of a branch role, and expiry policy --------------------------------


def test_branch_role_rotation_keeps_agents_updating_and_locks_out_the_old_key(site: Site) -> None:
    _installed(site)
    old_keyring = Keyring(site.repo.root / "keys")
    old_key = old_keyring.keys()[site.repo.role_keys("R580")[0][0]]
    stolen = old_keyring.signer(old_key, lambda: PASSPHRASE)
    site.repo.rotate("R580", lambda: PASSPHRASE)
    site.publish("580.82.07")
    assert run_once(site.agent()).outcome.update == "committed"

    # Whoever kept the retired key can no longer sign the branch.
    branch = site.repo.targets("R580")
    site.repo.bump(branch, "R580")
    branch.signatures.clear()
    branch.sign(stolen)
    _write(site, f"{branch.signed.version}.R580.json", branch)
    site.repo.publish_snapshot({"R580": branch.signed.version})
    result = run_once(site.agent())
    assert result.outcome.update == "refused"
    assert "UnsignedMetadataError" in result.outcome.reason
