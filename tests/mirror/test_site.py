"""Air-gapped sites keep metadata fresh with their own timestamp and snapshot keys,
and agents never accept metadata past its expiry.

The flow is the README's "Air-gapped sites", command by command: the site
creates its keys, upstream trusts them with a root ceremony, exports travel on
a ``.tar``, and the site's server signs the online roles from then on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Timestamp

from agent.identity import enroll
from fleet.errors import GpuwardError
from gpuward.node import run_once
from keys.image_repo import ImageRepository
from node.config import AgentConfig
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from server.mirror import import_into
from server.resigner import OnlineSigner
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.mirror.test_mirror import manifest_of, tree, verifier
from tests.simnode import ENROLLMENT_TOKEN


def _ok(*args: str) -> str:
    done = gpuward(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _export_lapsing(site: Site, out: Path, expires: datetime) -> Path:
    """An export whose timestamp expires at ``expires`` (upstream's last one before it)."""
    site.repo.sign_timestamp(expires=expires)
    _ok("mirror", "export", "--repo", str(site.repo.root), "--to", str(out))
    return out


@contextmanager
def _inside(gapped: Path, tmp_path: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(
        gapped, str(tmp_path / "gapped.db"), port=0, unattested_enrollment_token=ENROLLMENT_TOKEN
    )
    with BackgroundServer(config) as server:
        yield server


def _agent(site: Site, server: BackgroundServer) -> AgentConfig:
    agent = dataclasses.replace(site.agent("inside-1", enrolled=False), server_url=server.url)
    if not agent.key_file.exists():
        enroll(agent)
    return agent


def _timestamp(repo: Path) -> Metadata[Timestamp]:
    return ImageRepository(repo).timestamp()


def _site_change(site: Site, change: str, site_keys: Path, staged: Path) -> None:
    """Upstream: ``mirror trust-site`` or ``distrust-site``, a root ceremony."""
    upstream = str(site.repo.root)
    _ok("mirror", change, str(site_keys), "--repo", upstream, "-o", str(staged))
    _ok("keys", "sign", str(staged), "--keys", str(site.repo.root / "keys"))
    _ok("repo", "publish", str(staged), "--repo", upstream)


def _trusted_site(site: Site, tmp_path: Path) -> tuple[Path, Path]:
    """A site's repository (its own online keys in it) and its public keys' file,
    which upstream trusts to sign timestamp and snapshot."""
    gapped, site_keys = tmp_path / "gapped", tmp_path / "vault.keys"
    # Inside: the site's own online keys; only their public halves leave.
    _ok("mirror", "site-keys", "--repo", str(gapped), "--site", "vault", "-o", str(site_keys))
    _site_change(site, "trust-site", site_keys, tmp_path / "root.st")
    return gapped, site_keys


def test_site_keys_keep_an_imported_mirror_fresh(site: Site, tmp_path: Path) -> None:
    gapped, _ = _trusted_site(site, tmp_path)
    site.publish("580.65.06")
    # The carried export's timestamp lapses before anyone could serve it.
    now = datetime.now(UTC)
    first = _export_lapsing(site, tmp_path / "first.tar", now - timedelta(minutes=1))

    root = str(site.base / "trusted-root.json")
    imported = _ok("mirror", "import", str(first), "--repo", str(gapped), "--trusted-root", root)
    assert "the site signed snapshot" in imported
    site_keyids = set(ImageRepository(gapped).keyring.keys())
    fresh = _timestamp(gapped)
    assert set(fresh.signatures) <= site_keyids
    assert fresh.signed.expires > now

    with _inside(gapped, tmp_path) as inside:
        agent = _agent(site, inside)
        assert run_once(agent).outcome.update == "committed"

        # When the timestamp is due, the site's server renews it with its own key
        # (the signer decides "due" on the clock it is given; it signs on the real one).
        later = OnlineSigner(ImageRepository(gapped), now=lambda: now + timedelta(hours=20))
        assert later.run_once().renewed == ("image:timestamp",)
        renewed = _timestamp(gapped)
        assert renewed.signed.version > fresh.signed.version
        assert renewed.signed.expires >= fresh.signed.expires
        assert set(renewed.signatures) <= site_keyids
        assert run_once(agent).outcome.update == "up-to-date"

        # The next export has upstream versions below the site's; the import lifts them.
        site.publish("580.82.07")
        second = _export_lapsing(site, tmp_path / "second.tar", now - timedelta(minutes=1))
        _ok("mirror", "import", str(second), "--repo", str(gapped))
        assert _timestamp(gapped).signed.version > renewed.signed.version
        result = run_once(agent)
        assert result.outcome.update == "committed", result.outcome.reason
        assert result.report.driver_version == "580.82.07"

        # Carrying the first export in again would take targets back: refused.
        served = _timestamp(gapped).signed.version
        assert_one_line_error(
            gpuward("mirror", "import", str(first), "--repo", str(gapped)), "older than"
        )
        assert _timestamp(gapped).signed.version == served


def test_a_site_that_signs_refuses_a_forged_timestamp(site: Site, tmp_path: Path) -> None:
    """The site re-signs what it imports, and a lapsed upstream timestamp is fine;
    one that upstream never signed is not."""
    gapped, _ = _trusted_site(site, tmp_path)
    site.publish("580.65.06")
    root = str(site.base / "trusted-root.json")
    _ok("mirror", "import", _export_lapsing(site, tmp_path / "first", datetime.now(UTC)).as_posix(),
        "--repo", str(gapped), "--trusted-root", root)  # fmt: skip
    forged = _export_lapsing(site, tmp_path / "forged", datetime.now(UTC))
    stamp = forged / "v1/repo/metadata/timestamp.json"
    md = Metadata[Timestamp].from_bytes(stamp.read_bytes())
    md.signed.version = 999999
    md.signatures.clear()
    stamp.write_bytes(md.to_bytes())
    (forged / "MANIFEST.json").write_bytes(manifest_of(forged))
    before = tree(gapped)

    refused = gpuward("mirror", "import", str(forged), "--repo", str(gapped))

    assert_one_line_error(refused, "the export's timestamp is not signed by the keys its root")
    assert tree(gapped) == before


def test_without_site_keys_expired_metadata_is_refused(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    gapped = tmp_path / "gapped"
    now = datetime.now(UTC)
    lapsed = _export_lapsing(site, tmp_path / "lapsed.tar", now - timedelta(minutes=1))
    root = site.base / "trusted-root.json"
    assert_one_line_error(
        gpuward(
            "mirror", "import", str(lapsed), "--repo", str(gapped), "--trusted-root", str(root)
        ),
        "timestamp expired",
        "Air-gapped sites",
    )
    assert not gapped.exists()

    # Imported while fresh (an hour ago), then left to lapse: agents refuse it.
    # python-tuf checks expiry on the real clock, which the import's check (then
    # passed, by construction) cannot be moved back to.
    import_into(lapsed, gapped, now=now - timedelta(hours=1), verify=lambda out: ())
    with _inside(gapped, tmp_path) as inside:
        result = run_once(_agent(site, inside))
    assert result.outcome.update == "refused"
    assert "ExpiredMetadataError" in result.outcome.reason


def test_export_with_expired_offline_roles_is_refused(site: Site, tmp_path: Path) -> None:
    gapped = tmp_path / "gapped"
    _ok("mirror", "site-keys", "--repo", str(gapped), "--site", "vault", "-o", str(tmp_path / "k"))
    export = tmp_path / "export.tar"
    _ok("mirror", "export", "--repo", str(site.repo.root), "--to", str(export))
    # Months on, the offline-signed targets have lapsed: no site key can renew them.
    with pytest.raises(GpuwardError, match="targets metadata expired"):
        import_into(
            export,
            gapped,
            now=datetime.now(UTC) + timedelta(days=200),
            verify=verifier(site.base / "trusted-root.json"),
        )
    assert not (gapped / "metadata").exists()


def test_a_site_stays_trusted_through_rotations_until_it_is_distrusted(
    site: Site, tmp_path: Path
) -> None:
    gapped, site_keys = _trusted_site(site, tmp_path)
    upstream = str(site.repo.root)
    vault = set(ImageRepository(gapped).keyring.keys())
    for role in ("timestamp", "snapshot"):
        before = set(site.repo.root_metadata().signed.roles[role].keyids)
        _ok("keys", "rotate", role, "--repo", upstream)
        after = set(site.repo.root_metadata().signed.roles[role].keyids)
        ours = before - vault
        assert len(ours) == 1 and before & vault  # upstream's key, and the site's
        assert after & vault == before & vault  # the site's stays trusted
        assert not after & ours and len(after - vault) == 1  # upstream's is replaced
    # Removing the site is its own root change; the upstream keys stay.
    removal = tmp_path / "removal.st"
    _site_change(site, "distrust-site", site_keys, removal)
    for role in ("timestamp", "snapshot"):
        trusted = set(site.repo.root_metadata().signed.roles[role].keyids)
        assert not trusted & vault and len(trusted) == 1
    again = ("mirror", "distrust-site", str(site_keys), "--repo", upstream, "-o", str(removal))
    assert_one_line_error(gpuward(*again), "not trusted; nothing to remove")

    # Holding none of the role's keys, rotating says so and changes nothing.
    site.repo.keyring.retire(set(site.repo.root_metadata().signed.roles["snapshot"].keyids))
    version = site.repo.root_metadata().signed.version
    refused = gpuward("keys", "rotate", "snapshot", "--repo", upstream)
    assert_one_line_error(refused, "holds no snapshot key")
    assert site.repo.root_metadata().signed.version == version
