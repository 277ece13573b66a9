"""The one command runner: what it logs, how it fails, and the chroot prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from applier.command_runner import CommandFailed, CommandRunner, run_command, runner_for_root

NOISY = ("sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")


def test_every_run_is_logged_with_argv_status_output_and_duration() -> None:
    with capture_logs() as events:
        result = run_command(NOISY, timeout_s=30)

    assert (result.returncode, result.stdout, result.stderr) == (3, "to-stdout\n", "to-stderr\n")
    (event,) = [e for e in events if e["event"] == "command_ran"]
    assert event["argv"] == list(NOISY)
    assert (event["returncode"], event["timed_out"]) == (3, False)
    assert (event["stdout"], event["stderr"]) == ("to-stdout\n", "to-stderr\n")
    assert event["duration_s"] >= 0


def test_logged_output_is_bounded() -> None:
    with capture_logs() as events:
        run_command(("sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"), timeout_s=30)
    (event,) = [e for e in events if e["event"] == "command_ran"]
    assert event["stdout"] == "x" * 4096


def test_a_failure_raises_naming_the_command_and_its_last_words() -> None:
    with pytest.raises(CommandFailed, match=r"^sh -c .* exited 3: to-stderr$"):
        CommandRunner()(NOISY)


def test_a_command_past_its_timeout_is_killed_and_reported() -> None:
    with (
        capture_logs() as events,
        pytest.raises(CommandFailed, match=r"did not finish within 0\.2 s"),
    ):
        CommandRunner(timeout_s=0.2)(("sleep", "30"))
    (event,) = [e for e in events if e["event"] == "command_ran"]
    assert (event["returncode"], event["timed_out"]) == (None, True)


def test_a_missing_program_is_a_clear_failure() -> None:
    with pytest.raises(CommandFailed, match=r"exited 127: .*No such file"):
        CommandRunner()(("gpuward-no-such-program",))


def test_another_root_runs_under_chroot(tmp_path: Path) -> None:
    assert runner_for_root(Path("/")).prefix == ()
    assert runner_for_root(tmp_path).prefix == ("chroot", str(tmp_path))
