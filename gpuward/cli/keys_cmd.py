"""``gpuward keys``: create and manage repository keys."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import GpuwardError
from gpuward.cli.output import add_json_flag, emit

if TYPE_CHECKING:
    from keys.tuf_repo import RoleSpec

_HOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("keys", help="repository keys")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="create keys and initial signed metadata for an image repository",
        description=(
            "Create ed25519 keys for root, targets, snapshot and timestamp, and the first "
            "signed metadata. The targets key is sealed with a passphrase (prompted, or "
            "GPUWARD_KEY_PASSPHRASE). Each root key is sealed for its own holder: name one "
            "--root-holder per root key; each gets their key in their own folder, sealed with "
            "their own passphrase (prompted, or GPUWARD_KEY_PASSPHRASE_<NAME>), so the root "
            "threshold means that many separate people and secrets. Passphrases need at least "
            "12 characters and no obvious words or sequences."
        ),
    )
    init.add_argument("dir", type=Path, help="new repository directory")
    init.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="ROLE=T/N",
        help="N keys for ROLE, T of which must sign (default root=2/3, others 1/1); repeatable",
    )
    init.add_argument(
        "--expiry",
        action="append",
        default=[],
        metavar="ROLE=DAYS",
        help="validity of ROLE's metadata (defaults: root 365, targets and branches 90, "
        "snapshot 7, timestamp 1); repeatable",
    )
    init.add_argument(
        "--root-holder",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a root key's holder and the folder (their removable media) that gets their key "
        "alone; one per root key; repeatable",
    )
    init.add_argument(
        "--single-custodian",
        action="store_true",
        help="tests and demos only: seal every root key with the one passphrase, in the "
        "repository's keys/ (one stolen folder and passphrase then defeat the root threshold)",
    )
    add_json_flag(init)
    init.set_defaults(func=_init)

    sign = sub.add_parser(
        "sign", help="sign a staged metadata file with the keys in a keys directory (offline)"
    )
    sign.add_argument("staged", type=Path, help="file written by 'gpuward repo stage'")
    sign.add_argument("--keys", type=Path, required=True, help="directory holding your key(s)")
    _add_module_flag(sign)
    sign.set_defaults(func=_sign)

    add = sub.add_parser(
        "add",
        help="make a key inside a PKCS#11 token (an HSM) and add it to root or targets",
        description=(
            "Make an ECDSA P-256 key inside the PKCS#11 token (it never leaves it), record "
            "its public key and signer URI (hsm:ID?label=TOKEN) in keys/, and sign a new root "
            "that adds it to ROLE, with a threshold of the current root keys and of the new "
            "root's. The token's user PIN comes from the file GPUWARD_HSM_PIN_FILE names, "
            "from GPUWARD_HSM_PIN, or a prompt; its module from --pkcs11-module or PYKCS11LIB. "
            "Signing with a token key later (repo add, keys sign, keys rotate) needs the same."
        ),
    )
    add.add_argument("role", choices=("root", "targets"))
    add.add_argument("--repo", type=Path, required=True, help="repository directory")
    add.add_argument("--pkcs11-token", required=True, metavar="LABEL", help="the token's label")
    _add_module_flag(add)
    add.add_argument(
        "--threshold",
        type=int,
        metavar="N",
        help="the role's threshold in the new root (default: unchanged)",
    )
    add_json_flag(add)
    add.set_defaults(func=_add)

    rotate = sub.add_parser(
        "rotate",
        help="replace the keys of a role (top-level or a branch) this repository holds",
        description=(
            "Generate new keys for ROLE in place of those in keys/, sign a new root with a "
            "threshold of the old and the new root keys, re-sign what the role signs, and move "
            "the old keys to keys/retired/. Keys held elsewhere (an air-gapped site's timestamp "
            "and snapshot keys) stay trusted."
        ),
    )
    rotate.add_argument("role", help="root, targets, snapshot, timestamp, or a branch such as R580")
    rotate.add_argument("--repo", type=Path, required=True, help="repository directory")
    rotate.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="NAME",
        help="replace only this key of the role (as keys/NAME.pub.json names it); repeatable",
    )
    rotate.add_argument(
        "--pkcs11-token",
        metavar="LABEL",
        help="make the new keys inside this PKCS#11 token (an HSM) instead of sealed files",
    )
    _add_module_flag(rotate)
    add_json_flag(rotate)
    rotate.set_defaults(func=_rotate)


def _add_module_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pkcs11-module",
        type=Path,
        metavar="FILE",
        help="the token's PKCS#11 module (default: PYKCS11LIB; SoftHSM2: "
        "/usr/lib/softhsm/libsofthsm2.so)",
    )


def _select_module(args: argparse.Namespace, needed: bool) -> None:
    """Make ``--pkcs11-module`` the module token keys are reached through."""
    from keys.hsm import select_module

    if needed or args.pkcs11_module is not None:
        select_module(args.pkcs11_module)


def _init(args: argparse.Namespace) -> None:
    from keys.image_repo import DEFAULT_SPECS, ImageRepository, RootHolder
    from keys.sealed import passphrase_from_env_or_prompt

    specs = _parse_thresholds(args.threshold)
    expiry = _parse_expiry(args.expiry)
    holders = _parse_holders(args.root_holder)
    root_keys = {**DEFAULT_SPECS, **specs}["root"].count
    if holders and args.single_custodian:
        raise GpuwardError("give --root-holder or --single-custodian, not both")
    if root_keys > 1 and not holders and not args.single_custodian:
        raise GpuwardError(
            f"root has {root_keys} keys: name who holds each with --root-holder NAME=DIR "
            f"({root_keys} times), or give --single-custodian for a test or demo repository"
        )
    passphrase = passphrase_from_env_or_prompt(
        "the targets key" if holders else "the new offline keys", confirm=True
    )
    custodians = []
    for name, folder in holders:
        own = passphrase_from_env_or_prompt(f"root key holder {name}", confirm=True, holder=name)
        if own == passphrase:
            raise GpuwardError(
                f"root key holder {name}'s passphrase is the targets key's; each must be its own"
            )
        custodians.append(RootHolder(name, folder, own))
    if args.single_custodian and root_keys > 1:
        print(
            f"WARNING: all {root_keys} root keys are sealed with one passphrase in one folder; "
            "anyone with both can sign a new root alone. Use --root-holder for a real "
            "repository.",
            file=sys.stderr,
        )
    repo = ImageRepository.init(args.dir, passphrase, specs, expiry, custodians)
    root = repo.metadata_dir / "root.json"
    held = "".join(
        f"\n  root key of {h.name}: {h.folder} (sealed with their passphrase; theirs to keep "
        "offline)"
        for h in custodians
    )
    where = "targets key is" if custodians else "root and targets keys are"
    emit(
        args,
        {
            "repository": str(args.dir),
            "trusted_root": str(root),
            "root_holders": {h.name: str(h.folder) for h in custodians},
        },
        f"created repository {args.dir}\n"
        f"  keys:          {repo.keyring.dir} ({where} sealed and stay offline, here)"
        f"{held}\n"
        f"  server's part: gpuward repo export-server --repo {args.dir} --to DIR (metadata, "
        "targets, snapshot and timestamp keys only)\n"
        f"  trusted root:  {root} (install it on every agent as trusted_root)",
    )


def _parse_holders(items: list[str]) -> list[tuple[str, Path]]:
    holders = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not _HOLDER.fullmatch(name) or not folder:
            raise GpuwardError(
                f"--root-holder {item}: write NAME=DIR (NAME: letters, digits, '-', up to 32)"
            )
        holders.append((name, Path(folder)))
    return holders


def _parse_thresholds(items: list[str]) -> dict[str, RoleSpec]:
    from keys.tuf_repo import TOP_LEVEL_ROLES, RoleSpec

    specs = {}
    for item in items:
        role, _, spec = item.partition("=")
        if role not in TOP_LEVEL_ROLES:
            raise GpuwardError(
                f"--threshold {item}: role must be one of {', '.join(TOP_LEVEL_ROLES)}"
            )
        specs[role] = RoleSpec.parse(spec)
    return specs


def _parse_expiry(items: list[str]) -> dict[str, int]:
    days = {}
    for item in items:
        role, _, value = item.partition("=")
        if not value.isdigit():
            raise GpuwardError(f"--expiry {item}: write ROLE=DAYS, e.g. timestamp=2")
        days[role] = int(value)
    return days


def _rotate(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source

    repo = ImageRepository(args.repo)
    repo.root_metadata()  # fail on a missing repository before asking for a passphrase
    _select_module(args, args.pkcs11_token is not None)
    new = repo.rotate(
        args.role,
        passphrase_source("the offline keys"),
        only=args.key,
        token=args.pkcs11_token,
    )
    root = repo.root_metadata()
    where = "" if args.pkcs11_token is None else f" in PKCS#11 token {args.pkcs11_token}"
    emit(
        args,
        {
            "role": args.role,
            "keys": [k.name for k in new],
            "uris": [k.uri for k in new],
            "root_version": root.signed.version,
        },
        f"rotated {args.role}: new keys {', '.join(k.name for k in new)}{where}; "
        f"root is now version {root.signed.version} (agents follow it on their next refresh)",
    )


def _add(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source

    repo = ImageRepository(args.repo)
    repo.root_metadata()  # fail on a missing repository before asking for a PIN
    _select_module(args, True)
    key = repo.add_key(
        args.role, passphrase_source("the offline keys"), args.pkcs11_token, args.threshold
    )
    root = repo.root_metadata().signed
    spec = root.roles[args.role]
    emit(
        args,
        {
            "role": args.role,
            "key": key.name,
            "keyid": key.keyid,
            "uri": key.uri,
            "threshold": spec.threshold,
            "keys": len(spec.keyids),
            "root_version": root.version,
        },
        f"added {key.name} ({key.uri}, in PKCS#11 token {args.pkcs11_token}) to {args.role}: "
        f"{spec.threshold} of {len(spec.keyids)} keys must sign; root is now version "
        f"{root.version}",
    )


def _sign(args: argparse.Namespace) -> None:
    from keys.ceremony import Staged, sign, write_staged
    from keys.keyring import Keyring
    from keys.sealed import passphrase_source

    _select_module(args, False)
    staged = Staged.read(args.staged)
    names = sign(staged, Keyring(args.keys), passphrase_source("your offline key"))
    write_staged(staged, args.staged)
    print(
        f"signed {staged.role} with {', '.join(names)}: "
        f"{len(staged.metadata.signatures)} of {staged.threshold} needed"
    )
