"""Publishing refuses every bundle a node would refuse, with the node's reason.

Each hostile bundle of ``tests/agent/test_unpack.py``'s table goes to
``gpuward repo add`` and to ``gpuward repo stage --add-bundle``, the two ways a
bundle gets signed: both refuse it in one line naming the reason a node gives
(the applier's, shown equal in tests/applier/test_hostile_bundles.py), and the
repository is left exactly as it was, nothing stored and nothing signed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keys.bundle import BadBundle, check_bundle
from tests.agent.test_unpack import HOSTILE, hostile_bundle
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_every_hostile_bundle_is_refused_by_repo_add_and_repo_stage(
    site: Site, tmp_path: Path
) -> None:
    site.publish("580.65.06")  # the branch role exists: stage has a role to add to
    repo = str(site.repo.root)
    before = _files(site.repo.root)

    for number, case in enumerate(sorted(HOSTILE)):
        bundle, _, reason = hostile_bundle(case, tmp_path / f"hostile-{number}.bundle")
        with pytest.raises(BadBundle) as node:
            check_bundle(bundle)
        assert reason in str(node.value), case
        staged = tmp_path / f"R580-{number}.staged"

        for command in (
            ("repo", "add", str(bundle), "--repo", repo),
            ("repo", "stage", "R580", "--repo", repo, "--add-bundle", str(bundle), "-o", staged),
        ):
            line = assert_one_line_error(gpuward(*map(str, command)), str(node.value))
            assert str(bundle) in line, case

        assert not staged.exists(), case
        assert _files(site.repo.root) == before, case


def test_bundle_build_refuses_a_payload_nodes_could_not_take(tmp_path: Path) -> None:
    """A payload file whose name no manifest may carry: the node would refuse the
    manifest, so the build does, with its reason, and writes no bundle."""
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "libnvidia ml.so.1").write_bytes(b"driver\n")
    output = tmp_path / "b.bundle"

    built = gpuward(
        "bundle", "build", str(payload), "--driver-version", "580.95.05", "--branch", "R580",
        "--dkms", "-o", str(output),
    )  # fmt: skip

    assert_one_line_error(built, "not written: nodes would refuse it", "'libnvidia ml.so.1'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload"]
