"""Private keys sealed with a passphrase, usable as securesystemslib signers.

Offline keys (root, targets) never rest in clear text: the PKCS#8 private key is
encrypted with an XSalsa20-Poly1305 secret box (pynacl) under a key derived from
the passphrase with argon2id. The file is opened through the ``gpuward-sealed:``
signer URI scheme, so code that signs only ever sees a ``Signer`` and a
hardware or KMS signer can replace the file without changing it.
"""

from __future__ import annotations

import functools
import getpass
import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib import parse

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)

from fleet.errors import GpuwardError
from keys.durable_files import read_bounded

FORMAT = "gpuward-sealed-key/1"
PASSPHRASE_ENV = "GPUWARD_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
# argon2id "moderate": 3 passes over 256 MiB, about 0.7 s here. Offline keys are
# opened a handful of times per signing session, so the cost is paid gladly.
OPSLIMIT = argon2id.OPSLIMIT_MODERATE
MEMLIMIT = argon2id.MEMLIMIT_MODERATE
MAX_SEALED_FILE = 64 * 1024


class WrongPassphrase(GpuwardError):
    pass


def seal(private_pem: bytes, passphrase: str) -> bytes:
    """Return the sealed-key file content for ``private_pem``."""
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, OPSLIMIT, MEMLIMIT))
    doc = {
        "format": FORMAT,
        "kdf": {"name": "argon2id", "opslimit": OPSLIMIT, "memlimit": MEMLIMIT, "salt": salt.hex()},
        "secretbox": bytes(box.encrypt(private_pem)).hex(),
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def unseal(sealed: bytes, passphrase: str, *, where: str) -> bytes:
    """Return the private key PEM inside a sealed-key file."""
    try:
        doc: dict[str, Any] = json.loads(sealed)
        if doc["format"] != FORMAT or doc["kdf"]["name"] != "argon2id":
            raise ValueError("unknown format")
        kdf = doc["kdf"]
        opslimit, memlimit = int(kdf["opslimit"]), int(kdf["memlimit"])
        salt = bytes.fromhex(kdf["salt"])
        ciphertext = bytes.fromhex(doc["secretbox"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GpuwardError(f"{where}: not a gpuward sealed key file ({exc})") from None
    # Bound the KDF cost a tampered file could demand before asking for memory.
    if not (
        1 <= opslimit <= argon2id.OPSLIMIT_SENSITIVE and memlimit <= argon2id.MEMLIMIT_SENSITIVE
    ):
        raise GpuwardError(f"{where}: refusing unreasonable key derivation parameters")
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    try:
        return bytes(box.decrypt(ciphertext))
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase(
            f"{where}: wrong passphrase (or the key file was altered); "
            f"check {PASSPHRASE_ENV} or the passphrase you typed"
        ) from None


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if len(salt) != argon2id.SALTBYTES:
        raise GpuwardError("sealed key: bad salt length")
    return bytes(
        argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            passphrase.encode(),
            salt,
            opslimit=opslimit,
            memlimit=memlimit,
        )
    )


MIN_PASSPHRASE = 12
# Guessed first by anyone holding a stolen key file: argon2id slows each guess,
# it does not make these ones any less likely.
_OBVIOUS = (
    "password", "passphrase", "passw0rd", "letmein", "qwerty", "azerty", "123456",
    "abcdef", "gpuward", "changeme", "secret", "admin", "root", "iloveyou", "welcome",
    "qwertyuiop", "asdfghjkl", "zxcvbnm",
)  # fmt: skip


def passphrase_problem(passphrase: str) -> str | None:
    """What makes ``passphrase`` too weak to seal a new offline key, if anything."""
    if len(passphrase) < MIN_PASSPHRASE:
        return f"it has {len(passphrase)} characters; use at least {MIN_PASSPHRASE}"
    if len(set(passphrase)) < 5:
        return "it repeats too few different characters"
    folded = "".join(c for c in passphrase.lower() if c.isalnum())
    for word in sorted(_OBVIOUS, key=len, reverse=True):
        folded = folded.replace(word, "")
    if len(set(folded)) < 5 or _run(folded):
        return "it is built from obvious words or sequences"
    return None


def _run(text: str) -> bool:
    """Whether ``text`` counts up or down one step at a time (``789012``, ``fedcba``)."""
    steps = {
        (ord(b) - ord(a)) % (10 if a.isdigit() and b.isdigit() else 256)
        for a, b in itertools.pairwise(text)
    }
    return steps in ({1}, {255}, {9})


def env_name(holder: str | None) -> str:
    """The variable holding the passphrase (of one root key holder, if named)."""
    if holder is None:
        return PASSPHRASE_ENV
    return f"{PASSPHRASE_ENV}_{''.join(c if c.isalnum() else '_' for c in holder.upper())}"


def passphrase_from_env_or_prompt(
    purpose: str, *, confirm: bool = False, holder: str | None = None
) -> str:
    """The passphrase for offline keys: environment for automation, else a prompt.

    ``confirm`` is for a passphrase sealing new keys: asked twice, and held to
    the passphrase policy. ``holder``: one root key holder's own passphrase,
    from their own variable.
    """
    variable = env_name(holder)
    env = os.environ.get(variable)
    if env is not None:
        if not env:
            raise GpuwardError(f"{variable} is set but empty")
        first = env
    elif not sys.stdin.isatty():
        raise GpuwardError(f"no passphrase for {purpose}: set {variable} or run in a terminal")
    else:
        first = getpass.getpass(f"Passphrase for {purpose}: ")
        if confirm and getpass.getpass("Repeat passphrase: ") != first:
            raise GpuwardError("passphrases do not match")
        if not first:
            raise GpuwardError("an empty passphrase is not allowed")
    problem = passphrase_problem(first) if confirm else None
    if problem is not None:
        raise GpuwardError(
            f"the passphrase for {purpose} is too weak: {problem} "
            "(several unrelated words make a good one)"
        )
    return first


def passphrase_source(purpose: str) -> Callable[[], str]:
    """A passphrase callable that asks (or reads the environment) at most once."""
    return functools.cache(lambda: passphrase_from_env_or_prompt(purpose))


class SealedFileSigner(Signer):
    """A signer whose private key is a sealed file: ``gpuward-sealed:/path``."""

    SCHEME = "gpuward-sealed"

    def __init__(self, inner: CryptoSigner) -> None:
        self._inner = inner

    @property
    def public_key(self) -> Key:
        return self._inner.public_key

    def sign(self, payload: bytes) -> Signature:
        return self._inner.sign(payload)

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> SealedFileSigner:
        uri = parse.urlparse(priv_key_uri)
        if uri.scheme != cls.SCHEME:
            raise ValueError(f"SealedFileSigner does not support {priv_key_uri}")
        if secrets_handler is None:
            raise ValueError("a sealed key needs a secrets handler for its passphrase")
        if not isinstance(public_key, SSlibKey):
            raise ValueError(f"expected an SSlibKey for {priv_key_uri}")
        path = Path(uri.path)
        sealed = read_bounded(path, MAX_SEALED_FILE, "private key")
        pem = unseal(sealed, secrets_handler("passphrase"), where=str(path))
        inner = CryptoSigner(load_pem_private_key(pem, None), public_key)
        return cls(inner)


SIGNER_FOR_URI_SCHEME[SealedFileSigner.SCHEME] = SealedFileSigner
