"""``gpuward keys init`` under attack: weak passphrases, and root keys that must be
separate secrets (one per holder, each in the holder's own folder), through the
real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from fleet.errors import GpuwardError
from keys.image_repo import ImageRepository, RootHolder
from keys.keyring import Keyring
from keys.sealed import passphrase_problem
from tests.cli.test_errors import assert_one_line_error

TARGETS = "targets passphrase for the team"
HOLDERS = {"alice": "alice keeps a red notebook", "bob": "bob rides a blue bicycle",
           "carol": "carol sings in the rain 9"}  # fmt: skip


def keys_init(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUWARD_KEY_PASSPHRASE")}
    return subprocess.run(
        [sys.executable, "-m", "gpuward", "keys", "init", *args],
        capture_output=True, text=True, env={**clean, **env}, stdin=subprocess.DEVNULL,
        timeout=120, check=False,
    )  # fmt: skip


def holder_env(passphrases: dict[str, str]) -> dict[str, str]:
    return {f"GPUWARD_KEY_PASSPHRASE_{name.upper()}": p for name, p in passphrases.items()}


def holder_args(tmp_path: Path, names: list[str]) -> list[str]:
    return [arg for n in names for arg in ("--root-holder", f"{n}={tmp_path / 'usb' / n}")]


@pytest.mark.parametrize(
    ("passphrase", "why"),
    [("a", "1 characters; use at least 12"), ("password1234", "obvious"),
     ("123456789012", "obvious"), ("zzzzzzzzzzzzzzzz", "too few different")],
)  # fmt: skip
def test_a_weak_passphrase_is_refused_and_nothing_is_made(
    tmp_path: Path, passphrase: str, why: str
) -> None:
    result = keys_init(str(tmp_path / "repo"), "--single-custodian",
                       env={"GPUWARD_KEY_PASSPHRASE": passphrase})  # fmt: skip
    assert_one_line_error(result, "passphrase for the new offline keys is too weak", why)
    assert not (tmp_path / "repo").exists()


def test_a_weak_holder_passphrase_is_refused(tmp_path: Path) -> None:
    env = {"GPUWARD_KEY_PASSPHRASE": TARGETS, **holder_env({**HOLDERS, "bob": "bob"})}
    result = keys_init(str(tmp_path / "repo"), *holder_args(tmp_path, list(HOLDERS)), env=env)
    assert_one_line_error(result, "root key holder bob is too weak", "at least 12")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "usb").exists()


def test_a_threshold_without_holders_is_refused(tmp_path: Path) -> None:
    result = keys_init(str(tmp_path / "repo"), env={"GPUWARD_KEY_PASSPHRASE": TARGETS})
    assert_one_line_error(result, "--root-holder NAME=DIR (3 times)", "--single-custodian")
    assert not (tmp_path / "repo").exists()
    # Saying so explicitly still works, for tests and demos, and says what it costs.
    single = keys_init(str(tmp_path / "repo"), "--single-custodian",
                       env={"GPUWARD_KEY_PASSPHRASE": TARGETS})  # fmt: skip
    assert single.returncode == 0, single.stderr
    assert "WARNING: all 3 root keys are sealed with one passphrase" in single.stderr


def test_each_holder_gets_only_their_own_root_key(tmp_path: Path) -> None:
    env = {"GPUWARD_KEY_PASSPHRASE": TARGETS, **holder_env(HOLDERS)}
    result = keys_init(str(tmp_path / "repo"), *holder_args(tmp_path, list(HOLDERS)), env=env)
    assert result.returncode == 0, result.stderr
    for name in HOLDERS:
        assert f"root key of {name}: {tmp_path / 'usb' / name}" in result.stdout

    repo = ImageRepository(tmp_path / "repo")
    root: Metadata[Root] = repo.root_metadata()
    root_keyids = set(root.signed.roles["root"].keyids)
    assert len(root_keyids) == 3 and root.signed.roles["root"].threshold == 2
    root.verify_delegate("root", root)  # signed by the holders' keys at init
    # The repository's own folder holds no root key, public or private.
    assert not root_keyids & set(repo.keyring.keys())
    assert not [p for p in repo.keyring.dir.rglob("*") if p.name.startswith("root")]
    assert repo.keyring.sealed_keys() == ["targets-1"]
    for name, passphrase in HOLDERS.items():
        folder = tmp_path / "usb" / name
        assert sorted(p.name for p in folder.iterdir()) == [
            f"root-{name}.key", f"root-{name}.pub.json"
        ]  # fmt: skip
        held = Keyring(folder)
        (key,) = held.keys().values()
        assert key.keyid in root_keyids
        # Only this holder's passphrase opens it: another's, or the targets one, does not.
        for other in (TARGETS, *(p for n, p in HOLDERS.items() if n != name)):
            with pytest.raises(GpuwardError, match="wrong passphrase"):
                Keyring(folder).signer(key, lambda other=other: other)  # type: ignore[misc]
        assert held.signer(key, lambda passphrase=passphrase: passphrase)  # type: ignore[misc]


def test_holders_must_be_separate_secrets(tmp_path: Path) -> None:
    names = list(HOLDERS)
    same = {"GPUWARD_KEY_PASSPHRASE": TARGETS, **holder_env({**HOLDERS, "carol": HOLDERS["bob"]})}
    result = keys_init(str(tmp_path / "repo"), *holder_args(tmp_path, names), env=same)
    assert_one_line_error(result, "share a passphrase")
    reused = {"GPUWARD_KEY_PASSPHRASE": TARGETS, **holder_env({**HOLDERS, "alice": TARGETS})}
    result = keys_init(str(tmp_path / "repo"), *holder_args(tmp_path, names), env=reused)
    assert_one_line_error(result, "alice's passphrase is the targets key's")
    env = {"GPUWARD_KEY_PASSPHRASE": TARGETS, **holder_env(HOLDERS)}
    two = keys_init(str(tmp_path / "repo"), *holder_args(tmp_path, names[:2]), env=env)
    assert_one_line_error(two, "root has 3 keys but 2 holder(s)")
    shared = [*holder_args(tmp_path, names[:2]), "--root-holder", f"carol={tmp_path / 'usb/bob'}"]
    assert_one_line_error(keys_init(str(tmp_path / "repo"), *shared, env=env), "share a folder")
    inside = [*holder_args(tmp_path, names[:2]), "--root-holder", f"carol={tmp_path / 'repo/keys'}"]
    assert_one_line_error(keys_init(str(tmp_path / "repo"), *inside, env=env), "overlaps")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "usb").exists()


def test_the_library_path_keeps_one_passphrase_for_tests_and_demos(tmp_path: Path) -> None:
    """ImageRepository.init without holders (the demo, the test fixtures) still works;
    the policy is the CLI's, which is where people choose passphrases."""
    assert passphrase_problem("correct horse battery staple") is None
    repo = ImageRepository.init(tmp_path / "r", "correct horse battery staple")
    assert repo.keyring.sealed_keys() == ["root-1", "root-2", "root-3", "targets-1"]
    holders = [RootHolder("x", tmp_path / "x", "one passphrase for x")]
    with pytest.raises(GpuwardError, match="root has 3 keys but 1 holder"):
        ImageRepository.init(tmp_path / "r2", "correct horse battery staple", None, None, holders)
