"""structlog set-up for every gpuward process.

Services log JSON lines (one event per line, fields not prose) so journald and
log shippers can index them; a person at a terminal gets coloured console
output instead. Logs go to stderr so ``--json`` output on stdout stays clean.

Under systemd, stderr is a stream to the journal, which files every line at
info unless the line starts with a syslog priority, ``<3>`` for an error
(``SyslogLevelPrefix=``, on by default). So, on the journal only, each line
carries its event's priority, and ``journalctl -u gpuward-agent -p err`` shows
the errors and only them; anywhere else the lines are unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

# syslog(3) priorities, by the level structlog's add_log_level names (it files
# log.exception under "error"). Critical is kept at err, where journalctl -p err
# looks for everything that went wrong.
ERR = 3
WARNING = 4
INFO = 6
DEBUG = 7
PRIORITIES = {"critical": ERR, "error": ERR, "warning": WARNING, "info": INFO, "debug": DEBUG}

Renderer = Callable[[WrappedLogger, str, EventDict], str | bytes]


def to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected this service to.

    systemd names that stream in ``JOURNAL_STREAM`` as ``DEVICE:INODE``; a
    process that inherited the variable but writes elsewhere (a terminal, a
    pipe, a file) does not match it.
    """
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor behind it (a test's capture)
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def with_priority(text: str, priority: int) -> str:
    """``text`` with ``<priority>`` before each line: journald reads each line apart."""
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def stderr_text(text: str, priority: int) -> str:
    """``text`` as it should be written to stderr: with its priority on the journal."""
    return with_priority(text, priority) if to_journal(sys.stderr) else text


class JournalPriority:
    """A renderer whose every line starts with the event's syslog priority."""

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        # Read before rendering: the console renderer takes the level out of the event.
        priority = PRIORITIES.get(str(event_dict.get("level", method_name)), INFO)
        rendered = self._renderer(logger, method_name, event_dict)
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return with_priority(text, priority)


class LibraryRecords(logging.Handler):
    """Warnings and errors of libraries that log through the standard library
    (aiohttp, tuf, urllib3) as structlog events, so they too are JSON lines at
    their priority, instead of bare text the journal files at info."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(
            record.levelno,
            "library_log",
            logger=record.name,
            message=record.getMessage(),
            exc_info=record.exc_info or False,
        )


_LIBRARY_RECORDS = LibraryRecords(logging.WARNING)


def configure(*, json_lines: bool | None = None, level: int = logging.INFO) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Renderer = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    if to_journal(sys.stderr):
        renderer = JournalPriority(renderer)
    # Tracebacks never show the frames' local variables: those can hold tokens and
    # keys, and logs travel further than the process. (The console renderer
    # formats tracebacks itself, from the exception.)
    tracebacks: list[Processor] = (
        [structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]
        if json_lines
        else []
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (print writes the newline apart): the lines of server
        # workers sharing stderr cannot run into each other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    if _LIBRARY_RECORDS not in logging.getLogger().handlers:
        logging.getLogger().addHandler(_LIBRARY_RECORDS)
