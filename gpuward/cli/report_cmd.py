"""``gpuward report``: signed compliance reports from the server, checked offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.operator_client import add_server_flags

FORMATS = ("json", "html", "pdf", "csv")  # csv: the evidence file, every node in full


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("report", help="signed compliance reports for auditors")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fleet = sub.add_parser("fleet", help="a report of every node, with a fleet summary")
    node = sub.add_parser("node", help="a report of one node")
    node.add_argument("node_id")
    for parser in (fleet, node):
        parser.add_argument(
            "--format",
            choices=FORMATS,
            help="report format (default: the output file's suffix, .json, .html, .pdf or .csv)",
        )
        parser.add_argument(
            "-o", "--output", type=Path, required=True, help="report file; FILE.sig beside it"
        )
        add_server_flags(parser)
        parser.set_defaults(func=_fetch)

    verify = sub.add_parser("verify", help="check a report against the server's report key")
    verify.add_argument("file", type=Path)
    verify.add_argument("--key", type=Path, required=True, help="the server's report.pub")
    verify.add_argument("--signature", type=Path, help="signature file (default FILE.sig)")
    verify.set_defaults(func=_verify)


def _fetch(args: argparse.Namespace) -> None:
    import base64
    import binascii
    from urllib.parse import quote

    from fleet.errors import GpuwardError
    from gpuward.cli.operator_client import answer, send
    from keys.durable_files import atomic_write
    from keys.report_key import SIGNATURE_SUFFIX

    path = (
        "/v1/reports/fleet"
        if args.command == "fleet"
        else f"/v1/reports/nodes/{quote(args.node_id, safe='')}"
    )
    # The server prints the file's name in the report, so it names the right .sig file.
    path += f"?format={args.format or _format_of(args.output)}&file={quote(args.output.name)}"
    response = send(args, "GET", path)
    if response.status != 200:
        answer("GET", path, response)  # raises with the server's error message
        raise GpuwardError(f"GET {path}: HTTP {response.status}")
    try:
        signature = base64.b64decode(response.headers["Gpuward-Report-Signature"], validate=True)
    except (KeyError, binascii.Error):
        raise GpuwardError(f"GET {path}: the server sent no report signature") from None
    atomic_write(args.output, response.data)
    atomic_write(args.output.with_name(args.output.name + SIGNATURE_SUFFIX), signature)
    print(
        f"wrote {args.output} and {args.output.name}{SIGNATURE_SUFFIX} "
        f"(key {response.headers.get('Gpuward-Report-Key-Id', '?')})"
    )


def _format_of(output: Path) -> str:
    """The report format a file name asks for: its suffix, when that is one."""
    from fleet.errors import GpuwardError

    suffix = output.suffix.lower().removeprefix(".")
    if suffix not in FORMATS:
        raise GpuwardError(
            f"cannot tell the report format from {output.name!r}: name the file "
            f"{', '.join('.' + f for f in FORMATS)}, or give --format {'|'.join(FORMATS)}"
        )
    return suffix


def _verify(args: argparse.Namespace) -> None:
    from keys.durable_files import read_bounded
    from keys.report_key import (
        MAX_KEY_BYTES,
        SIGNATURE_SUFFIX,
        key_id,
        load_public,
        verify,
    )

    public = load_public(args.key)
    signature_file = args.signature or args.file.with_name(args.file.name + SIGNATURE_SUFFIX)
    signature = read_bounded(signature_file, MAX_KEY_BYTES, "report signature")
    verify(args.file.read_bytes(), signature, public)
    print(f"{args.file}: signature valid (report key {key_id(public)})")
