"""``gpuward bundle``: build driver bundles."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpuward.cli.output import add_json_flag, emit
from gpuward.cli.progress import add_progress_flag, progress_for

if TYPE_CHECKING:
    from fleet.manifest import BundleManifest


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("bundle", help="driver bundles")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = sub.add_parser("build", help="package a driver payload with its manifest")
    build.add_argument("payload", type=Path, help="a file or a directory of driver files")
    build.add_argument("--driver-version", required=True, help="e.g. 580.95.05")
    build.add_argument("--branch", required=True, help="e.g. R580")
    build.add_argument(
        "--payload-kind",
        default="files",
        choices=("files", "deb", "rpm", "runfile"),
        help="how the agent installs the payload: files (slots: lib/, modules/KERNEL/), "
        "deb (an apt repository: the .debs and 'apt-ftparchive packages . > Packages'), "
        "rpm (a dnf repository: 'createrepo_c .'), runfile (one NVIDIA .run) "
        "(default: files)",
    )
    build.add_argument(
        "--kernel",
        action="append",
        default=[],
        metavar="RELEASE",
        help="a kernel (uname -r) the payload has precompiled modules for; repeat for each",
    )
    build.add_argument(
        "--dkms", action="store_true", help="the payload builds its modules on the node (DKMS)"
    )
    build.add_argument(
        "--module-flavour",
        default="open",
        choices=("open", "proprietary"),
        help="kernel-module flavour in the payload (default: open)",
    )
    build.add_argument(
        "--arch",
        action="append",
        metavar="ARCH",
        help="a GPU architecture the bundle supports, e.g. Hopper; repeat for each "
        "(default: every architecture the catalog says this driver and flavour drive)",
    )
    build.add_argument(
        "--cuda", help="CUDA version the driver provides, e.g. 13.0 (default: from the catalog)"
    )
    build.add_argument(
        "--fabric-manager",
        metavar="VERSION",
        help="Fabric Manager version in the payload; must equal the driver version",
    )
    build.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="a JSON file of the driver settings nodes enforce with this driver: "
        '{"module_parameters": {"NVreg_CoherentGPUMemoryMode": "driver"}, '
        '"persistence_mode": true, "ecc": true, "mig": false, "compute_mode": "default"}; '
        "signed with the bundle",
    )
    build.add_argument("-o", "--output", type=Path, required=True, help="bundle file to write")
    build.add_argument(
        "--build-keys",
        type=Path,
        metavar="DIR",
        help="a keys folder holding the build key ('build', made and sealed on first use): "
        "write OUTPUT.provenance.json, an in-toto SLSA provenance of the bundle signed by it "
        "('gpuward repo add' publishes it beside the bundle; agents may require it)",
    )
    build.add_argument(
        "--apt-lists",
        type=Path,
        metavar="DIR",
        help="with --build-keys: the lists folder of the apt that downloaded the payload's "
        ".debs (Dir::State::Lists); each .deb is traced to a Packages index there and the "
        "InRelease whose signature covers it",
    )
    build.add_argument(
        "--archive-keyring",
        type=Path,
        metavar="FILE",
        help="the keyring the InRelease files must be signed by "
        "(default: /usr/share/keyrings/debian-archive-keyring.gpg)",
    )
    build.add_argument(
        "--published",
        action="append",
        default=[],
        metavar="URL=SHA256",
        help="with --build-keys: a payload file (say, an NVIDIA runfile) and the SHA-256 its "
        "publisher states for it at URL; repeat for each",
    )
    add_json_flag(build)
    add_progress_flag(build)
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> None:
    from fleet.branches import require_branch
    from fleet.errors import GpuwardError
    from keys.bundle import build_bundle, read_settings, sha256_file

    require_branch(args.branch)
    if not args.kernel and not args.dkms:
        raise GpuwardError(
            "say how the bundle provides kernel modules: --kernel RELEASE (repeat for each "
            "kernel with precompiled modules) or --dkms"
        )
    if args.build_keys is None and (args.apt_lists or args.published or args.archive_keyring):
        raise GpuwardError(
            "--apt-lists, --archive-keyring and --published describe the provenance: give "
            "--build-keys DIR too, the keys folder of the build key that signs it"
        )
    # Provenance inputs are read (signatures checked, key opened) before the build,
    # so a build that cannot be attested fails before writing anything.
    attest = None if args.build_keys is None else _attester(args)
    with progress_for(args) as progress:
        manifest = build_bundle(
            args.payload,
            driver_version=args.driver_version,
            branch=args.branch,
            payload_kind=args.payload_kind,
            output=args.output,
            kernels=args.kernel,
            dkms=args.dkms,
            module_flavour=args.module_flavour,
            architectures=args.arch,
            cuda_version=args.cuda,
            fabric_manager=args.fabric_manager,
            settings=None if args.settings is None else read_settings(args.settings),
            progress=progress,
        )
    digest = sha256_file(args.output)
    provenance = None
    if attest is not None:
        try:
            provenance = attest(manifest)
        except BaseException:
            args.output.unlink(missing_ok=True)  # no bundle without the provenance asked for
            raise
    emit(
        args,
        {
            "bundle": str(args.output),
            "sha256": digest,
            "manifest": manifest.to_dict(),
            "provenance": None if provenance is None else str(provenance),
        },
        f"built {args.output}: driver {manifest.driver_version} ({manifest.branch}), "
        f"{manifest.module_flavour} modules, {', '.join(manifest.architectures)}, "
        f"CUDA {manifest.cuda_version}, {len(manifest.files)} file(s), sha256 {digest}"
        + ("" if provenance is None else f"; provenance {provenance}"),
    )


def _attester(args: argparse.Namespace) -> Callable[[BundleManifest], Path]:
    """What signs the provenance of the bundle about to be built (``keys.provenance``)."""
    from fleet.errors import GpuwardError
    from keys import provenance
    from keys.sealed import passphrase_source

    published = []
    for item in args.published:
        url, _, sha256 = item.rpartition("=")
        if not url or not provenance.is_sha256(sha256):
            raise GpuwardError(f"--published {item!r}: give URL=SHA256 (64 lowercase hex digits)")
        published.append(provenance.PublishedFile(url, sha256))
    indexes = (
        []
        if args.apt_lists is None
        else provenance.signed_indexes(
            args.apt_lists, args.archive_keyring or provenance.DEBIAN_KEYRING
        )
    )
    signer = provenance.build_signer(args.build_keys, passphrase_source("the build key"))
    return lambda manifest: provenance.attest(
        args.output, manifest, signer, indexes=indexes, published=published
    )
