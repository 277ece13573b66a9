"""``gpuward bundle``: build driver bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("bundle", help="driver bundles")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = sub.add_parser("build", help="package a driver payload with its manifest")
    build.add_argument("payload", type=Path, help="a file or a directory of driver files")
    build.add_argument("--driver-version", required=True, help="e.g. 580.95.05")
    build.add_argument("--branch", required=True, help="e.g. R580")
    build.add_argument(
        "--payload-kind",
        default="files",
        choices=("files", "deb", "rpm", "runfile"),
        help="how the agent installs the payload (default: files)",
    )
    build.add_argument("-o", "--output", type=Path, required=True, help="bundle file to write")
    add_json_flag(build)
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> None:
    from fleet.branches import require_branch
    from keys.bundle import build_bundle, sha256_file

    require_branch(args.branch)
    manifest = build_bundle(
        args.payload,
        driver_version=args.driver_version,
        branch=args.branch,
        payload_kind=args.payload_kind,
        output=args.output,
    )
    digest = sha256_file(args.output)
    emit(
        args,
        {"bundle": str(args.output), "sha256": digest, "manifest": manifest.to_dict()},
        f"built {args.output}: driver {manifest.driver_version} ({manifest.branch}), "
        f"{len(manifest.files)} file(s), sha256 {digest}",
    )
