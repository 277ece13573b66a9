"""Mirrors: a static, self-checking copy of both repositories.

An export lays the files out exactly as the server serves them (``v1/repo/...``
and ``v1/director/<node>/...``), so any static web server (nginx) is a mirror
and agents need no change of trust: they verify everything against the roots
they already hold. ``MANIFEST.json`` lists every file with its SHA-256 so a
copy carried across an air gap can be checked before it is served; TUF checks
the content itself (``verify`` runs python-tuf's client against the copy).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import GpuwardError
from keys.storage import atomic_write

MANIFEST = "MANIFEST.json"
FORMAT = "gpuward-mirror/1"


@dataclass(frozen=True)
class MirrorManifest:
    files: dict[str, str]  # relative path -> sha256

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"format": FORMAT, "files": self.files}, indent=2, sort_keys=True
        ).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def export(repo: Path, out: Path, director: Path | None = None) -> MirrorManifest:
    """Copy the served parts of the image repository (and director) into ``out``."""
    if out.exists() and any(out.iterdir()):
        raise GpuwardError(f"{out} is not empty; export into a new directory")
    pairs = [
        (repo / "metadata", out / "v1/repo/metadata"),
        (repo / "targets", out / "v1/repo/targets"),
    ]
    if director is not None:
        for node in sorted((director / "nodes").glob("*/metadata")):
            pairs.append((node, out / "v1/director" / node.parent.name / "metadata"))
    files: dict[str, str] = {}
    for source, dest in pairs:
        if not source.is_dir():
            raise GpuwardError(f"{source} is missing: is {repo} a gpuward repository?")
        for path in sorted(
            p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
        ):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            files[target.relative_to(out).as_posix()] = _sha256(target)
    manifest = MirrorManifest(files)
    atomic_write(out / MANIFEST, manifest.to_bytes())
    return manifest


def check_manifest(out: Path) -> MirrorManifest:
    """Every listed file present with its digest, and nothing unlisted."""
    try:
        doc = json.loads((out / MANIFEST).read_bytes())
        if doc["format"] != FORMAT:
            raise ValueError("unknown format")
        files = {str(k): str(v) for k, v in doc["files"].items()}
    except FileNotFoundError:
        raise GpuwardError(f"{out} has no {MANIFEST}: not a gpuward mirror") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GpuwardError(f"{out / MANIFEST}: unreadable ({exc})") from None
    present = {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST
    }
    missing, extra = sorted(set(files) - present), sorted(present - set(files))
    changed = sorted(n for n in set(files) & present if _sha256(out / n) != files[n])
    for problem, names in (
        ("missing", missing),
        ("not in the manifest", extra),
        ("changed", changed),
    ):
        if names:
            raise GpuwardError(f"mirror {out}: {', '.join(names[:3])} {problem}")
    return MirrorManifest(files)


def import_into(out: Path, repo: Path, director: Path | None = None) -> None:
    """Load a checked export into an air-gapped server's repository directories."""
    check_manifest(out)
    pairs = [
        (out / "v1/repo/metadata", repo / "metadata"),
        (out / "v1/repo/targets", repo / "targets"),
    ]
    if director is not None:
        for node in sorted((out / "v1/director").glob("*/metadata")):
            pairs.append((node, director / "nodes" / node.parent.name / "metadata"))
    for source, dest in pairs:
        shutil.copytree(source, dest, dirs_exist_ok=True)
