"""The CLI's conventions for people and pipes: defaults in ``--help``, dates people
read (numbers in ``--json``), the report format from the file name, and a quiet
end when the reader of the output goes away."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from gpuward.cli import EXIT_BROKEN_PIPE, build_parser
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.simnode import SimNode

HUMAN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def _operator(site: Site, tmp_path: Path, role: str = "operator") -> list[str]:
    token = tmp_path / f"{role}.token"
    token.write_text(site.server.issue_token(role))
    return ["--server", site.url, "--token-file", str(token)]


def _options(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _options(sub, f"{path} {name}")
        else:
            found.append((path, action))
    return found


def test_every_option_with_a_default_shows_it_in_help() -> None:
    quiet: tuple[object, ...] = (None, False, [], argparse.SUPPRESS)
    missing = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser(), "gpuward")
        if action.default not in quiet
        and action.help != argparse.SUPPRESS
        and "default" not in (action.help or "")
    ]
    assert missing == []


def test_rollout_start_help_shows_the_wave_defaults() -> None:
    done = gpuward("rollout", "start", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines where it likes
    for option, default in (
        ("--waves WAVES", "1,5%,25%,100%"),
        ("--max-unavailable N", "1"),
        ("--soak S", "0"),
        ("--max-failures N", "0"),
    ):
        assert re.search(rf"{re.escape(option)} [^-]*\(default {re.escape(default)}\)", text), (
            option
        )


def test_rollout_events_read_as_dates_and_stay_numbers_in_json(site: Site, tmp_path: Path) -> None:
    published = site.publish("580.95.05")
    assert SimNode(site.url, "gpu-1").enroll().status == 201
    server = _operator(site, tmp_path)
    started = gpuward(
        "rollout", "start", "--pool", "default", "--target", published.target_path,
        "--id", "r1", *server,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    site.server.tick_rollouts()

    shown = gpuward("rollout", "status", "r1", *server)
    assert shown.returncode == 0, shown.stderr
    events = shown.stdout.split("events:\n", 1)[1].splitlines()
    assert events
    for line in events:
        assert HUMAN_TIME.fullmatch(line.strip().split("  ")[0]), line

    as_json = gpuward("rollout", "status", "r1", "--json", *server)
    assert as_json.returncode == 0, as_json.stderr
    stamps = [e["at"] for e in json.loads(as_json.stdout)["events"]]
    assert stamps and all(isinstance(at, int) for at in stamps)


def test_nodes_list_shows_last_seen_as_a_date(site: Site, tmp_path: Path) -> None:
    node = SimNode(site.url, "gpu-1")
    assert node.enroll().status == 201
    assert node.report().status == 202
    listed = gpuward("nodes", "list", *_operator(site, tmp_path, "viewer"))
    assert listed.returncode == 0, listed.stderr
    assert HUMAN_TIME.search(listed.stdout.splitlines()[1])


def test_report_format_follows_the_output_file_suffix(site: Site, tmp_path: Path) -> None:
    node = SimNode(site.url, "gpu-1")
    assert node.enroll().status == 201
    assert node.report().status == 202
    viewer = _operator(site, tmp_path, "viewer")
    starts = {"x.pdf": b"%PDF-", "x.html": b"<!DOCTYPE html>", "x.json": b"{"}
    for name, start in starts.items():
        out = tmp_path / name
        done = gpuward("report", "fleet", "-o", str(out), *viewer)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes().lstrip().startswith(start), name
    # --format still says what to write, whatever the file is called.
    forced = tmp_path / "report.out"
    done = gpuward("report", "fleet", "--format", "json", "-o", str(forced), *viewer)
    assert done.returncode == 0, done.stderr
    assert json.loads(forced.read_text())["scope"] == "fleet"

    unknown = tmp_path / "report.txt"
    refused = gpuward("report", "fleet", "-o", str(unknown), *viewer)
    assert_one_line_error(refused, "report.txt", ".json, .html, .pdf", "--format json|html|pdf")
    assert not unknown.exists()


def test_a_reader_that_stops_early_ends_the_command_quietly(site: Site, tmp_path: Path) -> None:
    """``gpuward rollout status | head -1``: the reader is gone before the command
    writes, as when head has read its line; no "Broken pipe" error, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpuward", "rollout", "status", *_operator(site, tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")
