"""The applier refuses special files the unprivileged agent could leave for it.

Root opening a FIFO with no writer blocks forever, reading /dev/zero or a
sparse file never ends, and following a link reads what the agent may not.
Each attack below must be refused, in the journal and in the result, without
the applier hanging: the subprocess timeout fails the test if it does.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from applier.unpack import MAX_BUNDLE_BYTES
from node.journal import load_journal
from node.spool import BUNDLE, TARGET
from tests.applier.helpers import Node, node_with
from tests.conftest import Site

GUARD_S = 60  # far above a refusal's few seconds, far below "stalled until the unit's timeout"


def _fifo(path: Path, tmp: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path, tmp: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()  # the socket file stays


def _device(path: Path, tmp: Path) -> None:
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is


def _link_to_zero(path: Path, tmp: Path) -> None:
    path.symlink_to("/dev/zero")


def _link_to_root_only(path: Path, tmp: Path) -> None:
    secret = tmp / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    path.symlink_to(secret)


def _sparse_huge(path: Path, tmp: Path) -> None:
    with path.open("wb") as f:
        f.truncate(4 * MAX_BUNDLE_BYTES)  # a hole: no disk used, endless to read


def _replace(path: Path, make: Callable[[Path, Path], None], tmp: Path) -> None:
    path.unlink()
    make(path, tmp)


def _refused(node: Node, expected: str) -> str:
    done = node.apply(timeout=GUARD_S)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert (result["outcome"], result["active_slot"]) == ("refused", "a")
    journal = load_journal(node.journal_file)
    assert journal.state == "failed" and expected in journal.reason, journal.reason
    assert expected in result["reason"]
    assert node.slots.content("b") is None
    return str(result["reason"])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(_fifo, "is a FIFO, not a regular file", id="fifo"),
        pytest.param(_socket, "is a socket, not a regular file", id="socket"),
        pytest.param(_device, "is a character device, not a regular file", id="device"),
        pytest.param(
            _link_to_zero, "is a symbolic link, not a regular file", id="link-to-dev-zero"
        ),
        pytest.param(
            _link_to_root_only,
            "is a symbolic link, not a regular file",
            id="link-to-root-only-file",
        ),
        pytest.param(_sparse_huge, "bytes, above the limit of", id="sparse-huge"),
    ],
)
def test_a_special_bundle_is_refused(
    site: Site, tmp_path: Path, make: Callable[[Path, Path], None], expected: str
) -> None:
    node, _ = node_with(site, tmp_path / "node")
    node.spool_newest()
    _replace(node.config.spool_dir / BUNDLE, make, tmp_path)

    reason = _refused(node, expected)

    assert reason.startswith("spooled bundle is unreadable")
    assert "secret" not in reason


@pytest.mark.parametrize("make", [_fifo, _link_to_zero], ids=["fifo", "link-to-dev-zero"])
@pytest.mark.parametrize("where", ["request", "metadata"])
def test_a_special_request_or_metadata_file_is_refused(
    site: Site, tmp_path: Path, make: Callable[[Path, Path], None], where: str
) -> None:
    node, _ = node_with(site, tmp_path / "node")
    node.spool_newest()
    if where == "request":
        path = node.config.spool_dir / TARGET
        _replace(path, make, tmp_path)
    else:
        path = node.config.metadata_dir / "evil.json"
        make(path, tmp_path)
    kind = "a FIFO" if make is _fifo else "a symbolic link"

    reason = _refused(node, f"{path} is {kind}, not a regular file")

    if where == "metadata":
        assert "cached metadata" in reason
        # The bundle is not at fault: it is not named, so the agent may spool it again.
        assert load_journal(node.journal_file).sha256 is None


def test_a_linked_metadata_folder_is_refused(site: Site, tmp_path: Path) -> None:
    node, _ = node_with(site, tmp_path / "node")
    node.spool_newest()
    metadata = node.config.metadata_dir
    metadata.rename(metadata.with_name("elsewhere"))
    metadata.symlink_to(metadata.with_name("elsewhere"))

    _refused(node, f"{metadata} is a symbolic link, not a folder")


def test_only_ngclients_own_root_link_is_kept_in_the_metadata_copy(
    site: Site, tmp_path: Path
) -> None:
    """ngclient's root.json is a link into root_history/; one out of the tree is refused."""
    node, _ = node_with(site, tmp_path / "node")
    node.spool_newest()
    root = node.config.metadata_dir / "root.json"
    assert root.is_symlink()  # what ngclient leaves, and the copy keeps
    _replace(root, _link_to_root_only, tmp_path)

    _refused(node, "root.json is a symbolic link, not a regular file")
