"""``gpuward compat``: run the compatibility gate by hand, and plan a fleet's branches."""

from __future__ import annotations

import argparse
import json
import tarfile
from collections import Counter
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuward.cli.operator_client import add_credential_flags
from gpuward.cli.output import add_json_flag, emit, table

if TYPE_CHECKING:
    from fleet.catalog import Catalog
    from fleet.manifest import BundleManifest

EXIT_REFUSED = 3
MAX_INVENTORY_BYTES = 1024 * 1024
MAX_FLEET_BYTES = 256 * 1024 * 1024


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("compat", help="driver compatibility: gate and fleet plan")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser(
        "check",
        help="may this bundle go on this node? (exit 0: allowed, 3: refused)",
        description=(
            "Run the agent's compatibility gate on a node inventory and a bundle, and print "
            "every reason for a refusal. Exit status: 0 when the bundle is allowed, "
            f"{EXIT_REFUSED} when it is refused, 1 on an error (unreadable or invalid input)."
        ),
    )
    check.add_argument("--inventory", type=Path, required=True, help="node inventory JSON")
    check.add_argument(
        "--bundle", type=Path, required=True, help="a bundle file, or its manifest as JSON"
    )
    _common(check)
    check.set_defaults(func=_check)

    plan = sub.add_parser(
        "plan",
        help="which nodes can take each published branch, and which are stranded",
        description=(
            "For every node of a fleet (a file, or the server's enrolled nodes) and every "
            "branch with published bundles: the newest bundle the node accepts, or why none; "
            "the newest CUDA the node can run; for GPUs whose support ends with an older "
            "branch, that branch and its end of life as the deadline; and, for a node whose "
            "running driver has security advisories open (the catalog's feed of NVIDIA's "
            "bulletins), the smallest published bundle of its branch it can take that closes "
            "them all, or else the nearest branch's. The server's fleet view gives each "
            "node's running driver; a fleet file may give it as driver_version."
        ),
    )
    fleet = plan.add_mutually_exclusive_group(required=True)
    fleet.add_argument(
        "--fleet",
        type=Path,
        help="a JSON list of node inventories, or the server's fleet view (GET /v1/fleet) saved",
    )
    fleet.add_argument(
        "--from-server",
        metavar="URL",
        dest="server",
        help="the nodes enrolled with the server at URL, each with the inventory its agent "
        "reported (a viewer token, as for 'gpuward nodes')",
    )
    add_credential_flags(plan)
    plan.add_argument("--repo", type=Path, help="plan against the bundles published in this repo")
    plan.add_argument(
        "--bundle",
        type=Path,
        action="append",
        default=[],
        help="plan against this bundle (file or manifest JSON); repeat for each",
    )
    _common(plan)
    plan.set_defaults(func=_plan)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--today",
        type=_date,
        default=date.today(),
        metavar="YYYY-MM-DD",
        help="the date for end-of-life decisions (default: today)",
    )
    parser.add_argument(
        "--catalog", type=Path, help="a catalog JSON file (default: the one gpuward ships)"
    )
    add_json_flag(parser)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (expected YYYY-MM-DD)") from None


def _read_json(path: Path, what: str, limit: int) -> Any:
    from fleet.errors import InvalidDocument
    from keys.durable_files import read_bounded

    data = read_bounded(path, limit, what)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidDocument(f"{path}: {what} is not JSON ({exc})") from None


def _catalog(args: argparse.Namespace) -> Catalog:
    from fleet.catalog import MAX_CATALOG_BYTES, default_catalog, load_catalog
    from keys.durable_files import read_bounded

    if args.catalog is None:
        return default_catalog()
    data = read_bounded(args.catalog, MAX_CATALOG_BYTES, "catalog")
    return load_catalog(data, where=str(args.catalog))


def _manifest(path: Path) -> BundleManifest:
    from fleet.errors import GpuwardError
    from fleet.manifest import BundleManifest
    from keys.bundle import MAX_MANIFEST, read_manifest

    if not path.is_file():
        raise GpuwardError(f"bundle {path} not found")
    if tarfile.is_tarfile(path):
        return read_manifest(path)
    return BundleManifest.from_dict(
        _read_json(path, "bundle manifest", MAX_MANIFEST), where=f"{path}: manifest"
    )


def _check(args: argparse.Namespace) -> int:
    from fleet.compat import check
    from fleet.inventory import NodeInventory

    catalog = _catalog(args)
    inventory = NodeInventory.from_dict(
        _read_json(args.inventory, "inventory", MAX_INVENTORY_BYTES), where=str(args.inventory)
    )
    manifest = _manifest(args.bundle)
    verdict = check(inventory, manifest, catalog, args.today)
    outcome = "allowed" if verdict.allowed else "refused"
    lines = [
        f"{inventory.node_id}: driver {manifest.driver_version} ({manifest.branch}) {outcome}",
        *(f"  {r.code:<18} {r.message}" for r in verdict.reasons),
    ]
    emit(
        args,
        {
            "node_id": inventory.node_id,
            "driver_version": manifest.driver_version,
            "branch": manifest.branch,
            "today": args.today.isoformat(),
            "catalog_version": catalog.catalog_version,
            **verdict.to_dict(),
        },
        "\n".join(lines),
    )
    return 0 if verdict.allowed else EXIT_REFUSED


def _plan(args: argparse.Namespace) -> None:
    from fleet.errors import GpuwardError
    from fleet.inventory import fleet_inventories
    from fleet.plan import plan
    from gpuward.cli.operator_client import call

    if args.repo is None and not args.bundle:
        raise GpuwardError(
            "nothing to plan against: give --repo DIR (its published bundles) or --bundle FILE"
        )
    catalog = _catalog(args)
    if args.server is not None:
        where = f"{args.server.rstrip('/')}/v1/fleet"
        fleet = fleet_inventories(call(args, "GET", "/v1/fleet"), where)
    else:
        where = str(args.fleet)
        fleet = fleet_inventories(_read_json(args.fleet, "fleet file", MAX_FLEET_BYTES), where)
    if not fleet.nodes:
        raise GpuwardError(
            f"{where}: no node to plan: none has reported an inventory yet (agents send one "
            "with each report)"
        )
    nodes = fleet.nodes
    bundles = [_manifest(p) for p in args.bundle]
    if args.repo is not None:
        from keys.image_repo import ImageRepository

        bundles.extend(b.manifest for b in ImageRepository(args.repo).published())
    if not bundles:
        raise GpuwardError(f"{args.repo} has no published bundles to plan against")
    result = plan(nodes, bundles, catalog, args.today)
    rows = []
    for node in result.nodes:
        gpus = ", ".join(f"{n}x {label}" for label, n in Counter(node.gpus).items())
        cells = [
            f.bundle.driver_version if f.bundle else ",".join(sorted(f.verdict.codes))
            for f in node.fits
        ]
        rows.append(
            [
                node.node_id,
                gpus,
                *cells,
                node.max_cuda,
                None if node.stranded is None else node.stranded.text(),
                node.advisory_text(),
            ]
        )
    text = table(("NODE", "GPUS", *result.branches, "MAX CUDA", "STRANDED ON", "ADVISORIES"), rows)
    unplanned = fleet.without_inventory
    if unplanned:
        named = ", ".join(unplanned[:10]) + (", ..." if len(unplanned) > 10 else "")
        text += f"\nnot planned, no inventory reported yet: {len(unplanned)} node(s) ({named})"
    emit(
        args,
        {**result.to_dict(), "without_inventory": list(unplanned)},
        f"{text}\n(as of {result.today}; --json gives every reason)",
    )
