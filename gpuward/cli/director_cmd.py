"""``gpuward director``: per-node targeting through the director repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuward.cli.output import add_json_flag, emit


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("director", help="the director repository (which node runs what)")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="create director keys (root sealed offline, others online)")
    init.add_argument("dir", type=Path)
    init.set_defaults(func=_init)

    assign = sub.add_parser("assign", help="point a node at a bundle the image repository signed")
    assign.add_argument("node", help="node id")
    assign.add_argument("target", help="target path in the image repository, e.g. drivers/R580/x")
    assign.add_argument("--repo", type=Path, required=True, help="image repository directory")
    assign.add_argument("--director", type=Path, required=True, help="director directory")
    assign.add_argument("--hardware-id", required=True, help="GPU model the bundle is meant for")
    assign.add_argument(
        "--release-counter", type=int, required=True, help="must exceed the node's current one"
    )
    add_json_flag(assign)
    assign.set_defaults(func=_assign)

    stamp = sub.add_parser("timestamp", help="re-sign every node's timestamp (online key)")
    stamp.add_argument("--director", type=Path, required=True)
    stamp.set_defaults(func=_timestamp)


def _init(args: argparse.Namespace) -> None:
    from keys.director_repo import DirectorRepository
    from keys.sealed import passphrase_from_env_or_prompt

    passphrase = passphrase_from_env_or_prompt("the director's root key", confirm=True)
    director = DirectorRepository.init(args.dir, passphrase)
    print(
        f"created director {args.dir}; install {director.base.metadata_dir / '1.root.json'} "
        "on every agent as [director] trusted_root"
    )


def _assign(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from gpuward.cli.service_owner import become_folder_owner
    from keys.director_repo import DirectorRepository
    from keys.image_repo import ImageRepository

    # The director lives with the server (/var/lib/gpuward-server/director): as
    # root, sign as the server's account, so that the server can re-sign it.
    become_folder_owner(args.director)
    image = ImageRepository(args.repo)
    branch = args.target.split("/")[1] if args.target.count("/") >= 2 else ""
    if branch not in image.branch_roles():
        raise GpuwardError(f"{args.target} is not under a published branch of {args.repo}")
    info = image.targets(branch).signed.targets.get(args.target)
    if info is None:
        raise GpuwardError(
            f"{args.target} is not published in {args.repo}; see 'gpuward repo list'"
        )
    done = DirectorRepository(args.director).assign(
        args.node, info, args.hardware_id, args.release_counter
    )
    emit(
        args,
        {"node": done.node_id, "target": done.target_path, "release_counter": done.release_counter},
        f"{done.node_id} -> {done.target_path} (release counter {done.release_counter})",
    )


def _timestamp(args: argparse.Namespace) -> None:
    from gpuward.cli.service_owner import become_folder_owner
    from keys.director_repo import DirectorRepository

    become_folder_owner(args.director)
    DirectorRepository(args.director).refresh_timestamps()
