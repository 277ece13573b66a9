"""The ``gpuward`` command: glue between the operator and the packages.

It is the only place that imports both ``agent`` and ``server``; each command
group lives in its own module under ``gpuward.cli`` and imports what it drives
lazily, so ``gpuward keys ...`` never loads the server.
"""

from fleet.version import VERSION as __version__

__all__ = ["__version__"]
