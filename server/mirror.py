"""Mirrors: a static, self-checking copy of both repositories.

An export lays the files out exactly as the server serves them (``v1/repo/...``
and ``v1/director/<node>/...``), so any static web server (nginx) is a mirror
and agents need no change of trust: they verify everything against the roots
they already hold. ``MANIFEST.json`` lists every file with its SHA-256 so a
copy carried across an air gap can be checked before it is served; TUF checks
the content itself (``verify`` runs python-tuf's client against the copy).

An export is a directory or, for removable media, one ``.tar`` file. A tar from
outside is hostile until checked: only plain files and folders are accepted,
written by ``keys.tar_extract`` (no absolute paths, no ``..``, nothing followed
or overwritten: the ``data`` filter's guarantees on any Python), and its
declared sizes are bounded before a byte is written, always into a fresh
temporary folder, so a refused archive leaves the destination as it was.

An import is checked exactly as ``gpuward mirror verify`` checks an export: the
manifest, then python-tuf's client from a trusted root over the very copy that
will be imported (every signature, every target's bytes), before anything is
written. The client lives with the agent, so the caller hands the check in
(``gpuward.cli.mirror_cmd`` hands in the one ``mirror verify`` runs); a
directory export is copied first, as an archive is unpacked, so what was
checked cannot change before it is imported.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuf.api.exceptions import UnsignedMetadataError

from fleet.errors import GpuwardError
from fleet.tlog import LogExport
from keys.durable_files import atomic_write, atomic_writer
from keys.image_repo import ImageRepository
from keys.progress import SILENT, ByteProgress, TrackedReader, copy_tracked
from keys.site import (
    Versions,
    check_not_older,
    check_offline_expiry,
    check_online_expiry,
    refresh,
    site_signs,
)
from keys.tar_extract import UnsafeMember, extract_files
from keys.tuf_repo import TufRepository

MANIFEST = "MANIFEST.json"
LOG_FOLDER = "v1/log"  # the transparency log, as ``log_files`` writes it
TIMESTAMP = "timestamp.json"
FORMAT = "gpuward-mirror/1"
# Large enough for years of driver bundles; a bigger archive is not a mirror.
MAX_ARCHIVE_BYTES = 256 * 1024**3
MAX_ARCHIVE_MEMBERS = 200_000


@dataclass(frozen=True)
class MirrorManifest:
    files: dict[str, str]  # relative path -> sha256

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"format": FORMAT, "files": self.files}, indent=2, sort_keys=True
        ).encode()


def is_archive(path: Path) -> bool:
    return path.suffix == ".tar"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _served_files(repo: Path, director: Path | None) -> list[tuple[Path, str]]:
    """Every file an export carries: (source, path in the mirror), in a stable order."""
    pairs = [
        (repo / "metadata", "v1/repo/metadata"),
        (repo / "targets", "v1/repo/targets"),
    ]
    if director is not None:
        for node in sorted((director / "nodes").glob("*/metadata")):
            pairs.append((node, f"v1/director/{node.parent.name}/metadata"))
    files = []
    for source, dest in pairs:
        if not source.is_dir():
            raise GpuwardError(f"{source} is missing: is {repo} a gpuward repository?")
        for path in sorted(
            p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
        ):
            files.append((path, f"{dest}/{path.relative_to(source).as_posix()}"))
    return files


def log_files(log: LogExport, vkey: str, folder: Path) -> list[tuple[Path, str]]:
    """The transparency log as a mirror carries it, written into ``folder``: the
    export ``gpuward log verify`` checks, its checkpoint alone (what a witness or
    node compares), and the log's verifier key. The key travels for convenience
    only: whoever verifies pins it from the server, not from the mirror."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "export.json": json.dumps(log.to_dict()).encode(),
        "checkpoint": log.checkpoint.encode(),
        "tlog.vkey": (vkey + "\n").encode(),
    }
    for name, data in written.items():
        atomic_write(folder / name, data)
    return [(folder / name, f"{LOG_FOLDER}/{name}") for name in written]


def export(
    repo: Path,
    out: Path,
    director: Path | None = None,
    progress: ByteProgress = SILENT,
    extra: Sequence[tuple[Path, str]] = (),
) -> MirrorManifest:
    """Copy the served parts of the image repository (and director) into ``out``:
    a new directory, or a new ``.tar`` file. ``progress`` follows the bytes copied
    (each file's digest is taken right after, from the page cache). ``extra``:
    more files to carry, (source, path in the mirror), such as ``log_files``."""
    if is_archive(out):
        if out.exists():
            raise GpuwardError(f"{out} exists; export into a new file")
        return _export_archive([*_served_files(repo, director), *extra], out, progress)
    if out.exists() and any(out.iterdir()):
        raise GpuwardError(f"{out} is not empty; export into a new directory")
    served = [*_served_files(repo, director), *extra]
    progress.begin(f"exporting to {out}", _bytes(served))
    files: dict[str, str] = {}
    for source, name in served:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_tracked(source, target, progress)
        files[name] = _sha256(target)
    manifest = MirrorManifest(files)
    atomic_write(out / MANIFEST, manifest.to_bytes())
    return manifest


def _member(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same repository exports to the same bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def _bytes(served: list[tuple[Path, str]]) -> int:
    return sum(source.stat().st_size for source, _ in served)


def _export_archive(
    served: list[tuple[Path, str]], out: Path, progress: ByteProgress
) -> MirrorManifest:
    progress.begin(f"exporting to {out}", _bytes(served))
    files: dict[str, str] = {}
    with (
        atomic_writer(out) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for source, name in served:
            with source.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                tar.addfile(_member(name, size), TrackedReader(f, progress))
            files[name] = _sha256(source)
        manifest = MirrorManifest(files)
        data = manifest.to_bytes()
        tar.addfile(_member(MANIFEST, len(data)), io.BytesIO(data))
    return manifest


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    return "device or special file"


def _unpack(
    archive: Path, dest: Path, max_bytes: int, max_members: int, progress: ByteProgress
) -> None:
    progress.begin(f"unpacking {archive}", archive.stat().st_size)
    try:
        with (
            archive.open("rb") as raw,
            tarfile.open(fileobj=TrackedReader(raw, progress), mode="r:") as tar,
        ):
            members = []
            declared = 0
            for member in tar:
                # A mirror holds only files and folders: links are refused outright,
                # never judged by where they lead.
                if not (member.isreg() or member.isdir()):
                    raise GpuwardError(
                        f"{archive}: {member.name} is a {_kind(member)}; a mirror holds only files"
                    )
                members.append(member)
                declared += member.size
                if len(members) > max_members or declared > max_bytes:
                    raise GpuwardError(
                        f"{archive}: more than {max_members} files or {max_bytes} bytes; "
                        "not a gpuward mirror"
                    )
            extract_files(tar, members, dest)
    except UnsafeMember as exc:
        raise GpuwardError(f"{archive}: {exc}; not a gpuward mirror") from None
    except (tarfile.TarError, EOFError) as exc:
        raise GpuwardError(
            f"{archive}: not a readable mirror archive ({exc}); copy it again from the source"
        ) from None


def _copy_folder(
    source: Path, dest: Path, max_bytes: int, max_members: int, progress: ByteProgress
) -> None:
    """Copy the export folder ``source`` into ``dest`` on the terms an archive is
    unpacked on: files and folders only (a link is refused, never followed), bounded."""
    progress.begin(f"copying {source}", None)  # its size is known once it is walked
    count = declared = 0
    pending = [Path()]
    while pending:
        folder = pending.pop()
        (dest / folder).mkdir(exist_ok=True)
        for entry in sorted(os.scandir(source / folder), key=lambda e: e.name):
            name = folder / entry.name
            count += 1
            declared += entry.stat(follow_symlinks=False).st_size
            if count > max_members or declared > max_bytes:
                raise GpuwardError(
                    f"{source}: more than {max_members} files or {max_bytes} bytes; "
                    "not a gpuward mirror"
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append(name)
            else:
                _copy_file(source, name, dest, progress)


def _copy_file(source: Path, name: Path, dest: Path, progress: ByteProgress) -> None:
    """Copy the regular file ``source/name`` to ``dest/name``."""
    refused = f"{source}: {name} is not a plain file; a mirror holds only files and folders"
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(source / name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link: refused outright, never followed
            raise GpuwardError(refused) from None
        raise GpuwardError(f"{source}: {name} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise GpuwardError(refused)
        with (dest / name).open("xb") as out:
            shutil.copyfileobj(TrackedReader(f, progress), out)


@contextlib.contextmanager
def opened(
    mirror: Path,
    *,
    scratch: Path | None = None,
    private: bool = False,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    progress: ByteProgress = SILENT,
) -> Iterator[Path]:
    """The mirror as a directory: a ``.tar`` unpacked into a temporary folder
    under ``scratch`` (the system's, ``$TMPDIR``, by default: removable media may
    be read-only), removed afterwards; a directory as it is, or with ``private``
    copied there too (what is checked is then what is imported).
    Callers check the manifest of what they get."""
    if not is_archive(mirror) and not private:
        yield mirror
        return
    if not (mirror.is_file() if is_archive(mirror) else mirror.is_dir()):
        raise GpuwardError(f"mirror {mirror} not found")
    with tempfile.TemporaryDirectory(prefix=".gpuward-mirror-", dir=scratch) as tmp:
        if is_archive(mirror):
            _unpack(mirror, Path(tmp), max_bytes, max_members, progress)
        else:
            _copy_folder(mirror, Path(tmp), max_bytes, max_members, progress)
        yield Path(tmp)


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


# Checks an export (a directory laid out as the server serves) against a trusted
# root, every target's bytes included; the names of the targets it checked.
Verifier = Callable[[Path], Sequence[str]]


def import_into(
    mirror: Path,
    repo: Path,
    director: Path | None = None,
    now: datetime | None = None,
    *,
    verify: Verifier,
    progress: ByteProgress = SILENT,
    **bounds: int,
) -> Imported:
    """Load a checked export (directory or ``.tar``) into an air-gapped server's
    repository directories; nothing is written unless the whole export checks.

    ``verify`` is ``mirror verify``'s check, run on a private copy of the export
    before anything is written. Where the site holds keys the imported root
    trusts for timestamp and snapshot (``keys.site``), both are re-signed at once
    in that copy, above any version the site served before, and the copy is
    checked as re-signed (what the site's agents will see), once the export's
    own timestamp and snapshot are shown signed by the keys its root names;
    otherwise an export whose timestamp or snapshot has already expired is
    refused, as agents would refuse it. ``progress`` follows the copies: the
    export into the private one, and that into the repository.
    """
    now = now or datetime.now(UTC)
    inside = ImageRepository(repo)
    with opened(mirror, scratch=repo.parent, private=True, progress=progress, **bounds) as out:
        manifest = check_manifest(out)
        exported = ImageRepository(out / "v1/repo")
        check_offline_expiry(exported, now)
        check_not_older(inside, exported)
        resigned = None
        if site_signs(exported.root_metadata().signed, inside.keyring):
            _check_online_roles_signed(exported)
            copy = TufRepository(exported.metadata_dir, inside.keyring, inside.expiry)
            resigned = refresh(copy, Versions.of(inside))
        else:
            check_online_expiry(exported, now)
        targets = verify(out)
        pairs = [
            (out / "v1/repo/targets", repo / "targets"),
            (out / "v1/repo/metadata", repo / "metadata"),
        ]
        if director is not None:
            for node in sorted((out / "v1/director").glob("*/metadata")):
                pairs.append((node, director / "nodes" / node.parent.name / "metadata"))
        progress.begin(f"copying into {repo}", sum(_tree_bytes(source) for source, _ in pairs))
        for source, dest in pairs:
            _copy_in(source, dest, progress)
    return Imported(manifest, tuple(targets), resigned)


def _check_online_roles_signed(exported: ImageRepository) -> None:
    """The export's timestamp and snapshot carry the signatures its root asks for,
    expired or not: the site re-signs their content, never a forgery's."""
    root = exported.root_metadata().signed
    for role, md in (("timestamp", exported.timestamp()), ("snapshot", exported.snapshot())):
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise GpuwardError(
                f"the export's {role} is not signed by the keys its root names ({exc}); "
                "not a genuine export: export again from the source"
            ) from None


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _copy_in(source: Path, dest: Path, progress: ByteProgress) -> None:
    """Copy a checked folder into place, a metadata folder's timestamp last: until it
    names them, nothing new is served."""

    def copy(src: str, dst: str) -> None:
        copy_tracked(Path(src), Path(dst), progress)

    shutil.copytree(
        source,
        dest,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(TIMESTAMP),
        copy_function=copy,
    )
    if (source / TIMESTAMP).is_file():
        atomic_write(dest / TIMESTAMP, (source / TIMESTAMP).read_bytes())


@dataclass(frozen=True)
class Imported:
    manifest: MirrorManifest
    targets: tuple[str, ...]  # every target verified against the trusted root
    resigned: Versions | None  # the site's own snapshot and timestamp, when it signs them
