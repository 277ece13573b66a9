"""``gpuward agent``: the on-node agent."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gpuward.cli import kernel_hold_cmd, service_owner
from gpuward.cli.output import add_json_flag, emit


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("agent", help="the on-node agent")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run", help="update, check health and report; loop until SIGTERM unless --once"
    )
    run.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    run.add_argument(
        "--once",
        action="store_true",
        help="run one cycle and exit: 0 done, 3 update refused or rolled back, 1 error",
    )
    add_json_flag(run)
    run.set_defaults(func=_run)

    apply = sub.add_parser(
        "apply",
        help="(root, no network) resume the journaled A/B applier and finish the spooled "
        "update: 0 committed, deferred or nothing to do; 3 refused or rolled back",
    )
    apply.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    add_json_flag(apply)
    apply.set_defaults(func=_apply)

    gpus = sub.add_parser("gpus", help="NVML inventory, health sample and findings per GPU")
    add_json_flag(gpus)
    gpus.set_defaults(func=_gpus)

    enroll = sub.add_parser(
        "enroll",
        help="create this node's request key (0600) and enroll it with the server",
        description="Create this node's request key (<root_dir>/var/lib/gpuward/node.key, "
        "0600) and enroll it with the server. "
        + service_owner.ROOT_NOTE.format(folder="<root_dir>/var/lib/gpuward"),
    )
    enroll.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    add_json_flag(enroll)
    enroll.set_defaults(func=_enroll)

    health = sub.add_parser(
        "health", help="look at the GPUs now and judge them against the active slot's driver"
    )
    health.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    add_json_flag(health)
    health.set_defaults(func=_health)
    kernel_hold_cmd.register_under_agent(sub)


def _run(args: argparse.Namespace) -> int:
    from fleet.errors import GpuwardError
    from gpuward.node import run_forever, run_once
    from node.config import load_config

    config = load_config(args.config)
    if not args.once:
        run_forever(config)
        return 0
    result = run_once(config)
    if result.outcome.update == "failed":
        raise GpuwardError(result.outcome.reason)
    report = result.report
    emit(
        args,
        {
            "update": result.outcome.update,
            "reason": result.outcome.reason,
            "report_sent": result.report_sent,
            "report": report.to_dict(),
        },
        f"{config.node_id}: {result.outcome.update} ({result.outcome.reason}); "
        f"slot {report.active_slot or '-'}, driver {report.driver_version or '-'}",
    )
    # A refused or rolled-back update is an alarm worth a distinct exit status.
    return 3 if result.outcome.update in ("refused", "rolled-back") else 0


def _apply(args: argparse.Namespace) -> int:
    from applier.state_machine import apply_once
    from node.config import load_config

    config = load_config(args.config)
    result = apply_once(config)
    emit(
        args,
        {
            "state": result.state,
            "outcome": result.outcome,
            "reason": result.reason,
            "active_slot": result.active_slot,
            "measured": result.measured,
            "unenforced": list(result.unenforced),
        },
        f"{config.node_id}: {result.outcome} (journal {result.state}"
        f"{': ' + result.reason if result.reason else ''}); slot {result.active_slot or '-'}"
        + (f"\ndriver NOT measured: {result.measured}" if result.measured else "")
        + "".join(f"\ndriver setting NOT set: {failed}" for failed in result.unenforced),
    )
    return 3 if result.outcome in ("refused", "rolled-back") else 0


def _enroll(args: argparse.Namespace) -> None:
    from agent.identity import enroll, enrollment_files, enrollment_token
    from node.config import load_config

    config = load_config(args.config)
    token = enrollment_token(config)  # may be root's alone: read before giving root up
    service_owner.become_folder_owner(config.state_dir, enrollment_files(config))
    result = enroll(config, token)
    emit(
        args,
        result,
        f"{result['node_id']}: enrolled in pool {result['pool']} ({result['attestation']}); "
        f"key {config.key_file}",
    )


def _health(args: argparse.Namespace) -> int:
    from agent.daemon import make_probe
    from fleet.gpu_rules import FAILED
    from gpuward.cli.output import table
    from node.config import load_config
    from node.driver_settings import settings_report
    from node.gpu_health import assess, gate
    from node.slots import Slots

    config = load_config(args.config)
    seen = make_probe(config).probe()
    slots = Slots(config.slots_dir)
    content = slots.content(slots.active())
    expected = content.manifest.driver_version if content else None
    settings = settings_report(config)
    health = assess(seen, drift=() if settings is None else settings.drift)
    if expected:
        # What the applier's health gate would decide, from the assessment already made.
        reasons = gate(seen, expected)
        status, why = (FAILED, reasons) if reasons else (health.status, list(health.reasons))
    else:
        # Nothing to compare the loaded driver with; NVML failing says more than that.
        reasons = [seen.error or "no driver bundle is active"]
        status, why = health.status, list(health.reasons)
    rows = [
        (g.index, g.name, g.uuid, "yes" if g.healthy else "no", "; ".join(g.problems))
        for g in seen.gpus
    ]
    emit(
        args,
        {
            "inventory": _inventory(config.health_backend),
            "healthy": not reasons,
            "reasons": reasons,
            "status": status,
            "status_reasons": why,
            "expected_driver": expected,
            "driver_version": seen.driver_version,
            "error": seen.error,
            "gpus": [g.to_dict() for g in seen.gpus],
            "health": health.to_dict(),
            "settings": None if settings is None else settings.to_dict(),
        },
        f"driver {seen.driver_version or '-'} (expected {expected or '-'}): {status}"
        + "".join(f"\n  {r}" for r in why)
        + ("" if not reasons or reasons == why else "\ngate: " + "; ".join(reasons))
        + "\n"
        + table(("GPU", "NAME", "UUID", "HEALTHY", "PROBLEMS"), rows),
    )
    return 0 if not reasons else 3


def _inventory(backend: str) -> dict[str, Any] | None:
    """What the GPUs are, as NVML lists them; None where NVML is not used or not usable."""
    if backend != "nvml":
        return None
    from node.nvml import NvmlUnavailable, collect

    try:
        host = collect()
    except NvmlUnavailable:
        return None  # the probe's error says why
    return {
        "driver_version": host.driver_version,
        "cuda_driver_version": host.cuda_driver_version,
        "gpus": [g.to_dict() for g in host.inventory],
    }


def _gpus(args: argparse.Namespace) -> None:
    from gpuward.cli.output import table
    from node.nvml import collect, inventory_to_dict

    doc = inventory_to_dict(collect())
    rows = [
        (
            g["inventory"]["index"],
            g["inventory"]["name"],
            g["inventory"]["uuid"],
            g["inventory"]["pci_bus_id"],
            "; ".join(f["message"] for f in g["findings"]) or "-",
        )
        for g in doc["gpus"]
    ]
    emit(
        args,
        doc,
        f"driver {doc['driver_version']}, CUDA {doc['cuda_driver_version'] or '-'}\n"
        + table(("GPU", "NAME", "UUID", "PCI", "FINDINGS"), rows),
    )
