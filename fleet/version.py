"""The installed gpuward's version, from its package metadata (pyproject.toml).

Agents send it in their User-Agent and the server names it in its OpenAPI
document; both read it here, from the one place it is declared, instead of from
the ``gpuward`` command package, which nothing may import.
"""

from __future__ import annotations

from importlib.metadata import version

VERSION = version("gpuward")
