"""Under systemd every line reaches the journal at its own priority.

A real file stands for the journal stream: its device and inode go into
``JOURNAL_STREAM``, as systemd sets it, and stderr is that file; what the file
then holds is what journald would parse (``<N>`` before a line: priority N).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from gpuward import logs
from node.spool import BUNDLE
from tests.conftest import GPU_NAME, Site

_PRIORITY = re.compile(r"<([0-7])>(.*)")
ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7


def stream_id(path: Path) -> str:
    """``JOURNAL_STREAM`` naming ``path``: its ``DEVICE:INODE``."""
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


@pytest.fixture
def journal_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file this process's environment names as its journal stream, as systemd would."""
    stderr = tmp_path / "journal"
    stderr.touch()
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(stderr))
    return stderr


def parse(text: str) -> list[tuple[int, str]]:
    """Each line as journald files it: (priority, message); info where no prefix."""
    lines = []
    for line in text.splitlines():
        found = _PRIORITY.fullmatch(line)
        lines.append((int(found[1]), found[2]) if found else (INFO, line))
    return lines


@dataclass(frozen=True)
class Journal:
    """A file in the journal stream's place, for ``gpuward`` run as a unit runs it."""

    path: Path

    def run(self, *args: str, journal: bool = True) -> subprocess.CompletedProcess[str]:
        """``gpuward ARGS`` with stderr appended to the file; ``journal``: the
        environment names the file as the journal stream (else another file)."""
        self.path.touch()
        named = self.path if journal else self.path.with_name("elsewhere")
        named.touch()
        with self.path.open("a") as stderr:
            return subprocess.run(
                [sys.executable, "-m", "gpuward", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "JOURNAL_STREAM": stream_id(named)},
                timeout=120,
                check=False,
            )

    def take(self) -> list[tuple[int, str]]:
        """What was written since the last take, by priority."""
        lines = parse(self.path.read_text())
        self.path.write_text("")
        return lines


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Tests that configure structlog onto a file of theirs put it back afterwards."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


SECRET = "s3cret-0123456789"


def _log_an_exception(log: Any) -> None:
    token = SECRET  # a local of the failing frame, as a token or key would be
    try:
        raise ValueError(f"boom after {len(token)} characters")
    except ValueError:
        log.exception("at_exception", n=6)


def _log_each_level(stderr: Path, json_lines: bool) -> str:
    """Configure logging onto the real file ``stderr``, log once at each level, and
    return what the file holds."""
    saved = sys.stderr
    with stderr.open("w") as file:
        sys.stderr = file
        try:
            logs.configure(json_lines=json_lines, level=logging.DEBUG)
            log = structlog.get_logger("test")
            log.debug("at_debug", n=1)
            log.info("at_info", n=2)
            log.warning("at_warning", n=3)
            log.error("at_error", n=4)
            log.critical("at_critical", n=5)
            _log_an_exception(log)
        finally:
            sys.stderr = saved
    return stderr.read_text()


def _events(text: str) -> list[dict[str, Any]]:
    """JSON lines without their timestamps, which differ between two runs."""
    events = [json.loads(line) for line in text.splitlines()]
    for event in events:
        del event["timestamp"]
    return events


@pytest.mark.usefixtures("restore_logging")
def test_each_json_line_carries_its_level_as_priority_on_the_journal(
    tmp_path: Path, journal_stream: Path
) -> None:
    plain = _log_each_level(tmp_path / "terminal", json_lines=True)
    stderr = journal_stream

    lines = parse(_log_each_level(stderr, json_lines=True))

    assert [p for p, _ in lines] == [DEBUG, INFO, WARNING, ERR, ERR, ERR]
    # The prefix is all that changes: the JSON after it is the line a terminal gets.
    assert _events("\n".join(m for _, m in lines)) == _events(plain)
    assert "ValueError" in plain and SECRET not in plain  # no frame's locals in logs


@pytest.mark.usefixtures("restore_logging")
def test_every_line_of_a_multiline_console_event_carries_the_priority(
    journal_stream: Path,
) -> None:
    stderr = journal_stream

    lines = parse(_log_each_level(stderr, json_lines=False))

    traceback = [p for p, m in lines if "ValueError" in m or "Traceback" in m]
    assert traceback and set(traceback) == {ERR}
    assert not any(SECRET in m for _, m in lines)
    assert [p for p, m in lines if "at_info" in m] == [INFO]
    assert [p for p, m in lines if "at_warning" in m] == [WARNING]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("named", ["absent", "another-file"])
def test_no_prefix_where_stderr_is_not_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: str
) -> None:
    """A process that inherited JOURNAL_STREAM but writes elsewhere, or none at all."""
    other = tmp_path / "other"
    other.touch()
    if named == "absent":
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(other))

    text = _log_each_level(tmp_path / "stderr", json_lines=True)

    assert not any(line.startswith("<") for line in text.splitlines())
    assert [e["level"] for e in _events(text)] == [
        "debug", "info", "warning", "error", "critical", "error",
    ]  # fmt: skip


@pytest.mark.usefixtures("restore_logging")
def test_a_librarys_records_are_events_at_their_priority(journal_stream: Path) -> None:
    """aiohttp, tuf and urllib3 log through the standard library."""
    stderr = journal_stream
    saved = sys.stderr
    with stderr.open("w") as file:
        sys.stderr = file
        try:
            logs.configure(json_lines=True)
            library = logging.getLogger("aiohttp.server")
            library.info("not shown: libraries speak from warnings up")
            library.warning("slow client %s", "10.0.0.7")
            try:
                raise ConnectionResetError("reset by peer")
            except ConnectionResetError:
                library.exception("Error handling request")
        finally:
            sys.stderr = saved

    lines = parse(stderr.read_text())

    assert [p for p, _ in lines] == [WARNING, ERR]
    warning, error = (json.loads(m) for _, m in lines)
    assert warning["event"] == "library_log" and warning["logger"] == "aiohttp.server"
    assert warning["message"] == "slow client 10.0.0.7"
    assert error["exception"][0]["exc_type"] == "ConnectionResetError"


def test_the_cli_error_line_is_an_error_on_the_journal(journal: Journal, tmp_path: Path) -> None:
    missing = str(tmp_path / "agent.toml")

    failed = journal.run("--log-format", "json", "agent", "run", "--once", "--config", missing)

    assert failed.returncode == 1
    errors = [m for p, m in journal.take() if p == ERR]
    assert len(errors) == 1 and errors[0].startswith("gpuward: error: ")
    assert "agent.toml" in errors[0]


def test_a_usage_error_is_an_error_on_the_journal(journal: Journal) -> None:
    failed = journal.run("agent", "run", "--once")

    assert failed.returncode == 2
    errors = [m for p, m in journal.take() if p == ERR]
    assert errors == ["gpuward agent run: error: the following arguments are required: --config"]


def test_a_terminal_sees_the_plain_error_line(journal: Journal, tmp_path: Path) -> None:
    missing = str(tmp_path / "agent.toml")

    failed = journal.run("agent", "run", "--once", "--config", missing, journal=False)

    assert failed.returncode == 1
    text = journal.path.read_text()
    assert text.startswith("gpuward: error: ") and "<3>" not in text


def _node(site: Site, folder: Path) -> Path:
    """A packaged node's config: the agent spools, ``gpuward agent apply`` installs."""
    folder.mkdir()
    simulated = f'[simulated]\ncount = 2\nname = "{GPU_NAME}"\n'
    return site.agent_toml(folder, extra=simulated, mode="applier")


def test_a_healthy_cycle_logs_nothing_above_info(
    site: Site, tmp_path: Path, journal: Journal
) -> None:
    """Enroll, stage, apply, report and find nothing new: what a healthy node does."""
    config = str(_node(site, tmp_path / "node"))
    site.publish("580.95.05")
    steps = [
        ("agent", "enroll", "--config", config),
        ("agent", "run", "--once", "--config", config),
        ("agent", "apply", "--config", config),
        ("agent", "run", "--once", "--config", config),
        ("agent", "run", "--once", "--config", config),
    ]
    judged = 0
    for step in steps:
        done = journal.run("--log-format", "json", *step, "--json")
        lines = journal.take()
        assert done.returncode == 0, lines
        events = [json.loads(m) for _, m in lines]
        judged += len(events)
        above_info = [e for (p, _), e in zip(lines, events, strict=True) if p < INFO]
        if step[1] == "apply":
            # The one real problem here: a simulated host is a folder, with no
            # distribution whose kernel the applier could hold.
            [failed] = above_info
            assert failed["event"] == "kernel_hold_failed"
            assert "etc/os-release not found" in failed["reason"]
        else:
            assert above_info == [], step
    assert judged >= len(steps)  # the steps logged: the checks had lines to judge
    node = site.fleet()["n1"]
    assert (node["state"], node["report"]["driver_version"]) == ("healthy", "580.95.05")


def test_a_tampered_spool_is_refused_at_error_priority(
    site: Site, tmp_path: Path, journal: Journal
) -> None:
    config = str(_node(site, tmp_path / "node"))
    site.publish("580.95.05")
    assert journal.run("agent", "enroll", "--config", config).returncode == 0
    assert journal.run("agent", "run", "--once", "--config", config).returncode == 0
    spooled = tmp_path / "node/host/var/lib/gpuward/spool" / BUNDLE
    spooled.write_bytes(b"not the signed bundle\n")
    journal.take()

    refused = journal.run("--log-format", "json", "agent", "apply", "--config", config)

    assert refused.returncode == 3
    errors = [json.loads(m)["event"] for p, m in journal.take() if p <= ERR]
    assert errors == ["spool_refused"]
