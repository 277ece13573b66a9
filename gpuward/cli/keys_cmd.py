"""``gpuward keys``: create and manage repository keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import GpuwardError
from gpuward.cli.output import add_json_flag, emit

if TYPE_CHECKING:
    from keys.tuf_repo import RoleSpec


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("keys", help="repository keys")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="create keys and initial signed metadata for an image repository",
        description=(
            "Create ed25519 keys for root, targets, snapshot and timestamp, and the first "
            "signed metadata. Root and targets keys are sealed with a passphrase "
            "(prompted, or GPUWARD_KEY_PASSPHRASE)."
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
    add_json_flag(init)
    init.set_defaults(func=_init)

    sign = sub.add_parser(
        "sign", help="sign a staged metadata file with the keys in a keys directory (offline)"
    )
    sign.add_argument("staged", type=Path, help="file written by 'gpuward repo stage'")
    sign.add_argument("--keys", type=Path, required=True, help="directory holding your key(s)")
    sign.set_defaults(func=_sign)

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
    add_json_flag(rotate)
    rotate.set_defaults(func=_rotate)


def _init(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_from_env_or_prompt

    specs = _parse_thresholds(args.threshold)
    passphrase = passphrase_from_env_or_prompt("the new offline keys", confirm=True)
    repo = ImageRepository.init(args.dir, passphrase, specs, _parse_expiry(args.expiry))
    root = repo.metadata_dir / "root.json"
    emit(
        args,
        {"repository": str(args.dir), "trusted_root": str(root)},
        f"created repository {args.dir}\n"
        f"  keys:          {repo.keyring.dir} (root and targets keys are sealed and stay "
        "offline, here)\n"
        f"  server's part: gpuward repo export-server --repo {args.dir} --to DIR (metadata, "
        "targets, snapshot and timestamp keys only)\n"
        f"  trusted root:  {root} (install it on every agent as trusted_root)",
    )


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
    new = repo.rotate(args.role, passphrase_source("the offline keys"))
    root = repo.root_metadata()
    emit(
        args,
        {"role": args.role, "keys": [k.name for k in new], "root_version": root.signed.version},
        f"rotated {args.role}: new keys {', '.join(k.name for k in new)}; "
        f"root is now version {root.signed.version} (agents follow it on their next refresh)",
    )


def _sign(args: argparse.Namespace) -> None:
    from keys.ceremony import Staged, sign, write_staged
    from keys.keyring import Keyring
    from keys.sealed import passphrase_source

    staged = Staged.read(args.staged)
    names = sign(staged, Keyring(args.keys), passphrase_source("your offline key"))
    write_staged(staged, args.staged)
    print(
        f"signed {staged.role} with {', '.join(names)}: "
        f"{len(staged.metadata.signatures)} of {staged.threshold} needed"
    )
