"""``gpuward keys``: create and manage repository keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit


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
    add_json_flag(init)
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_from_env_or_prompt

    passphrase = passphrase_from_env_or_prompt("the new offline keys", confirm=True)
    repo = ImageRepository.init(args.dir, passphrase)
    root = repo.metadata_dir / "root.json"
    emit(
        args,
        {"repository": str(args.dir), "trusted_root": str(root)},
        f"created repository {args.dir}\n"
        f"  keys:          {repo.keyring.dir} (never copy these to the server)\n"
        f"  trusted root:  {root} (install it on every agent as trusted_root)",
    )
