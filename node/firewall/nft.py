"""The only code that runs ``nft``.

Changing the table is one ``nft -f`` transaction: create the table if absent,
delete it, define it anew. The kernel applies all of it or none of it, so a
ruleset nft refuses (a cgroup that vanished, a typo) leaves the previous table
in place, and there is never a moment with no table at all.

``prefix`` goes in front of every command (``ip netns exec NAME`` in tests,
``nsenter ...`` for a container's namespace), so the same code runs on a host
and inside a test namespace. Only the ``inet gpuward`` table is ever touched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast, overload

from fleet.errors import GpuwardError
from node.firewall.ruleset import FAMILY, TABLE, NftObject, Ruleset


class UnreadableTable(GpuwardError):
    """The table exists but nft cannot print it as JSON: treat it as drifted."""


@dataclass(frozen=True)
class Nft:
    prefix: tuple[str, ...] = ()
    timeout_s: float = 30.0

    def apply(self, ruleset: Ruleset) -> None:
        """Replace the gpuward table with ``ruleset`` in one transaction."""
        self._run(["-f", "-"], stdin=self.script(ruleset))

    @staticmethod
    def script(ruleset: Ruleset) -> str:
        return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{ruleset.to_text()}"

    def list_table(self) -> list[NftObject] | None:
        """The live table as nft JSON objects, or None when there is none."""
        done = self._run(["-j", "list", "table", FAMILY, TABLE], absent_ok=True)
        if done is None:
            return None
        try:
            doc = json.loads(done)
        except ValueError as exc:
            raise UnreadableTable(
                f"nft -j list table {FAMILY} {TABLE} printed JSON that does not parse ({exc}); "
                "nft 1.0.6 does so for a dormant table"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
            raise UnreadableTable(f"nft -j list table {FAMILY} {TABLE} printed no nftables list")
        return cast(list[NftObject], doc["nftables"])

    def remove(self) -> bool:
        """Delete the gpuward table; False when there was none. Other tables stay."""
        return self._run(["delete", "table", FAMILY, TABLE], absent_ok=True) is not None

    @overload
    def _run(self, args: Sequence[str], stdin: str | None = None) -> str: ...

    @overload
    def _run(
        self, args: Sequence[str], stdin: str | None = None, *, absent_ok: bool
    ) -> str | None: ...

    def _run(
        self, args: Sequence[str], stdin: str | None = None, *, absent_ok: bool = False
    ) -> str | None:
        """nft's stdout; None when ``absent_ok`` and the table does not exist."""
        command = [*self.prefix, "nft", *args]
        try:
            done = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise GpuwardError(
                f"cannot run {exc.filename}: install the Debian package nftables"
            ) from None
        except subprocess.TimeoutExpired:
            raise GpuwardError(f"nft did not finish within {self.timeout_s:g} s") from None
        if done.returncode != 0:
            if absent_ok and "No such file or directory" in done.stderr:
                return None
            raise GpuwardError(_explain(done.stderr))
        return done.stdout


def _explain(stderr: str) -> str:
    """nft's errors span several lines (message, source line, carets): keep the messages."""
    errors = [line.strip() for line in stderr.splitlines() if "Error:" in line]
    message = "; ".join(errors) or stderr.strip() or "no message"
    hint = "the gpuward table was left as it was"
    if "Operation not permitted" in stderr:
        hint = "run as root or with CAP_NET_ADMIN"
    return f"nft failed: {message[:500]} ({hint})"
