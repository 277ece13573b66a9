"""``gpuward-tuf-client``: the agent's TUF client behind the conformance-suite CLI.

theupdateframework/tuf-conformance drives clients through a small command line
(CLIENT-CLI.md). This speaks it with the agent's own ``TufChannel`` (not a
copy), so the suite tests exactly the code that guards the nodes:

    gpuward-tuf-client --metadata-dir D init TRUSTED_ROOT
    gpuward-tuf-client --metadata-dir D --metadata-url U refresh
    gpuward-tuf-client --metadata-dir D --metadata-url U --target-name T \\
        --target-base-url B --target-dir TD download

Exit status 0 on success, 1 on any failure (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError

from agent.channel import TufChannel
from fleet.errors import GpuwardError

TRUSTED_ROOT = "trusted_root.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuward-tuf-client", description=__doc__.split("\n")[0])
    parser.add_argument("--metadata-dir", type=Path, required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append", default=[])
    parser.add_argument("--target-base-url")
    parser.add_argument("--target-dir", type=Path)
    parser.add_argument("command", choices=("init", "refresh", "download"))
    parser.add_argument("trusted_root", nargs="?", type=Path, help="for init")
    return parser


def _init(metadata_dir: Path, trusted_root: Path | None) -> None:
    if trusted_root is None:
        raise GpuwardError("init needs the trusted root file")
    data = trusted_root.read_bytes()
    try:
        Metadata[Root].from_bytes(data)
    except DeserializationError as exc:
        raise GpuwardError(f"{trusted_root} is not root metadata: {exc}") from None
    metadata_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trusted_root, metadata_dir / TRUSTED_ROOT)


def _channel(args: argparse.Namespace) -> TufChannel:
    if not args.metadata_url:
        raise GpuwardError(f"{args.command} needs --metadata-url")
    return TufChannel(
        "conformance",
        args.metadata_dir / TRUSTED_ROOT,
        args.metadata_dir,
        args.metadata_url,
        args.target_base_url or args.metadata_url,
        args.target_dir or args.metadata_dir / "targets",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            _init(args.metadata_dir, args.trusted_root)
            return 0
        channel = _channel(args)
        channel.refresh()
        if args.command == "download":
            if not args.target_name or not args.target_base_url or not args.target_dir:
                raise GpuwardError(
                    "download needs --target-name, --target-base-url and --target-dir"
                )
            for name in args.target_name:
                info = channel.targetinfo(name)
                if info is None:
                    raise GpuwardError(f"target {name} is not in the verified metadata")
                channel.fetch(info)
        return 0
    except (GpuwardError, OSError) as exc:
        print(f"gpuward-tuf-client: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
