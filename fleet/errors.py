"""The one exception type a person is meant to read.

Everything gpuward raises on purpose derives from ``GpuwardError``; its message
says what went wrong and what to do next. The command line prints it as one line
and exits non-zero. Anything else escaping is a bug.
"""


class GpuwardError(Exception):
    """An error with a message fit for an operator."""


class InvalidDocument(GpuwardError):
    """A JSON document (manifest, report, config) does not match its schema."""
