"""Keys in a PKCS#11 token (an HSM; SoftHSM2 in tests), through the field's libraries.

Offline roles (root, targets, branches) and the server's report key may live in
a token instead of a sealed file, so their private halves never leave it.
Signing goes through securesystemslib's ``HSMSigner``: the signer URI
``hsm:ID?label=TOKEN`` names the key, the ``PYKCS11LIB`` variable names the
token's PKCS#11 module, and the keys are ECDSA P-256 (the only kind HSMSigner
signs with besides P-384), so one keyring mixes file keys and token keys.
Creating a key uses python-pkcs11, the library HSMSigner itself is built on.

What this module adds to them: making a key in a token, where the PIN comes
from, a check that a key is usable before any metadata is signed with it, and
errors that name the token and the key and say what to do.
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib import parse

import pkcs11
import pkcs11.exceptions
import pkcs11.util
from pkcs11.util.ec import encode_named_curve_parameters
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import HSMSigner, Signer, SSlibKey

from fleet.errors import GpuwardError
from keys.durable_files import read_bounded

SCHEME = HSMSigner.SCHEME
MODULE_ENV = "PYKCS11LIB"  # where HSMSigner finds the PKCS#11 module
PIN_ENV = "GPUWARD_HSM_PIN"
PIN_FILE_ENV = "GPUWARD_HSM_PIN_FILE"
CURVE = "secp256r1"  # ECDSA P-256: what HSMSigner, SoftHSM2 and OpenSSL all take
MAX_PIN_FILE = 1024
# Signed and checked before a token key signs anything that matters: a wrong
# PIN, a missing key or a key swapped in the token is found before metadata
# is half signed.
_PROBE = b"gpuward: is this the registered key?"

PinSource = Callable[[], str]


def select_module(path: Path | None) -> str:
    """The PKCS#11 module in use: ``path`` when given (it then becomes ``PYKCS11LIB``
    for this process, which is where HSMSigner looks), else ``PYKCS11LIB``."""
    if path is not None:
        if not path.is_file():
            raise GpuwardError(
                f"PKCS#11 module {path} not found; give the token's module "
                "(SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            )
        os.environ[MODULE_ENV] = str(path)
    module = os.environ.get(MODULE_ENV)
    if not module:
        raise GpuwardError(
            f"no PKCS#11 module: give --pkcs11-module or set {MODULE_ENV} to the token's "
            "module (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
        )
    return module


def _token(label: str) -> pkcs11.Token:
    """The token labelled ``label`` (call inside ``token_errors``)."""
    module = select_module(None)
    try:
        library = pkcs11.lib(module)
    except pkcs11.exceptions.PKCS11Error as exc:
        raise GpuwardError(f"cannot load PKCS#11 module {module}: {exc}") from None
    return library.get_token(token_label=label)


def read_pin_file(path: Path) -> str:
    pin = read_bounded(path, MAX_PIN_FILE, "PIN file").decode(errors="replace").rstrip("\r\n")
    if not pin:
        raise GpuwardError(f"PIN file {path} is empty")
    return pin


def pin_from_env_or_prompt(token: str) -> str:
    """The user PIN of ``token``: from the file ``GPUWARD_HSM_PIN_FILE`` names, from
    ``GPUWARD_HSM_PIN``, or typed at a terminal."""
    file = os.environ.get(PIN_FILE_ENV)
    if file:
        return read_pin_file(Path(file))
    pin = os.environ.get(PIN_ENV)
    if pin is not None:
        if not pin:
            raise GpuwardError(f"{PIN_ENV} is set but empty")
        return pin
    if not sys.stdin.isatty():
        raise GpuwardError(
            f"no PIN for PKCS#11 token {token}: set {PIN_FILE_ENV} (a file holding it) "
            f"or {PIN_ENV}, or run in a terminal"
        )
    typed = getpass.getpass(f"PIN of PKCS#11 token {token}: ")
    if not typed:
        raise GpuwardError("an empty PIN is not allowed")
    return typed


def pin_source(token: str) -> PinSource:
    """A PIN callable for ``token`` that asks (or reads) at most once."""
    return functools.cache(lambda: pin_from_env_or_prompt(token))


def token_of(uri: str) -> tuple[str, int]:
    """The token label and key id an ``hsm:ID?label=TOKEN`` URI names."""
    parsed = parse.urlparse(uri)
    label = dict(parse.parse_qsl(parsed.query)).get("label")
    if parsed.scheme != SCHEME or not parsed.path.isdigit() or not label:
        raise GpuwardError(f"{uri!r} is not a token key's URI (hsm:ID?label=TOKEN)")
    return label, int(parsed.path)


@contextmanager
def token_errors(token: str, doing: str) -> Iterator[None]:
    """PKCS#11 failures as one line naming the token, what was being done, and the fix."""
    try:
        yield
    except pkcs11.exceptions.NoSuchToken:
        raise GpuwardError(
            f"no PKCS#11 token labelled {token!r} in {os.environ.get(MODULE_ENV)} ({doing}); "
            "check that it is plugged in and initialised, and the module"
        ) from None
    except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinLenRange):
        raise GpuwardError(
            f"wrong PIN for PKCS#11 token {token} ({doing}); check the PIN you gave "
            f"({PIN_FILE_ENV}, {PIN_ENV}, the prompt, or the server's report_key_pin_file)"
        ) from None
    except pkcs11.exceptions.PinLocked:
        raise GpuwardError(
            f"the PIN of PKCS#11 token {token} is locked after wrong tries ({doing}); "
            "its security officer must unlock it"
        ) from None
    except pkcs11.exceptions.PKCS11Error as exc:
        raise GpuwardError(
            f"PKCS#11 token {token} ({doing}): {type(exc).__name__} {exc}".rstrip()
        ) from None


def _private_key_ids(session: pkcs11.Session) -> dict[int, str]:
    """Every EC private key in the token: its id (as HSMSigner numbers them) and label."""
    found = {}
    query = {
        pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY,
        pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.EC,
    }
    for obj in session.get_objects(query):
        found[int.from_bytes(obj[pkcs11.Attribute.ID], "big")] = str(obj[pkcs11.Attribute.LABEL])
    return found


def key_labels(token: str, pin: PinSource) -> set[str]:
    """The labels of the signing keys ``token`` holds."""
    with token_errors(token, "listing its keys"), _token(token).open(user_pin=pin()) as session:
        return set(_private_key_ids(session).values())


def create_key(token: str, label: str, pin: PinSource) -> tuple[str, SSlibKey]:
    """A new ECDSA P-256 key made inside ``token`` (never extractable), and the
    signer URI and public key that reach it."""
    with token_errors(token, f"creating key {label}"):
        with _token(token).open(rw=True, user_pin=pin()) as session:
            held = _private_key_ids(session)
            if label in held.values():
                raise GpuwardError(
                    f"PKCS#11 token {token} already holds a key labelled {label}; choose another"
                )
            key_id = max(held, default=0) + 1
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(CURVE)},
                local=True,
            )
            params.generate_keypair(
                id=pkcs11.util.biginteger(key_id),
                label=label,
                store=True,
                capabilities=pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY,
                private_template={
                    pkcs11.Attribute.SENSITIVE: True,
                    pkcs11.Attribute.EXTRACTABLE: False,
                },
            )
        # Reading the public key back the way HSMSigner will look for it.
        try:
            return HSMSigner.import_(key_id, token, lambda _secret: pin())
        except ValueError as exc:
            raise GpuwardError(f"PKCS#11 token {token}: key {label} unreadable ({exc})") from None


def find_key(token: str, label: str, pin: PinSource) -> str | None:
    """The signer URI of the key labelled ``label`` in ``token``, if it holds one."""
    with (
        token_errors(token, f"looking for key {label}"),
        _token(token).open(user_pin=pin()) as session,
    ):
        ids = [key_id for key_id, held in _private_key_ids(session).items() if held == label]
    if len(ids) > 1:
        raise GpuwardError(f"PKCS#11 token {token} holds {len(ids)} keys labelled {label}")
    return f"{SCHEME}:{ids[0]}?{parse.urlencode({'label': token})}" if ids else None


def _check_key(name: str, uri: str, pin: PinSource) -> tuple[str, int]:
    """Raise, naming ``name``, unless the token ``uri`` names is there, takes the
    PIN and holds the key; its label and the key's id."""
    token, key_id = token_of(uri)
    with token_errors(token, f"opening key {name}"), _token(token).open(user_pin=pin()) as session:
        if key_id not in _private_key_ids(session):
            raise GpuwardError(
                f"key {name} ({uri}) is not in PKCS#11 token {token}: it was deleted or the "
                "token re-initialised; restore the token from its backup, or replace the key "
                "('gpuward keys rotate ROLE --key NAME' for a repository key)"
            )
    return token, key_id


def read_public(name: str, uri: str, pin: PinSource) -> SSlibKey:
    """The public half of token key ``name``, read from the token."""
    token, key_id = _check_key(name, uri, pin)
    with token_errors(token, f"reading key {name}"):
        try:
            return HSMSigner.import_(key_id, token, lambda _secret: pin())[1]
        except ValueError as exc:  # not a key HSMSigner signs with (another curve)
            raise GpuwardError(f"key {name} ({uri}) cannot be used: {exc}") from None


def open_signer(name: str, uri: str, public_key: SSlibKey, pin: PinSource) -> Signer:
    """A signer for token key ``name``, checked: the token is there, the PIN is
    right, the key is in it and is the one registered under ``name``."""
    token, _ = _check_key(name, uri, pin)
    with token_errors(token, f"signing with key {name}"):
        try:
            signer = Signer.from_priv_key_uri(uri, public_key, lambda _secret: pin())
        except ValueError as exc:  # not a key HSMSigner signs with
            raise GpuwardError(f"key {name} ({uri}) cannot be used: {exc}") from None
        try:
            public_key.verify_signature(signer.sign(_PROBE), _PROBE)
        except UnverifiedSignatureError:
            raise GpuwardError(
                f"PKCS#11 token {token} holds another key at {uri} than the one registered "
                f"as {name}; refusing to sign with it"
            ) from None
    return signer
