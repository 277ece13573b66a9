"""Signed hostile bundles reach a node anyway: the applier refuses each cleanly.

``repo add`` refuses every bundle in ``tests/agent/test_unpack.py``'s table, so
only a stolen branch key could sign one; here one does. Each bundle is spooled
as the agent would spool it, and the real applier must refuse it with the
reason ``repo add`` gives, journal it as failed (naming the bundle, so the
agent never hands it over again), empty the spool, leave no scratch folder and
leave the running slot as it was; the next start then has nothing to do, so a
hostile bundle can never keep a node restarting the applier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from agent.channel import ImageChannel
from fleet.manifest import BundleManifest, target_path
from keys.bundle import BadBundle, check_bundle
from keys.image_repo import ImageRepository
from node.journal import load_journal
from node.spool import has_request, write_spool
from tests.agent.test_unpack import HOSTILE, hostile_bundle
from tests.applier.helpers import node_with
from tests.conftest import PASSPHRASE, Site


def sign_anyway(repo: ImageRepository, bundles: dict[str, tuple[Path, BundleManifest]]) -> None:
    """What a stolen branch key can do: sign bundles without the publishing checks,
    each under the manifest it claims, in one new version of their branch role."""
    branch = {manifest.branch for _, manifest in bundles.values()}.pop()
    role = repo.targets(branch)
    for path, (bundle, manifest) in bundles.items():
        info = TargetFile.from_file(path, str(bundle), ["sha256"])
        info.unrecognized_fields["custom"] = {"manifest": manifest.to_dict()}
        repo.store_target(bundle, path, info.hashes["sha256"])
        role.signed.targets[path] = info
    repo.bump(role, branch)
    repo.sign_and_write(role, lambda: PASSPHRASE, role=branch)
    repo.publish_snapshot({branch: role.signed.version})


def test_every_hostile_bundle_signed_anyway_is_refused_cleanly(site: Site, tmp_path: Path) -> None:
    node, _ = node_with(site, tmp_path / "node")
    running = node.files("a")
    bundles, reasons = {}, {}
    for number, case in enumerate(sorted(HOSTILE)):
        bundle, manifest, _ = hostile_bundle(case, tmp_path / f"hostile-{number}.bundle")
        path = target_path(manifest, bundle.name)
        bundles[path] = (bundle, manifest)
        with pytest.raises(BadBundle) as publisher:
            check_bundle(bundle)  # what repo add refuses it with
        reasons[path] = (case, str(publisher.value))
    sign_anyway(site.repo, bundles)
    channel = ImageChannel(node.config)
    channel.refresh()

    for path, (case, reason) in reasons.items():
        info = channel.targetinfo(path)
        assert info is not None
        write_spool(node.config.spool_dir, info, channel.fetch(info))

        done = node.apply(timeout=60)

        assert done.returncode == 3, f"{case}: {done.stderr}"
        result = json.loads(done.stdout)
        assert (result["outcome"], result["reason"]) == ("refused", reason), case
        journal = load_journal(node.journal_file)
        assert (journal.state, journal.reason, journal.target_path, journal.sha256) == (
            "failed",
            reason,
            path,
            info.hashes["sha256"],
        ), case
        assert not has_request(node.config.spool_dir), case
        assert not any(node.config.spool_dir.iterdir()), case
        assert sorted(p.name for p in node.slots.root.iterdir()) == ["a", "active"], case
        assert node.slots.active() == "a" and node.files("a") == running, case
        assert node.outcome() == "nothing", case  # consumed: no start after it
