"""Named points where tests kill the applier, to prove every crash resumes cleanly.

``GPUWARD_CRASH_AT=<point>`` makes the process SIGKILL itself on reaching that
point: no cleanup, no ``finally``, exactly what a power cut or the OOM killer
leaves behind. Only whoever sets the environment of a root unit can set it, and
they are root already. Every point is listed here once, so the fault-injection
test covers all of them and a typo in a name fails loudly instead of never firing.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "GPUWARD_CRASH_AT"

# In the order an update that commits reaches them.
COMMIT_PATH = (
    "stage:start",
    "stage:verified",
    "stage:unpacked",
    "slots:stage-before-fsync",
    "slots:stage-after-fsync",
    "journal:staged:before",
    "journal:staged:after",
    "spool:cleared",
    "journal:draining:before",
    "journal:draining:after",
    "drain:hook-done",
    "journal:switching:before",
    "journal:switching:after",
    "settings:written",  # the new slot's module parameters, before its driver loads
    "slots:switch-before-fsync",
    "slots:switch-after-fsync",
    "journal:verifying:before",
    "journal:verifying:after",
    "settings:applied",  # the GPU modes, before the gate reads them back
    "gate:before",
    "gate:looked",
    "gate:smoke-tested",
    "gate:passed",
    "journal:committed:before",
    "journal:committed:after",
    "measure:extended",  # these two only where the node attests ([attestation])
    "measure:logged",
    "commit:hook-done",
)
# Reached only when the health gate says no.
ROLLBACK_PATH = (
    "journal:rolling-back:before",
    "journal:rolling-back:after",
    "settings:restored",  # the previous slot's module parameters
    "journal:rolled-back:before",
    "journal:rolled-back:after",
)
# Reached only when the spooled bundle fails verification.
REFUSAL_PATH = ("journal:failed:before", "journal:failed:after")
CRASH_POINTS = COMMIT_PATH + ROLLBACK_PATH + REFUSAL_PATH


def crash_point(name: str) -> None:
    """Die here, at once, if the environment names this point."""
    if name not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {name!r}; list it in node.crash_points")
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
