"""``gpuward eventlog``: read and replay TPM measured-boot event logs.

The same parser and replay the server's attestation verifier uses, so an
operator can see exactly what the verifier sees in a node's log.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit, table

if TYPE_CHECKING:
    from fleet.eventlog import Event, EventLog

SUMMARY_WIDTH = 72
DIGEST_PREFIX = 16


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("eventlog", help="TPM measured-boot event logs")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = sub.add_parser(
        "show",
        help="list the events of a binary event log",
        description="Parse a binary event log (binary_bios_measurements) and list its events.",
    )
    show.add_argument("file", type=Path, help="binary event log")
    add_json_flag(show)
    show.set_defaults(func=_show)
    replay = sub.add_parser(
        "replay",
        help="compute the PCR values an event log produces",
        description=(
            "Replay every event of a binary event log into zeroed PCRs, as tpm2_eventlog "
            "does, and print the resulting value of each PCR in every bank of the log."
        ),
    )
    replay.add_argument("file", type=Path, help="binary event log")
    add_json_flag(replay)
    replay.set_defaults(func=_replay)


def read_log(path: Path) -> EventLog:
    from fleet.errors import GpuwardError
    from fleet.eventlog import MAX_LOG_BYTES, EventLogError, parse

    with path.open("rb") as f:
        # One byte past the limit is enough for parse() to reject an oversized log.
        data = f.read(MAX_LOG_BYTES + 1)
    try:
        return parse(data)
    except EventLogError as exc:
        raise GpuwardError(f"{path}: {exc}") from None


def _show(args: argparse.Namespace) -> None:
    log = read_log(args.file)
    bank = "sha256" if "sha256" in log.digest_sizes else next(iter(log.digest_sizes))
    rows = [(e.index, e.pcr, e.type_name, _prefix(e, bank), _summary(e)) for e in log.events]
    banks = ", ".join(log.digest_sizes)
    text = f"{args.file}: {log.format} log, {len(log.events)} events, banks {banks}\n" + table(
        ("#", "PCR", "TYPE", bank.upper(), "DATA"), rows
    )
    emit(args, log.to_dict(), text)


def _prefix(event: Event, bank: str) -> str:
    digest = event.digests.get(bank)
    return digest[: DIGEST_PREFIX // 2].hex() if digest is not None else "-"


def _summary(event: Event) -> str:
    if event.decoded is not None:
        summary = event.decoded.summary()
    else:
        summary = f"{len(event.data)} bytes: {event.data[:16].hex()}"
    # Event text comes from the node: keep control characters off the terminal.
    summary = summary.encode("ascii", "backslashreplace").decode("ascii")
    summary = "".join(c if c.isprintable() else "?" for c in summary)
    if len(summary) > SUMMARY_WIDTH:
        return summary[: SUMMARY_WIDTH - 3] + "..."
    return summary


def _replay(args: argparse.Namespace) -> None:
    from fleet.eventlog import replay

    pcrs = replay(read_log(args.file))
    doc = {
        "pcrs": {
            bank: {str(pcr): value.hex() for pcr, value in values.items()}
            for bank, values in pcrs.items()
        }
    }
    rows = [
        (bank, pcr, value.hex()) for bank, values in pcrs.items() for pcr, value in values.items()
    ]
    emit(args, doc, table(("BANK", "PCR", "VALUE"), rows))
