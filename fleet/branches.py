"""Checking driver branch names against the catalog.

A bundle or an agent naming a branch nobody has heard of is almost always a typo
(``R508``), and publishing or tracking it would silently do nothing; so names are
checked against the branches of the compatibility catalog (``fleet.catalog``).
"""

from __future__ import annotations

from fleet.catalog import Branch, default_catalog


def require_branch(name: str) -> Branch:
    """Return the catalog's branch called ``name`` or explain which names exist."""
    return default_catalog().require_branch(name)
