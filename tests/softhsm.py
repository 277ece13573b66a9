"""A fresh SoftHSM2 token for each test: the PKCS#11 token gpuward's keys go in.

SoftHSM2 reads its configuration (``SOFTHSM2_CONF``: where its tokens live)
when a process initialises the module, so each test gets its own config and
token folder, ``softhsm2-util --init-token --free`` makes the token, and the
module is unloaded from the test process around the test: the next test's
token is then the one this process sees. ``gpuward`` commands the test runs
inherit the environment: the module (``PYKCS11LIB``) and the PIN file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian's softhsm2 (libsofthsm2)
TOKEN = "gpuward-test"
PIN = "246813"
SO_PIN = "975310"


@dataclass(frozen=True)
class SoftHsm:
    label: str
    pin_file: Path
    folder: Path

    def session(self) -> pkcs11.Session:
        """A read-write session as the token's user, for what a test does behind
        gpuward's back (python-pkcs11, the library HSMSigner uses)."""
        token = pkcs11.lib(str(MODULE)).get_token(token_label=self.label)
        return token.open(rw=True, user_pin=PIN)

    def destroy(self, label: str) -> bytes:
        """Delete the key pair labelled ``label`` from the token; its id."""
        with self.session() as session:
            objects = list(session.get_objects({pkcs11.Attribute.LABEL: label}))
            assert objects, f"no object labelled {label} in the token"
            key_id = bytes(objects[0][pkcs11.Attribute.ID])
            for obj in objects:
                obj.destroy()
        return key_id


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    assert util is not None and MODULE.is_file(), "SoftHSM2 missing: 'make setup' installs it"
    folder = tmp_path / "softhsm"
    (folder / "tokens").mkdir(parents=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    pin_file = folder / "pin"
    pin_file.write_text(PIN + "\n")
    monkeypatch.setenv("PYKCS11LIB", str(MODULE))
    monkeypatch.setenv("GPUWARD_HSM_PIN_FILE", str(pin_file))
    monkeypatch.delenv("GPUWARD_HSM_PIN", raising=False)
    pkcs11.unload(str(MODULE))  # a module an earlier test loaded saw that test's token
    yield SoftHsm(TOKEN, pin_file, folder)
    pkcs11.unload(str(MODULE))
