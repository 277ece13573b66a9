"""``gpuward-tuf-client``: the agent's TUF client behind the conformance-suite CLI.

theupdateframework/tuf-conformance drives clients through a small command line
(CLIENT-CLI.md). This speaks it with the agent's own ``TufChannel`` (not a
copy), so the suite tests exactly the code that guards the nodes:

    gpuward-tuf-client --metadata-dir D init TRUSTED_ROOT
    gpuward-tuf-client --metadata-dir D --metadata-url U refresh
    gpuward-tuf-client --metadata-dir D --metadata-url U --target-name T \\
        --target-base-url B --target-dir TD download

Exit status 0 on success, 1 on any failure (one line on stderr says why).

The metadata directory holds exactly what python-tuf's own client keeps there
(the suite reads it to learn which roles the client trusts): ``init`` has
ngclient install the given root, which writes ``root_history/N.root.json`` and
links ``root.json`` to it; later commands trust that ``root.json``, as
python-tuf's example client does, and ngclient moves it forward as roots rotate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.errors import GpuwardError
from node.channel import TufChannel

# Where ngclient keeps the root it trusts now (a link into root_history/).
TRUSTED_ROOT = "root.json"


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
    # Building the channel verifies the root (signed by its own threshold) and
    # has ngclient persist it; init makes no request, so there is no URL yet.
    TufChannel("conformance", trusted_root, metadata_dir, "", "", None)


def _channel(args: argparse.Namespace) -> TufChannel:
    if not args.metadata_url:
        raise GpuwardError(f"{args.command} needs --metadata-url")
    if not (args.metadata_dir / TRUSTED_ROOT).exists():
        raise GpuwardError(f"{args.metadata_dir} holds no trusted root; run init first")
    return TufChannel(
        "conformance",
        args.metadata_dir / TRUSTED_ROOT,
        args.metadata_dir,
        args.metadata_url,
        args.target_base_url or args.metadata_url,
        args.target_dir,
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
