"""Rules that turn GPU samples into verdicts, as pure functions.

``gate_problems`` decides whether a GPU may carry a freshly installed driver:
any problem it returns rolls the update back. Only evidence counts: a value the
GPU cannot report (``None``) is not a problem, because a fleet of GPUs that
lack a counter must still be updatable.
"""

from __future__ import annotations

from fleet.gpu import HARDWARE_CLOCK_EVENTS, GpuSample


def gate_problems(sample: GpuSample) -> tuple[str, ...]:
    """Why this GPU is not healthy enough to commit an update on; empty when it is."""
    problems = [f"NVML query failed: {error}" for error in sample.errors]
    if sample.ecc_uncorrected_volatile:
        problems.append(
            f"{sample.ecc_uncorrected_volatile} uncorrected ECC error(s) since the driver loaded"
        )
    rows = sample.remapped_rows
    if rows is not None and rows.failure:
        problems.append("row remapping failed (no spare rows left): the GPU needs service")
    if rows is not None and rows.pending:
        problems.append("a row remap is pending: reset the GPU to apply it")
    if sample.clock_events is not None:
        held = [r for r in sample.clock_events.reasons if r in HARDWARE_CLOCK_EVENTS]
        if held:
            problems.append(f"clocks held down by hardware: {', '.join(held)}")
    return tuple(problems)
