"""Readable output shows what nodes wrote without letting a terminal act on it:
every character a terminal could act on is printed as its escape, the rest as is."""

from __future__ import annotations

import argparse

import pytest

from gpuward.cli.output import emit, table, terminal_text


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),  # clear the screen
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # retitle the window
        ("\x9b31m", "\\x9b31m"),  # an 8-bit CSI
        ("ok\rFAKE", "ok\\rFAKE"),  # overwrite the line
        ("ok\nFAKE", "ok\\nFAKE"),  # a line of its own
        ("a\tb", "a\\tb"),
        ("abc\u202edef", "abc\\u202edef"),  # right-to-left override
        ("x\u2028y", "x\\u2028y"),  # a line separator
        ("\ud800", "\\ud800"),  # a lone surrogate, which JSON can spell
        ("GPU 3: Grüße, 日本, ±5 %", "GPU 3: Grüße, 日本, ±5 %"),  # printable: unchanged
    ],
)
def test_terminal_text(sent: str, shown: str) -> None:
    assert terminal_text(sent) == shown


def test_a_cell_stays_on_its_row_and_text_keeps_its_own_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shown = table(("NODE", "WHY"), [("gpu-1", "lost\r\nFAKE\x1b[0m")])
    assert shown.splitlines() == ["NODE   WHY", "gpu-1  lost\\r\\nFAKE\\x1b[0m"]
    emit(argparse.Namespace(json=False), None, "first line\nsecond \x1b[31mred")
    assert capsys.readouterr().out == "first line\nsecond \\x1b[31mred\n"
    emit(argparse.Namespace(json=True), {"why": "\x1b[31m"}, "")
    assert capsys.readouterr().out == '{\n  "why": "\\u001b[31m"\n}\n'
