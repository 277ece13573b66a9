"""Printing command results: a readable form by default, JSON with ``--json``.

Times are seconds since the epoch on the wire and in ``--json`` (what scripts
compute with); people read them as UTC dates (``fleet.human_time.when``).

Much of what is printed was written by nodes (a report's reasons, a symptom),
and a terminal acts on some characters instead of showing them: ESC starts a
sequence that moves the cursor, recolours or clears the screen, or retitles the
window; a carriage return or newline fakes a line; a bidirectional override
reorders what follows. So readable output shows every character that is not
printable as its escape (``\\x1b``), and ``--json`` is written in ASCII.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def terminal_text(text: str) -> str:
    """``text`` with each character a terminal could act on written as its escape."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))  # ASCII: every other character escaped
    else:
        print("\n".join(terminal_text(line) for line in text.split("\n")))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns; a cell is one line, whatever it holds."""
    cells = [
        [terminal_text(str(h)) for h in headers],
        *[["-" if c is None else terminal_text(str(c)) for c in r] for r in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
