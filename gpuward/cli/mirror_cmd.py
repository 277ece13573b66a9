"""``gpuward mirror``: export, verify and import static copies of the repositories."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit
from gpuward.cli.progress import add_progress_flag, progress_for

if TYPE_CHECKING:  # imported where used: the CLI starts without loading TUF
    from fleet.tlog import LogExport
    from keys.ceremony import Staged
    from keys.image_repo import ImageRepository
    from keys.site import SiteKeys

# A name that resolves nowhere: verification reads the copy, never the network.
OFFLINE_BASE = "http://mirror.invalid"


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("mirror", help="static mirrors and air-gapped copies")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    export = sub.add_parser("export", help="copy both repositories into a static mirror")
    export.add_argument("--repo", type=Path, required=True, help="image repository directory")
    export.add_argument("--director", type=Path, help="director directory (optional)")
    export.add_argument(
        "--to",
        type=Path,
        required=True,
        help="new, empty directory, or a new FILE.tar for removable media",
    )
    export.add_argument(
        "--db",
        help="the server's fleet store (its db URL): carry the transparency log too, "
        "signed with the server's checkpoint key (REPO/keys/tlog.key)",
    )
    add_json_flag(export)
    add_progress_flag(export)
    export.set_defaults(func=_export)

    verify = sub.add_parser("verify", help="check a mirror offline against the trusted root")
    verify.add_argument("mirror", type=Path, help="mirror directory or .tar")
    verify.add_argument("--trusted-root", type=Path, required=True, help="the image root.json")
    add_json_flag(verify)
    verify.set_defaults(func=_verify)

    load = sub.add_parser(
        "import",
        help="check a mirror as 'mirror verify' does, then load it into a server's directories",
        description=(
            "The export is checked exactly as 'gpuward mirror verify' checks it (manifest, "
            "every signature from the trusted root, every target's bytes) before anything is "
            "written. The trusted root is the one the repository already serves; the first "
            "import, into a repository without one, needs --trusted-root."
        ),
    )
    load.add_argument("mirror", type=Path, help="mirror directory or .tar")
    load.add_argument("--repo", type=Path, required=True, help="the site's repository directory")
    load.add_argument("--director", type=Path)
    load.add_argument(
        "--trusted-root",
        type=Path,
        help="the image root.json to verify against instead of REPO/metadata/root.json "
        "(the root your agents are installed with; needed for the first import)",
    )
    add_json_flag(load)
    add_progress_flag(load)
    load.set_defaults(func=_import)

    site_keys = sub.add_parser(
        "site-keys",
        help="inside an air-gapped site: create the site's own timestamp and snapshot keys",
    )
    site_keys.add_argument("--repo", type=Path, required=True, help="the site's repository")
    site_keys.add_argument("--site", required=True, help="a short name for the site")
    site_keys.add_argument(
        "-o", "--output", type=Path, required=True, help="public keys file to carry upstream"
    )
    site_keys.set_defaults(func=_site_keys)

    for name, summary, func in (
        ("trust-site", "a root that lets a site's keys sign timestamp and snapshot", _trust_site),
        ("distrust-site", "a root without a site's timestamp and snapshot keys", _distrust_site),
    ):
        change = sub.add_parser(name, help=f"upstream: stage {summary}")
        change.add_argument("site_keys", type=Path, help="written by 'gpuward mirror site-keys'")
        change.add_argument("--repo", type=Path, required=True, help="the upstream repository")
        change.add_argument("-o", "--output", type=Path, required=True, help="staged root to write")
        change.set_defaults(func=func)


def _export(args: argparse.Namespace) -> None:
    import asyncio

    from keys import tlog_key
    from server.mirror import export, log_files
    from server.store import open_store
    from server.tlog import TransparencyLog

    async def read_log(signer: tlog_key.NoteSigner) -> LogExport:
        store = await open_store(args.db)
        try:
            return await TransparencyLog(store, signer).export()
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as scratch:
        extra = []
        if args.db is not None:
            signer = tlog_key.load_or_create(tlog_key.default_path(args.repo))
            log = asyncio.run(read_log(signer))
            extra = log_files(log, signer.verifier.vkey(), Path(scratch))
        with progress_for(args, "mirror_progress") as progress:
            manifest = export(args.repo, args.to, args.director, progress, extra)
    emit(
        args,
        {"mirror": str(args.to), "files": len(manifest.files)},
        f"exported {len(manifest.files)} files to {args.to}; serve it with any static web server",
    )


def verified_targets(mirror: Path, trusted_root: Path, scratch: Path | None = None) -> list[str]:
    """What ``mirror verify`` checks in an export laid out as served: python-tuf's
    client, offline, from ``trusted_root`` (every role's signatures, versions and
    expiry, and every target's bytes); the targets' names."""
    from agent.fetcher import DirectoryFetcher
    from node.channel import TufChannel

    with tempfile.TemporaryDirectory(prefix=".gpuward-verify-", dir=scratch) as tmp:
        channel = TufChannel(
            "mirror",
            trusted_root,
            Path(tmp) / "metadata",
            f"{OFFLINE_BASE}/v1/repo/metadata/",
            f"{OFFLINE_BASE}/v1/repo/targets/",
            Path(tmp) / "targets",
            fetcher=DirectoryFetcher(mirror, OFFLINE_BASE),
        )
        channel.refresh()
        return channel.verify_all()


def _verify(args: argparse.Namespace) -> None:
    from server.mirror import check_manifest, opened

    with opened(args.mirror) as mirror:
        manifest = check_manifest(mirror)
        names = verified_targets(mirror, args.trusted_root)
    emit(
        args,
        {"mirror": str(args.mirror), "files": len(manifest.files), "targets": sorted(names)},
        f"{args.mirror}: manifest and signatures verify; {len(names)} target(s) checked",
    )


def _import(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from gpuward.cli.service_owner import become_folder_owner
    from server.mirror import import_into

    # Into a server's repository (/var/lib/gpuward-server/repo): as the server's
    # account, so that it can re-sign what it now serves.
    become_folder_owner(args.repo)
    # The site's own root by default: an export must chain from what it serves.
    root = args.trusted_root or args.repo / "metadata/root.json"
    if not root.is_file():
        raise GpuwardError(
            f"{args.repo} serves no root yet: give --trusted-root with the image root.json "
            "your agents are installed with (/etc/gpuward/root.json) for the first import"
        )
    with progress_for(args, "mirror_progress") as progress:
        imported = import_into(
            args.mirror,
            args.repo,
            args.director,
            verify=lambda out: verified_targets(out, root, scratch=args.repo.parent),
            progress=progress,
        )
    resigned = imported.resigned
    emit(
        args,
        {
            "mirror": str(args.mirror),
            "repo": str(args.repo),
            "trusted_root": str(root),
            "targets": list(imported.targets),
            "resigned": None
            if resigned is None
            else {"snapshot": resigned.snapshot, "timestamp": resigned.timestamp},
        },
        f"imported {args.mirror} into {args.repo}; {len(imported.targets)} target(s) "
        f"verified against {root}"
        + (
            ""
            if resigned is None
            else f"; the site signed snapshot {resigned.snapshot} and "
            f"timestamp {resigned.timestamp}"
        ),
    )


def _site_keys(args: argparse.Namespace) -> None:
    from keys.durable_files import atomic_write
    from keys.site import create_site_keys

    keys = create_site_keys(args.repo, args.site)
    atomic_write(args.output, keys.to_bytes())
    print(
        f"created the site's timestamp and snapshot keys in {args.repo / 'keys'}; carry "
        f"{args.output} upstream for 'gpuward mirror trust-site'"
    )


def _trust_site(args: argparse.Namespace) -> None:
    from keys.site import stage_site_keys

    _write_staged_root(args, stage_site_keys)


def _distrust_site(args: argparse.Namespace) -> None:
    from keys.site import stage_site_removal

    _write_staged_root(args, stage_site_removal)


def _write_staged_root(
    args: argparse.Namespace, stage: Callable[[ImageRepository, SiteKeys], Staged]
) -> None:
    from keys.ceremony import write_staged
    from keys.image_repo import ImageRepository
    from keys.site import SiteKeys

    staged = stage(ImageRepository(args.repo), SiteKeys.read(args.site_keys))
    write_staged(staged, args.output)
    print(
        f"staged root version {staged.metadata.signed.version} in {args.output}: sign it with "
        f"'gpuward keys sign' ({staged.threshold} of {len(staged.keyids)} root keys), then "
        "'gpuward repo publish'"
    )
