"""``gpuward repo``: publish bundles into an image repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit, table
from gpuward.cli.progress import add_progress_flag, progress_for


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("repo", help="the image repository")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", help="publish a bundle and re-sign targets, snapshot, timestamp")
    add.add_argument("bundle", type=Path)
    add.add_argument("--repo", type=Path, required=True, help="repository directory")
    add_json_flag(add)
    add_progress_flag(add)
    add.set_defaults(func=_add)

    remove = sub.add_parser(
        "remove",
        help="withdraw a published bundle: re-sign its branch role without it, then "
        "snapshot and timestamp",
        description=(
            "Agents stop seeing the bundle at their next refresh; nodes already running it "
            "are flagged 'withdrawn' in 'gpuward nodes list'. Its file stays under targets/ "
            "for clients midway through the previous snapshot. Signing needs the branch's "
            "offline key; then copy the repository to the server as after 'repo add'."
        ),
    )
    remove.add_argument("target", help="the bundle's target path, as 'gpuward repo list' shows it")
    remove.add_argument("--repo", type=Path, required=True, help="repository directory")
    add_json_flag(remove)
    remove.set_defaults(func=_remove)

    add_catalog = sub.add_parser(
        "add-catalog",
        help="publish a compatibility catalog (validated first; its catalog_version must go up)",
    )
    add_catalog.add_argument("catalog", type=Path, help="catalog JSON file")
    add_catalog.add_argument("--repo", type=Path, required=True, help="repository directory")
    add_json_flag(add_catalog)
    add_catalog.set_defaults(func=_add_catalog)

    add_rims = sub.add_parser(
        "add-rims",
        help="publish GPU RIMs (and OCSP responses) the server judges GPU attestation with",
        description=(
            "Publish every *.swidtag in RIMS (NVIDIA's Reference Integrity Manifests) and, "
            "with --ocsp, every *.der there (OCSP responses for the GPUs' device certificates "
            "and the RIM signers', fetched where the network is) as targets under gpu-rims/, "
            "signed by the targets key. The server judges GPU evidence with them and checks "
            "revocation against the responses; mirrors carry them into an air gap. A file "
            "published before under the same name is replaced: re-run with fresh OCSP "
            "responses before the published ones reach their nextUpdate."
        ),
    )
    add_rims.add_argument("rims", type=Path, help="folder of RIMs (*.swidtag)")
    add_rims.add_argument("--ocsp", type=Path, metavar="DIR", help="folder of OCSP responses")
    add_rims.add_argument("--repo", type=Path, required=True, help="repository directory")
    add_json_flag(add_rims)
    add_rims.set_defaults(func=_add_rims)

    listing = sub.add_parser("list", help="list published bundles")
    listing.add_argument("--repo", type=Path, required=True)
    add_json_flag(listing)
    listing.set_defaults(func=_list)

    stage = sub.add_parser(
        "stage",
        help="write the next version of a role, unsigned, for offline signing",
        description=(
            "Offline signing, step 1 of 3: stage here, sign with 'gpuward keys sign' where "
            "the keys are, then 'gpuward repo publish' once enough have signed."
        ),
    )
    stage.add_argument("role", help="root, targets, or a branch role such as R580")
    stage.add_argument("--repo", type=Path, required=True)
    stage.add_argument("--add-bundle", type=Path, help="add this bundle to the branch role")
    stage.add_argument("-o", "--output", type=Path, required=True, help="staged file to write")
    stage.set_defaults(func=_stage)

    publish = sub.add_parser("publish", help="publish staged metadata once its threshold is met")
    publish.add_argument("staged", type=Path)
    publish.add_argument("--repo", type=Path, required=True)
    publish.set_defaults(func=_publish)

    export = sub.add_parser(
        "export-server",
        help="write the server's part: metadata, targets and the online keys, no offline key",
        description=(
            "Write OUT/repo (metadata/, targets/, and in keys/ only the snapshot and timestamp "
            "keys, and the report key if there is one) and, with --director, OUT/director "
            "(its metadata and its targets, snapshot and timestamp keys). Root, targets and "
            "branch keys, and the director's root key, are never written: they stay here. "
            "Run as root into a folder a service account owns, the files are given to it."
        ),
    )
    export.add_argument("--repo", type=Path, required=True, help="image repository directory")
    export.add_argument("--director", type=Path, help="director repository directory")
    export.add_argument("--to", type=Path, required=True, help="a new or empty folder")
    add_json_flag(export)
    export.set_defaults(func=_export_server)

    stamp = sub.add_parser(
        "timestamp", help="re-sign the timestamp with the online key (run it at least daily)"
    )
    stamp.add_argument("--repo", type=Path, required=True)
    stamp.set_defaults(func=_timestamp)


def _add(args: argparse.Namespace) -> None:
    from fleet.branches import require_branch
    from fleet.catalog import default_catalog
    from fleet.compat import bundle_problems
    from fleet.errors import GpuwardError
    from keys.bundle import read_manifest
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source

    repo = ImageRepository(args.repo)
    repo.targets()  # fail on a missing repository before asking for a passphrase
    manifest = read_manifest(args.bundle)
    require_branch(manifest.branch)
    problems = bundle_problems(manifest, default_catalog())
    if problems:
        raise GpuwardError(f"{args.bundle} contradicts the catalog: {'; '.join(problems)}")
    with progress_for(args) as progress:
        published = repo.add_bundle(args.bundle, passphrase_source("the offline keys"), progress)
    emit(
        args,
        {
            "target": published.target_path,
            "sha256": published.sha256,
            "length": published.length,
            "provenance": published.provenance,
        },
        f"published {published.target_path} (driver {published.manifest.driver_version})"
        + ("" if published.provenance is None else f" and its provenance {published.provenance}"),
    )


def _remove(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source

    repo = ImageRepository(args.repo)
    repo.targets()  # fail on a missing repository before asking for a passphrase
    removed = repo.remove_bundle(args.target, passphrase_source("the offline keys"))
    emit(
        args,
        {"withdrawn": removed.target_path, "sha256": removed.sha256, "length": removed.length},
        f"withdrew {removed.target_path} (driver {removed.manifest.driver_version}): agents "
        "no longer see it; nodes running it show as withdrawn in 'gpuward nodes list'",
    )


def _add_catalog(args: argparse.Namespace) -> None:
    from fleet.catalog import MAX_CATALOG_BYTES, load_catalog
    from keys.durable_files import read_bounded
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source

    repo = ImageRepository(args.repo)
    repo.targets()  # fail on a missing repository before asking for a passphrase
    # ... and on a bad catalog, too.
    load_catalog(read_bounded(args.catalog, MAX_CATALOG_BYTES, "catalog"), where=str(args.catalog))
    published = repo.add_catalog(args.catalog, passphrase_source("the offline keys"))
    emit(
        args,
        {
            "target": published.target_path,
            "catalog_version": published.catalog_version,
            "sha256": published.sha256,
            "length": published.length,
        },
        f"published {published.target_path} (catalog version {published.catalog_version})",
    )


def _add_rims(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from fleet.gpu_attestation import MAX_GPU_RIM_FILE_BYTES, OCSP_SUFFIX, RIM_SUFFIX
    from keys.durable_files import read_bounded
    from keys.image_repo import ImageRepository
    from keys.sealed import passphrase_source
    from server.gpu_attestation.ocsp import load_response
    from server.gpu_attestation.rim import RimFile, version_of

    repo = ImageRepository(args.repo)
    repo.targets()  # fail on a missing repository before asking for a passphrase
    files: list[tuple[str, bytes]] = []
    for folder, suffix in ((args.rims, RIM_SUFFIX), (args.ocsp, OCSP_SUFFIX)):
        if folder is None:
            continue
        if not folder.is_dir():
            raise GpuwardError(f"{folder}: not a folder of *{suffix} files")
        for path in sorted(p for p in folder.glob(f"*{suffix}") if p.is_file()):
            data = read_bounded(path, MAX_GPU_RIM_FILE_BYTES, "RIM or OCSP response")
            # A file the server could not use is refused here, before anything is signed.
            if suffix == RIM_SUFFIX:
                version_of(RimFile(str(path), data))
            else:
                load_response(str(path), data)
            files.append((path.name, data))
    if not any(name.endswith(RIM_SUFFIX) for name, _ in files):
        raise GpuwardError(f"{args.rims} holds no *{RIM_SUFFIX} file: name NVIDIA's RIM folder")
    published = repo.add_gpu_rims(files, passphrase_source("the offline keys"))
    changed = [p for p in published if p.changed]
    emit(
        args,
        [
            {"target": p.target_path, "sha256": p.sha256, "length": p.length, "changed": p.changed}
            for p in published
        ],
        f"published {len(changed)} new or replaced of {len(published)} files under gpu-rims/"
        + "".join(f"\n  {p.target_path}" for p in changed),
    )


def _list(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository

    bundles = ImageRepository(args.repo).published()
    emit(
        args,
        [
            {"target": b.target_path, "sha256": b.sha256, "manifest": b.manifest.to_dict()}
            for b in bundles
        ],
        table(
            ("TARGET", "BRANCH", "DRIVER", "SHA256"),
            [
                (b.target_path, b.manifest.branch, b.manifest.driver_version, b.sha256[:16])
                for b in bundles
            ],
        ),
    )


def _export_server(args: argparse.Namespace) -> None:
    import pwd

    from keys.server_part import export

    part = export(args.repo, args.to, args.director)
    owner = None
    if part.owner is not None:
        uid = part.owner[0]
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:  # an account that only a container or NFS knows
            owner = str(uid)
    out = args.to.resolve()
    director = out / "director" if args.director else None
    lines = [
        f"wrote the server's part to {args.to}",
        f"  keys:     {', '.join(part.keys)} (no offline key)",
        *([f"  owner:    {owner} (as the folder it is in)"] if owner else []),
        f'  server.toml: repo = "{out / "repo"}"',
        *([f'               director = "{director}"'] if director else []),
    ]
    emit(
        args,
        {
            "repo": str(out / "repo"),
            "director": None if director is None else str(director),
            "keys": list(part.keys),
            "owner": owner,
        },
        "\n".join(lines),
    )


def _timestamp(args: argparse.Namespace) -> None:
    from keys.image_repo import ImageRepository

    md = ImageRepository(args.repo).sign_timestamp()
    print(f"timestamp version {md.signed.version}, expires {md.signed.expires.isoformat()}")


def _stage(args: argparse.Namespace) -> None:
    from keys.ceremony import stage, write_staged
    from keys.image_repo import ImageRepository

    staged = stage(ImageRepository(args.repo), args.role, add_bundle=args.add_bundle)
    write_staged(staged, args.output)
    print(
        f"staged {args.role} version {staged.metadata.signed.version} in {args.output}: "
        f"needs {staged.threshold} of {len(staged.keyids)} signatures"
    )


def _publish(args: argparse.Namespace) -> None:
    from keys.ceremony import Staged, publish
    from keys.image_repo import ImageRepository

    staged = Staged.read(args.staged)
    publish(ImageRepository(args.repo), staged)
    print(f"published {staged.role} version {staged.metadata.signed.version}")
