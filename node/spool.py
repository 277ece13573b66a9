"""The hand-over from the unprivileged agent to the root applier: the spool's format.

The agent leaves a bundle it verified and the signed ``TargetFile`` it verified
it against in ``<state_dir>/spool/``: the bundle first, the request last, so a
request never names a half-written bundle. How the applier takes a request in,
trusting neither file, is ``applier.spool_intake``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuf.api.metadata import TargetFile

from keys.durable_files import atomic_write

BUNDLE = "bundle"
TARGET = "target.json"


def write_spool(spool: Path, info: TargetFile, bundle: Path) -> None:
    """What the agent does in stage-only mode: the bundle first, the request last."""
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(bundle, spool / BUNDLE)
    doc = {"path": info.path, "info": info.to_dict()}
    atomic_write(spool / TARGET, json.dumps(doc).encode(), mode=0o600)


def has_request(spool: Path) -> bool:
    """Whether the agent's own spool holds a request (the agent asks, of its own folder)."""
    return (spool / TARGET).exists()


def spooled_target(spool: Path) -> str | None:
    """The target path of the request in the agent's own spool, if one waits (for the
    agent's metrics: the applier trusts nothing in it)."""
    try:
        doc = json.loads((spool / TARGET).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    path = doc.get("path") if isinstance(doc, dict) else None
    return path if isinstance(path, str) else None
