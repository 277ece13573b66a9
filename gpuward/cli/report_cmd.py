"""``gpuward report``: signed compliance reports from the server, checked offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.operator_client import add_server_flags
from gpuward.cli.output import add_json_flag

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

    keep = sub.add_parser(
        "keep", help="make and keep a report in every format on the server (operator role)"
    )
    keep.add_argument("scope", choices=("fleet", "node"))
    keep.add_argument("node_id", nargs="?", help="the node, for a node report")
    add_server_flags(keep)
    keep.set_defaults(func=_keep)

    kept = sub.add_parser("kept", help="list the reports the server keeps, newest first")
    kept.add_argument("--scope", choices=("fleet", "node"))
    kept.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    add_json_flag(kept)
    add_server_flags(kept)
    kept.set_defaults(func=_kept)

    fetch = sub.add_parser("fetch", help="download a kept report's files, each with FILE.sig")
    fetch.add_argument("report_id")
    fetch.add_argument(
        "--format", action="append", choices=FORMATS, help="a format to fetch (default: all)"
    )
    fetch.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path(),
        help="folder to write them in (default: this one)",
    )
    add_server_flags(fetch)
    fetch.set_defaults(func=_fetch_kept)

    verify = sub.add_parser("verify", help="check a report against the server's report key")
    verify.add_argument("file", type=Path)
    verify.add_argument("--key", type=Path, required=True, help="the server's report.pub")
    verify.add_argument("--signature", type=Path, help="signature file (default FILE.sig)")
    verify.set_defaults(func=_verify)


# Judging and rendering a large fleet takes minutes; the server answers once done.
REPORT_TIMEOUT_S = 900.0


def _path(scope: str, node_id: str | None) -> str:
    from urllib.parse import quote

    from fleet.errors import GpuwardError

    if scope == "fleet":
        return "/v1/reports/fleet"
    if not node_id:
        raise GpuwardError("a node report needs the node's id: gpuward report keep node NODE_ID")
    return f"/v1/reports/nodes/{quote(node_id, safe='')}"


def _fetch(args: argparse.Namespace) -> None:
    from urllib.parse import quote

    path = _path(args.command, getattr(args, "node_id", None))
    # The server prints the file's name in the report, so it names the right .sig file.
    path += f"?format={args.format or _format_of(args.output)}&file={quote(args.output.name)}"
    _download(args, path, args.output)


def _download(args: argparse.Namespace, path: str, output: Path) -> None:
    """The report file at ``path`` written to ``output``, and its signature beside it."""
    import base64
    import binascii

    from fleet.errors import GpuwardError
    from gpuward.cli.operator_client import answer, send
    from keys.durable_files import atomic_write
    from keys.report_key import SIGNATURE_SUFFIX

    response = send(args, "GET", path, timeout=REPORT_TIMEOUT_S)
    if response.status != 200:
        answer("GET", path, response)  # raises with the server's error message
        raise GpuwardError(f"GET {path}: HTTP {response.status}")
    try:
        signature = base64.b64decode(response.headers["Gpuward-Report-Signature"], validate=True)
    except (KeyError, binascii.Error):
        raise GpuwardError(f"GET {path}: the server sent no report signature") from None
    atomic_write(output, response.data)
    atomic_write(output.with_name(output.name + SIGNATURE_SUFFIX), signature)
    print(
        f"wrote {output} and {output.name}{SIGNATURE_SUFFIX} "
        f"(key {response.headers.get('Gpuward-Report-Key-Id', '?')})"
    )


def _keep(args: argparse.Namespace) -> None:
    from fleet.kept_reports import KeptReportInfo
    from gpuward.cli.operator_client import call

    path = _path(args.scope, args.node_id)
    kept = KeptReportInfo.from_dict(call(args, "POST", path, timeout=REPORT_TIMEOUT_S))
    print(f"kept {kept.report_id}: " + ", ".join(f.name for f in kept.files))


def _kept(args: argparse.Namespace) -> None:
    from fleet.human_time import when
    from fleet.kept_reports import KeptReportList
    from gpuward.cli.operator_client import call
    from gpuward.cli.output import emit, table

    path = f"/v1/reports/kept?limit={args.limit}" + (f"&scope={args.scope}" if args.scope else "")
    listed = KeptReportList.from_dict(call(args, "GET", path))
    rows = [
        (r.report_id, when(r.generated_at), r.subject, r.made_by,
         ",".join(f.format for f in r.files))
        for r in listed.reports
    ]  # fmt: skip
    emit(args, listed.to_dict(), table(("REPORT", "MADE", "SUBJECT", "BY", "FILES"), rows))


def _fetch_kept(args: argparse.Namespace) -> None:
    from urllib.parse import quote

    from fleet.errors import GpuwardError
    from fleet.kept_reports import REPORT_ID

    if not REPORT_ID.fullmatch(args.report_id):
        raise GpuwardError(
            f"{args.report_id!r} is not a report id; 'gpuward report kept' lists them"
        )
    names = _kept_names(args, args.report_id)
    for fmt in args.format or FORMATS:
        if fmt not in names:
            raise GpuwardError(f"the server keeps no {fmt} file of report {args.report_id}")
        path = f"/v1/reports/kept/{quote(args.report_id)}/{fmt}"
        _download(args, path, args.output_dir / names[fmt])


def _kept_names(args: argparse.Namespace, report_id: str) -> dict[str, str]:
    """The names a kept report's files were signed under (their HTML and PDF print
    them), by format; each a plain file name, whatever the server says."""
    from fleet.errors import GpuwardError
    from fleet.kept_reports import KeptReportList
    from gpuward.cli.operator_client import call

    listed = KeptReportList.from_dict(call(args, "GET", "/v1/reports/kept?limit=1000"))
    for report in listed.reports:
        if report.report_id == report_id:
            names = {file.format: file.name for file in report.files}
            for name in names.values():
                if Path(name).name != name or name.startswith("."):
                    raise GpuwardError(f"the server names a report file {name!r}: not a file name")
            return names
    raise GpuwardError(f"the server keeps no report {report_id}; 'gpuward report kept' lists them")


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
