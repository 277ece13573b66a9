"""structlog set-up for every gpuward process.

Services log JSON lines (one event per line, fields not prose) so journald and
log shippers can index them; a person at a terminal gets coloured console
output instead. Logs go to stderr so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(*, json_lines: bool | None = None, level: int = logging.INFO) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (print writes the newline apart): the lines of server
        # workers sharing stderr cannot run into each other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
