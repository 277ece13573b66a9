"""The one way the agent's privileged side runs commands: bounded, logged, checked.

Hooks, installers and the kernel hold all act on the node through commands. Each
run is logged as one ``command_ran`` event with its argv, exit status, duration
and (bounded) output, whatever happens, so an operator can replay what the
applier did from the journal of events alone. Hooks want the result whatever it
is (``run_command``); installers want a failure to stop them (``CommandRunner``).

``CommandRunner.prefix`` runs every command under another argv, ``chroot DIR``
in tests: package managers have no alternate-root option that also covers their
maintainer scripts, so a chroot is the honest way to run them on another root.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from fleet.errors import GpuwardError

log = structlog.get_logger(__name__)

MAX_LOGGED_OUTPUT = 4096
DEFAULT_TIMEOUT_S = 600.0


class Run(Protocol):
    """Runs argv and returns its stdout; raises ``GpuwardError`` when it fails."""

    def __call__(self, argv: Sequence[str]) -> str: ...


class CommandFailed(GpuwardError):
    """A command exited non-zero, timed out, or could not start."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: killed at the timeout
    duration_s: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(argv: Sequence[str], timeout_s: float) -> CommandResult:
    """Run ``argv`` (no shell), at most ``timeout_s``; log it, never raise."""
    command = tuple(argv)
    start = time.monotonic()
    try:
        # argv comes from root-owned config or from the installers, and no shell parses it.
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        code: int | None = done.returncode
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = None, exc.stdout or b"", exc.stderr or b""
    except OSError as exc:
        code, stdout, stderr = 127, b"", str(exc).encode()
    result = CommandResult(
        command,
        code,
        time.monotonic() - start,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
    )
    log.info(
        "command_ran",
        argv=list(command),
        returncode=code,
        timed_out=code is None,
        duration_s=round(result.duration_s, 3),
        stdout=result.stdout[-MAX_LOGGED_OUTPUT:],
        stderr=result.stderr[-MAX_LOGGED_OUTPUT:],
    )
    return result


@dataclass(frozen=True)
class CommandRunner:
    """Runs commands for an installer; a failure raises ``CommandFailed``."""

    prefix: tuple[str, ...] = ()  # e.g. ("chroot", "/srv/node-root")
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __call__(self, argv: Sequence[str]) -> str:
        result = run_command((*self.prefix, *argv), self.timeout_s)
        if result.returncode is None:
            raise CommandFailed(
                f"{' '.join(argv)} did not finish within {self.timeout_s:g} s; "
                "see the command_ran event for its output"
            )
        if not result.ok:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
            raise CommandFailed(
                f"{' '.join(argv)} exited {result.returncode}: {(last or ['no message'])[0][:300]}"
            )
        return result.stdout


def runner_for_root(root: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> CommandRunner:
    """Commands for the system at ``root``: run directly on ``/``, under chroot elsewhere."""
    if os.path.realpath(root) == "/":
        return CommandRunner(timeout_s=timeout_s)
    return CommandRunner(("chroot", str(root)), timeout_s)
