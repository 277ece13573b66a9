"""Offline keys in a PKCS#11 token (SoftHSM2), as an operator uses them and a client judges.

The repository starts with one sealed root key (1 of 1). ``gpuward keys add``
makes a second root key inside the token and raises the threshold to 2 of 2;
``gpuward keys rotate targets --pkcs11-token`` moves the targets key into the
token. From then on root needs the sealed key and the token key together, and
python-tuf's own client (ngclient, against the real server) is the judge of
every root that results, including the ones a ceremony refused to publish.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11.util.ec import encode_named_curve_parameters
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from keys.ceremony import Staged
from keys.image_repo import ImageRepository
from keys.keyring import Keyring, LocalKey
from keys.tuf_repo import RoleSpec
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import PASSPHRASE, Site, make_site
from tests.softhsm import SoftHsm


@pytest.fixture
def served(softhsm: SoftHsm, tmp_path: Path) -> Iterator[Site]:
    """A repository with one sealed root key (1 of 1), served by the real server."""
    template = tmp_path / "template"
    ImageRepository.init(template, PASSPHRASE, {"root": RoleSpec(1, 1)})
    yield from make_site(template, tmp_path / "site", str(tmp_path / "server.db"))


class Client:
    """python-tuf's ngclient on a metadata folder of its own, first trusting root v1."""

    def __init__(self, site: Site, folder: Path) -> None:
        self.site, self.folder = site, folder
        folder.mkdir()
        self._updater(bootstrap=(site.base / "trusted-root.json").read_bytes())

    def _updater(self, bootstrap: bytes | None = None) -> Updater:
        return Updater(
            str(self.folder),
            f"{self.site.url}/v1/repo/metadata/",
            str(self.folder),
            f"{self.site.url}/v1/repo/targets/",
            bootstrap=bootstrap,
        )

    def refresh(self) -> Updater:
        updater = self._updater()
        updater.refresh()
        return updater

    @property
    def root_version(self) -> int:
        return Metadata[Root].from_file(str(self.folder / "root.json")).signed.version


def cli(*args: str) -> dict[str, Any]:
    done = gpuward(*args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def add_token_root_key(site: Site, token: str) -> dict[str, Any]:
    """Root becomes 2 of 2: the sealed root-1 and root-2, made in the token."""
    repo = str(site.repo.root)
    return cli("keys", "add", "root", "--repo", repo, "--pkcs11-token", token, "--threshold", "2")


def named(keys: Path, name: str) -> LocalKey:
    [key] = [k for k in Keyring(keys).keys().values() if k.name == name]
    return key


def keyid(site: Site, name: str) -> str:
    return named(site.repo.keyring.dir, name).keyid


def holder(keys: Path, tmp_path: Path, name: str) -> Path:
    """A key holder's own folder with key ``name`` from ``keys`` (a token key: its
    description only)."""
    folder = tmp_path / f"holder-{name}"
    folder.mkdir()
    for path in keys.glob(f"{name}.*"):
        shutil.copy(path, folder)
    return folder


def stage(site: Site, tmp_path: Path, name: str) -> Path:
    staged = tmp_path / name
    done = gpuward("repo", "stage", "root", "--repo", str(site.repo.root), "-o", str(staged))
    assert done.returncode == 0, done.stderr
    return staged


def sign(staged: Path, keys: Path) -> str:
    done = gpuward("keys", "sign", str(staged), "--keys", str(keys))
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused_by_clients(site: Site, staged: list[Path], *clients: Client) -> None:
    """Publishing each of ``staged`` (the same next root version) is refused; served
    anyway (by a repository holder who skips the check), every client refuses it too."""
    for path in staged:
        publish = gpuward("repo", "publish", str(path), "--repo", str(site.repo.root))
        assert_one_line_error(publish, "not enough valid signatures")
    for path in staged:
        bad = Staged.read(path).metadata
        site.repo.write(bad, "root")
        for client in clients:
            with pytest.raises(UnsignedMetadataError):
                client.refresh()
            assert client.root_version == bad.signed.version - 1  # the last good one


def test_root_and_targets_keys_in_the_token_sign_beside_a_sealed_key(
    served: Site, softhsm: SoftHsm, tmp_path: Path
) -> None:
    client = Client(served, tmp_path / "client")
    repo = str(served.repo.root)

    added = add_token_root_key(served, softhsm.label)
    assert (added["key"], added["threshold"], added["keys"]) == ("root-2", 2, 2)
    assert added["uri"].startswith("hsm:") and f"label={softhsm.label}" in added["uri"]
    rotated = cli("keys", "rotate", "targets", "--repo", repo, "--pkcs11-token", softhsm.label)
    assert rotated["keys"] == ["targets-2"] and rotated["root_version"] == 3

    root = served.repo.root_metadata().signed
    assert set(root.roles["root"].keyids) == {
        keyid(served, "root-1"), keyid(served, "root-2")
    }  # fmt: skip
    assert root.roles["root"].threshold == 2
    assert root.roles["targets"].keyids == [keyid(served, "targets-2")]
    assert root.keys[keyid(served, "targets-2")].scheme == "ecdsa-sha2-nistp256"
    # Nothing private of the token keys is on disk: their descriptions only.
    keys = served.repo.keyring.dir
    assert not list(keys.glob("root-2.key")) and not list(keys.glob("targets-2.key"))
    with softhsm.session() as session:
        private = session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})
        labels = {obj[pkcs11.Attribute.LABEL] for obj in private}
    assert labels == {"root-2", "targets-2"}

    # The targets key in the token delegates the new branch R580 as the bundle is added.
    bundle = served.bundle("580.65.06")
    added_bundle = gpuward("repo", "add", str(bundle), "--repo", repo)
    assert added_bundle.returncode == 0, added_bundle.stderr

    updater = client.refresh()  # v1 -> v2 -> v3, each checked against the one before
    assert client.root_version == 3
    info = updater.get_targetinfo(f"drivers/R580/{bundle.name}")
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == bundle.read_bytes()


def test_root_needs_both_the_token_signature_and_the_sealed_one(
    served: Site, softhsm: SoftHsm, tmp_path: Path
) -> None:
    add_token_root_key(served, softhsm.label)
    client = Client(served, tmp_path / "client")
    keys = served.repo.keyring.dir
    sealed, token = holder(keys, tmp_path, "root-1"), holder(keys, tmp_path, "root-2")
    repo = str(served.repo.root)

    staged = stage(served, tmp_path, "v3.staged")
    assert "1 of 2 needed" in sign(staged, sealed)
    publish = gpuward("repo", "publish", str(staged), "--repo", repo)
    assert_one_line_error(publish, "not enough valid signatures")
    assert "2 of 2 needed" in sign(staged, token)
    published = gpuward("repo", "publish", str(staged), "--repo", repo)
    assert published.returncode == 0, published.stderr
    client.refresh()
    assert client.root_version == 3

    # Either signature alone: refused by the ceremony, and by clients if served anyway.
    late = Client(served, tmp_path / "late")  # still at root v1
    halves = {
        alone: stage(served, tmp_path, f"v4-{alone.name}.staged") for alone in (sealed, token)
    }
    for alone, half in halves.items():
        assert "1 of 2 needed" in sign(half, alone)
    refused_by_clients(served, list(halves.values()), client, late)


def test_rotating_the_token_key_out(served: Site, softhsm: SoftHsm, tmp_path: Path) -> None:
    add_token_root_key(served, softhsm.label)
    client = Client(served, tmp_path / "client")
    client.refresh()
    old = keyid(served, "root-2")

    repo = str(served.repo.root)
    rotated = cli(
        "keys", "rotate", "root", "--repo", repo, "--key", "root-2",
        "--pkcs11-token", softhsm.label,
    )  # fmt: skip
    assert rotated["keys"] == ["root-3"] and rotated["uris"][0].startswith("hsm:")
    root = served.repo.root_metadata()
    assert set(root.signed.roles["root"].keyids) == {
        keyid(served, "root-1"), keyid(served, "root-3")
    }  # fmt: skip
    retired_keys = served.repo.keyring.dir / "retired"
    assert named(retired_keys, "root-2").keyid == old

    client.refresh()  # from v2, signed by root-1 and root-2 and by root-1 and root-3
    assert client.root_version == 3
    fresh = Client(served, tmp_path / "fresh")
    fresh.refresh()
    assert fresh.root_version == 3

    # The old token key (still in the token) no longer counts towards a new root.
    retired = holder(retired_keys, tmp_path, "root-2")
    staged = stage(served, tmp_path, "v4.staged")
    assert_one_line_error(gpuward("keys", "sign", str(staged), "--keys", str(retired)),
                          "none of the keys")  # fmt: skip
    sign(staged, holder(served.repo.keyring.dir, tmp_path, "root-1"))
    forged = Staged.read(staged)
    retired_ring = Keyring(retired_keys)
    forged.metadata.sign(
        retired_ring.signer(named(retired_keys, "root-2"), lambda: PASSPHRASE), append=True
    )
    assert set(forged.metadata.signatures) == {keyid(served, "root-1"), old}
    staged.write_bytes(forged.to_bytes())
    refused_by_clients(served, [staged], client, fresh)


def test_a_wrong_pin_is_named_and_changes_nothing(
    served: Site, softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_token_root_key(served, softhsm.label)
    repo = str(served.repo.root)
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("000000\n")
    monkeypatch.setenv("GPUWARD_HSM_PIN_FILE", str(wrong))
    done = gpuward("keys", "rotate", "targets", "--repo", repo)
    assert_one_line_error(
        done, f"wrong PIN for PKCS#11 token {softhsm.label}", "opening key root-2"
    )
    done = gpuward("keys", "add", "targets", "--repo", repo, "--pkcs11-token", softhsm.label)
    assert_one_line_error(done, "wrong PIN")
    monkeypatch.delenv("GPUWARD_HSM_PIN_FILE")
    done = gpuward("keys", "rotate", "targets", "--repo", repo)
    assert_one_line_error(done, f"no PIN for PKCS#11 token {softhsm.label}", "GPUWARD_HSM_PIN")
    assert served.repo.root_metadata().signed.version == 2

    monkeypatch.setenv("GPUWARD_HSM_PIN_FILE", str(softhsm.pin_file))
    done = gpuward("keys", "add", "targets", "--repo", repo, "--pkcs11-token", "no-such-token")
    assert_one_line_error(done, "no PKCS#11 token labelled 'no-such-token'")
    monkeypatch.delenv("PYKCS11LIB")
    done = gpuward("keys", "rotate", "targets", "--repo", repo)
    assert_one_line_error(done, "no PKCS#11 module", "PYKCS11LIB")
    assert served.repo.root_metadata().signed.version == 2


def test_online_keys_stay_out_of_tokens(served: Site, softhsm: SoftHsm) -> None:
    """The server signs snapshot and timestamp unattended: it holds no token or PIN."""
    repo = str(served.repo.root)
    for role in ("snapshot", "timestamp"):
        done = gpuward("keys", "rotate", role, "--repo", repo, "--pkcs11-token", softhsm.label)
        assert_one_line_error(done, f"{role} keys sign unattended on the server")
    assert served.repo.root_metadata().signed.version == 1


def test_a_key_gone_from_the_token_is_named(served: Site, softhsm: SoftHsm, tmp_path: Path) -> None:
    add_token_root_key(served, softhsm.label)
    softhsm.destroy("root-2")
    done = gpuward("keys", "rotate", "targets", "--repo", str(served.repo.root))
    assert_one_line_error(done, "key root-2", f"is not in PKCS#11 token {softhsm.label}")
    assert served.repo.root_metadata().signed.version == 2


def test_another_key_in_the_registered_place_is_refused(
    served: Site, softhsm: SoftHsm, tmp_path: Path
) -> None:
    add_token_root_key(served, softhsm.label)
    key_id = softhsm.destroy("root-2")
    with softhsm.session() as session:  # a new key where root-2 was: same id, same label
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(id=key_id, label="root-2", store=True)
    done = gpuward("keys", "rotate", "targets", "--repo", str(served.repo.root))
    assert_one_line_error(done, "holds another key", "registered as root-2")
    assert served.repo.root_metadata().signed.version == 2


def test_a_token_key_outside_root_cannot_sign_it(
    served: Site, softhsm: SoftHsm, tmp_path: Path
) -> None:
    add_token_root_key(served, softhsm.label)
    client = Client(served, tmp_path / "client")
    client.refresh()
    intruder = Keyring(tmp_path / "intruder")
    key = intruder.generate_in_token("intruder", softhsm.label)

    staged = stage(served, tmp_path, "v3.staged")
    done = gpuward("keys", "sign", str(staged), "--keys", str(intruder.dir))
    assert_one_line_error(done, "none of the keys", "may sign root")
    # Its signature beside a real one, forced into the file: still one short.
    sign(staged, holder(served.repo.keyring.dir, tmp_path, "root-1"))
    forged = Staged.read(staged)
    forged.metadata.sign(intruder.signer(key, lambda: PASSPHRASE), append=True)
    assert len(forged.metadata.signatures) == 2
    staged.write_bytes(forged.to_bytes())
    refused_by_clients(served, [staged], client)
