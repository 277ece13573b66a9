"""[remediation] of server.toml: a policy no one could carry out is refused at start.

Commands must be absolute (never whatever PATH finds first), a reset or reboot
needs the operator's hook, and the tick must not exceed the report interval (a
finding is acted on within one interval). Each refusal names the key to fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from server.config_file import load

BASE = 'repo = "r"\ndb = "d"\nreport_interval = 60\n[remediation]\nscheduler = "slurm"\n'


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (BASE.replace('"slurm"', '"pbs"'), ("'scheduler' must be one of none, slurm",)),
        (BASE + 'scontrol = ["scontrol"]\n', ("scontrol must start with an absolute path",)),
        (BASE + "scontrol = []\n", ("scontrol must be a command",)),
        (BASE + "scontrol = [1]\n", ("scontrol must be a command",)),
        (BASE + "tick = 61\n", ("tick (61 s) must not exceed report_interval (60 s)",)),
        (BASE + "tick = 0\n", ("'tick' must be between 1 and 3600",)),
        (BASE + "budget = 1\n", ("unknown field(s) budget",)),
        (BASE + '[remediation.hooks]\nwipe = ["/bin/rm"]\n', ("unknown field(s) wipe",)),
        (BASE + '[remediation.pools.Prod]\n', ("'Prod' is not a pool name",)),
        (
            BASE + '[remediation.pools.prod]\non_failed = "reboot"\n',
            ("pools.prod uses reboot", "[remediation.hooks] reboot"),
        ),
        (
            BASE + '[remediation.pools.prod]\n[remediation.pools.prod.xid]\n79 = "reset"\n',
            ("uses reset",),
        ),
        (
            BASE + '[remediation.pools.prod]\n[remediation.pools.prod.xid]\nx79 = "drain"\n',
            ("'x79' is not an XID number",),
        ),
        (
            BASE + '[remediation.pools.prod]\non_failed = "format"\n',
            ("'on_failed' must be one of",),
        ),
        (BASE + "[remediation.pools.prod]\nbudget = 0\n", ("'budget' must be between 1",)),
        (
            BASE + '[remediation.pools.prod]\nfailure_domain = "building"\n',
            ("'failure_domain' must be one of",),
        ),
        (BASE + '[remediation.pools.prod]\napproval = "yes"\n', ("must be true or false",)),
    ],
    ids=[
        "scheduler", "relative-scontrol", "empty-scontrol", "number-in-command", "slow-tick",
        "zero-tick", "policy-key-at-top", "unknown-hook", "bad-pool", "reboot-without-hook",
        "xid-reset-without-hook", "bad-xid", "unknown-action", "zero-budget", "unknown-domain",
        "approval-text",
    ],
)  # fmt: skip
def test_bad_remediation_settings_are_refused(
    tmp_path: Path, text: str, needles: tuple[str, ...]
) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(GpuwardError) as refused:
        load({}, path)
    for needle in needles:
        assert needle in str(refused.value)


def test_a_pool_without_a_table_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(BASE + "[remediation.pools.prod]\n")
    remediation = load({}, path).remediation
    assert remediation is not None and set(remediation.pools) == {"prod"}
    assert remediation.scontrol == ("/usr/bin/scontrol",) and remediation.hooks == {}
