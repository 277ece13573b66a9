"""The keys of one image repository, on disk.

Each role has a public description ``<role>.pub.json`` (the key and the signer
URI that reaches its private half) and, for file keys, a private key file next
to it. Offline roles are sealed (``keys.sealed``); online roles, which the
server must use unattended, are plain PKCS#8 files readable only by their owner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib import parse

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from fleet.errors import GpuwardError
from keys import sealed
from keys.storage import atomic_write

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = frozenset({"root", "targets"})

PassphraseSource = Callable[[], str]


@dataclass(frozen=True)
class RoleKey:
    role: str
    public_key: SSlibKey
    uri: str  # as stored: file URIs are relative to the keys directory


class Keyring:
    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir

    @classmethod
    def generate(cls, keys_dir: Path, passphrase: str) -> Keyring:
        """Create one ed25519 key per top-level role; refuse to overwrite keys."""
        if keys_dir.exists() and any(keys_dir.iterdir()):
            raise GpuwardError(f"{keys_dir} already holds keys; choose an empty directory")
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for role in TOP_LEVEL_ROLES:
            signer = CryptoSigner.generate_ed25519()
            private = signer.private_bytes
            if role in OFFLINE_ROLES:
                atomic_write(keys_dir / f"{role}.key", sealed.seal(private, passphrase), 0o600)
                uri = f"{sealed.SealedFileSigner.SCHEME}:{role}.key"
            else:
                atomic_write(keys_dir / f"{role}.key", private, 0o600)
                uri = f"{CryptoSigner.SCHEME}:{role}.key"
            key_doc = {**signer.public_key.to_dict(), "keyid": signer.public_key.keyid}
            doc = {"role": role, "uri": uri, "key": key_doc}
            atomic_write(keys_dir / f"{role}.pub.json", json.dumps(doc, indent=2).encode())
        return cls(keys_dir)

    def role_key(self, role: str) -> RoleKey:
        path = self.dir / f"{role}.pub.json"
        try:
            doc = json.loads(path.read_bytes())
            key_doc = dict(doc["key"])
            keyid = key_doc.pop("keyid")
            key = SSlibKey.from_dict(keyid, key_doc)
            return RoleKey(role=doc["role"], public_key=key, uri=str(doc["uri"]))
        except FileNotFoundError:
            raise GpuwardError(
                f"no key for role {role!r} in {self.dir}; run 'gpuward keys init' first"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuwardError(f"{path}: unreadable key description ({exc})") from None

    def signer(self, role: str, passphrase: PassphraseSource) -> Signer:
        """Open the private key of ``role`` through its signer URI."""
        role_key = self.role_key(role)
        uri = parse.urlparse(role_key.uri)
        absolute = role_key.uri
        if uri.scheme in (CryptoSigner.SCHEME, sealed.SealedFileSigner.SCHEME):
            absolute = f"{uri.scheme}:{self.dir.resolve() / uri.path}"
        try:
            return Signer.from_priv_key_uri(
                absolute, role_key.public_key, secrets_handler=lambda _secret: passphrase()
            )
        except FileNotFoundError:
            raise GpuwardError(f"private key for {role!r} not found under {self.dir}") from None
