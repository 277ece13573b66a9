"""A Debian 12 root file system booted with systemd, as a GPU host or server runs.

``systemd-nspawn --register=no --keep-unit -b`` boots the rootfs with its own
systemd as PID 1 on machines whose own PID 1 is not systemd (these). The
container shares the host's network, so its services listen on the host's
loopback and a swtpm on the host is reachable through a bound folder.
Commands run inside through ``nsenter`` into every namespace of the container's
PID 1, so they see what a shell on that host would see: its units, its journal,
its users. A power cut is SIGKILL to that PID 1: the kernel ends every process
of the container at once, with nothing flushed or unmounted.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.netutil import wait_for

_numbers = itertools.count(os.getpid())
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_DEADLINE_S = 120.0


class ContainerError(AssertionError):
    """A command inside the container failed (the message holds its output)."""


@dataclass
class Container:
    root: Path
    nspawn: subprocess.Popen[bytes]
    leader: int  # the container's PID 1, as the host numbers it
    console: Path

    def run(
        self,
        *command: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``command`` inside, as root, with a clean environment (plus ``env``)."""
        variables = {"PATH": CONTAINER_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        full = (
            "nsenter", "--target", str(self.leader), "--all", "--root", "--wd=/",
            "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *command,
        )  # fmt: skip
        done = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise ContainerError(
                f"in container: {' '.join(command)} exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def sh(self, script: str, *, check: bool = True, env: dict[str, str] | None = None) -> str:
        """A shell script inside (``set -eu``); its standard output."""
        return self.run("sh", "-euc", script, check=check, env=env).stdout

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", *args).stdout

    def since_now(self) -> str:
        """A ``journalctl`` option selecting what is logged from now on.

        A time, not a cursor: systemd 252's journalctl shows nothing for
        ``--after-cursor`` combined with ``-p``. The container shares the
        host's clock."""
        return f"--since=@{time.time():.6f}"

    def power_cut(self) -> None:
        """Every process of the container gone at once, as when the power fails."""
        os.kill(self.leader, signal.SIGKILL)
        self.nspawn.wait(timeout=60)

    def poweroff(self) -> None:
        """A clean shutdown (SIGRTMIN+4 asks systemd to power off)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.leader, signal.SIGRTMIN + 4)
        try:
            self.nspawn.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.power_cut()


def _leader(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The container's PID 1: the child of systemd-nspawn that runs systemd."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm_end = stat.rindex(")")
        ppid = int(stat[comm_end + 2 :].split()[1])
        if ppid == nspawn.pid and stat[stat.index("(") + 1 : comm_end] == "systemd":
            return int(entry.name)
    return None


@contextlib.contextmanager
def booted(
    root: Path, console: Path, binds: Sequence[tuple[Path, str]] = ()
) -> Iterator[Container]:
    """Boot ``root``; power it off (or cut it, if it hangs) on leaving."""
    with console.open("ab") as log:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn", "--register=no", "--keep-unit", "--boot", "--quiet",
                f"--directory={root}", f"--machine=gpuward-{next(_numbers)}",
                *(f"--bind={host}:{inside}" for host, inside in binds),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    container: Container | None = None
    try:
        found: list[int] = []

        def started() -> bool:
            if nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {console.read_text()[-3000:]}")
            leader = _leader(nspawn)
            found[:] = [] if leader is None else [leader]
            return bool(found)

        wait_for("the container's systemd", started, BOOT_DEADLINE_S)
        container = Container(root, nspawn, found[0], console)
        # systemctl cannot reach systemd until it has made its private socket:
        # until then it prints no state, and is asked again.
        states: list[str] = []

        def settled() -> bool:
            done = container.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_DEADLINE_S
            )
            states.append(done.stdout.strip() or done.stderr.strip())
            return done.stdout.strip() != ""

        wait_for("the container's boot", settled, BOOT_DEADLINE_S)
        assert states[-1] in ("running", "degraded"), f"boot ended {states}: {console.read_text()}"
        yield container
    finally:
        if container is not None and nspawn.poll() is None:
            container.poweroff()
        elif nspawn.poll() is None:
            nspawn.kill()
            nspawn.wait()
