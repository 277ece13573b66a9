"""The private keys a repository directory holds, on disk.

Each key has a public description ``<name>.pub.json`` (the key and the signer
URI that reaches its private half) and, for file keys, a private key file next
to it; keys in a PKCS#11 token (``keys.hsm``) have only the description, whose
``hsm:`` URI names the token and the key. Which role a key signs for is not
stored here: the root metadata (and, for branch roles, the targets
delegations) is the one authority on that.
Offline keys are sealed (``keys.sealed``); online keys, which the server uses
unattended, are plain PKCS#8 files readable only by their owner. Retired keys
move to ``retired/`` so a rotation never destroys key material silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib import parse

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from fleet.errors import GpuwardError
from keys import hsm, sealed
from keys.durable_files import atomic_write

PassphraseSource = Callable[[], str]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class LocalKey:
    name: str
    public_key: SSlibKey
    uri: str  # as stored: file URIs are relative to the keys directory

    @property
    def keyid(self) -> str:
        return str(self.public_key.keyid)


class Keyring:
    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir
        # Opening a sealed key costs a deliberate ~0.7 s of argon2id; keep what
        # this process opened for its lifetime (one CLI command, one test).
        self._opened: dict[str, Signer] = {}
        # Keys made here for another custodian (generate_held): their private
        # halves and descriptions are in the custodian's folder, not here, but
        # this process may sign with them until it ends (the first root).
        self._held: dict[str, LocalKey] = {}
        # One PIN source per token: each token's PIN is asked (or read) once.
        self._pins: dict[str, hsm.PinSource] = {}

    def pin(self, token: str) -> hsm.PinSource:
        """The PIN of ``token`` (``keys.hsm.pin_from_env_or_prompt``), asked for once."""
        if token not in self._pins:
            self._pins[token] = hsm.pin_source(token)
        return self._pins[token]

    def generate(self, name: str, *, passphrase: str | None) -> LocalKey:
        """A new ed25519 key; sealed with ``passphrase`` unless it is None (online key)."""
        return self._store(name, CryptoSigner.generate_ed25519(), passphrase)

    def generate_in_token(self, name: str, token: str) -> LocalKey:
        """A new key made inside PKCS#11 ``token`` (labelled ``name`` there); only
        its description is written here."""
        self._check_new(name)
        uri, public_key = hsm.create_key(token, name, self.pin(token))
        return self.add_external(name, public_key, uri)

    def _check_new(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise GpuwardError(f"invalid key name {name!r}")
        if (self.dir / f"{name}.pub.json").exists():
            raise GpuwardError(f"key {name} already exists in {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _store(self, name: str, signer: CryptoSigner, passphrase: str | None) -> LocalKey:
        self._check_new(name)
        private = signer.private_bytes
        if passphrase is not None:
            atomic_write(self.dir / f"{name}.key", sealed.seal(private, passphrase), 0o600)
            uri = f"{sealed.SealedFileSigner.SCHEME}:{name}.key"
        else:
            atomic_write(self.dir / f"{name}.key", private, 0o600)
            uri = f"{CryptoSigner.SCHEME}:{name}.key"
        key = LocalKey(name, signer.public_key, uri)
        self._write_description(key)
        return key

    def generate_held(self, name: str, folder: Path, passphrase: str) -> LocalKey:
        """A new sealed key written to ``folder`` alone (a custodian's own media),
        usable by this keyring until the process ends, never stored here."""
        if folder.resolve() == self.dir.resolve():
            raise GpuwardError(f"{folder} is this repository's keys folder; give the holder's own")
        holder = Keyring(folder)
        signer = CryptoSigner.generate_ed25519()
        key = holder._store(name, signer, passphrase)
        self._opened[key.keyid] = signer
        self._held[key.keyid] = key
        return key

    def add_external(self, name: str, public_key: SSlibKey, uri: str) -> LocalKey:
        """Register a key whose private half lives elsewhere (HSM, KMS) by its signer URI."""
        key = LocalKey(name, public_key, uri)
        self._write_description(key)
        return key

    def _write_description(self, key: LocalKey) -> None:
        doc = {
            "name": key.name,
            "uri": key.uri,
            "key": {**key.public_key.to_dict(), "keyid": key.keyid},
        }
        atomic_write(self.dir / f"{key.name}.pub.json", json.dumps(doc, indent=2).encode())

    def keys(self) -> dict[str, LocalKey]:
        """Every usable key here, by keyid."""
        found = {}
        for path in sorted(self.dir.glob("*.pub.json")):
            key = self._read(path)
            found[key.keyid] = key
        return found

    def sealed_keys(self) -> list[str]:
        """The names of the sealed (offline) keys whose private halves are here."""
        scheme = f"{sealed.SealedFileSigner.SCHEME}:"
        return [
            key.name
            for key in self.keys().values()
            if key.uri.startswith(scheme) and (self.dir / key.uri.removeprefix(scheme)).exists()
        ]

    def _read(self, path: Path) -> LocalKey:
        try:
            doc = json.loads(path.read_bytes())
            key_doc = dict(doc["key"])
            keyid = key_doc.pop("keyid")
            return LocalKey(str(doc["name"]), SSlibKey.from_dict(keyid, key_doc), str(doc["uri"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuwardError(f"{path}: unreadable key description ({exc})") from None

    def signer(self, key: LocalKey, passphrase: PassphraseSource) -> Signer:
        """Open the private half of ``key`` through its signer URI."""
        if key.keyid in self._opened:
            return self._opened[key.keyid]
        uri = parse.urlparse(key.uri)
        if uri.scheme == hsm.SCHEME:
            token, _ = hsm.token_of(key.uri)
            signer = hsm.open_signer(key.name, key.uri, key.public_key, self.pin(token))
            self._opened[key.keyid] = signer
            return signer
        absolute = key.uri
        if uri.scheme in (CryptoSigner.SCHEME, sealed.SealedFileSigner.SCHEME):
            absolute = f"{uri.scheme}:{self.dir.resolve() / uri.path}"
        try:
            signer = Signer.from_priv_key_uri(
                absolute, key.public_key, secrets_handler=lambda _secret: passphrase()
            )
        except FileNotFoundError:
            raise GpuwardError(f"private key of {key.name} not found under {self.dir}") from None
        except GpuwardError:
            raise
        except (ValueError, OSError) as exc:  # a file there, but not a key one can open
            raise GpuwardError(
                f"private key of {key.name} ({key.uri} under {self.dir}) cannot be used: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._opened[key.keyid] = signer
        return signer

    def signers(
        self, role: str, keyids: Iterable[str], threshold: int, passphrase: PassphraseSource
    ) -> list[Signer]:
        """Signers for ``threshold`` of ``keyids``, or an error saying what is missing."""
        local = {**self.keys(), **self._held}
        usable = [local[k] for k in keyids if k in local]
        if len(usable) < threshold:
            raise GpuwardError(
                f"role {role} needs {threshold} signature(s) but only {len(usable)} of its keys "
                f"are in {self.dir}; collect the others with 'gpuward repo stage' and "
                "'gpuward keys sign'"
            )
        return [self.signer(k, passphrase) for k in usable[:threshold]]

    def retire(self, keyids: Iterable[str]) -> None:
        local = self.keys()
        retired = self.dir / "retired"
        retired.mkdir(exist_ok=True, mode=0o700)
        for keyid in keyids:
            key = local.get(keyid)
            if key is None:
                continue
            for suffix in (".pub.json", ".key"):
                path = self.dir / f"{key.name}{suffix}"
                if path.exists():
                    path.rename(retired / path.name)
