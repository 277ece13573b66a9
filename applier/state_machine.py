"""``gpuward agent apply``: the root applier, a journaled A/B state machine.

The unprivileged agent only leaves verified bundles in the spool. This oneshot,
started by systemd with no network, re-verifies the request offline, unpacks it
into the inactive slot, waits for the GPUs to drain, flips the ``active`` link
with the slot's declared driver settings (``applier.settings``), runs the health
gate (``applier.health_gate``), and commits or rolls back. On a
node that attests, the committed bundle is then measured into the TPM
(``applier.measure``), and so is the active one at every start after a reboot.
Every transition is journaled before the next step acts, so a start after any
crash resumes from the journal to exactly one complete slot; a boot counter
rolls back an update whose health gate never gets to say yes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import hexdigits

import structlog
from tuf.api.metadata import TargetFile

from applier.command_runner import run_command
from applier.drain import Drain, make_activity
from applier.health_gate import GateProbe, NvmlGate
from applier.installers import activate, installer_for, rollback
from applier.kernel_hold import hold_after_commit
from applier.measure import measure
from applier.settings import enforce_gpu_modes, settings_problems, write_module_parameters
from applier.spool_intake import (
    MetadataUnusable,
    Verified,
    clear_spool,
    open_spool,
    read_request,
    verify_directive,
    verify_spool,
)
from applier.unpack import BadBundle, unpack_bundle
from applier.untrusted_files import AgentFolder
from fleet.driverlog import DriverEvent
from fleet.errors import GpuwardError
from fleet.gpu_rules import Snapshot, switch_problems
from fleet.manifest import PAYLOAD_DIR
from keys import driver_key
from node.channel import UpdateRefused
from node.config import AgentConfig
from node.crash_points import crash_point
from node.journal import TERMINAL, Journal, load_journal, save_journal
from node.slots import SlotContent, Slots
from node.spool import TARGET

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ApplyResult:
    state: str  # the journal's state when the applier stopped
    outcome: str  # nothing, committed, rolled-back, refused, deferred
    reason: str
    active_slot: str | None
    measured: str | None = None  # the driver measurement's failure, if any
    unenforced: tuple[str, ...] = ()  # declared GPU modes that could not be set


def make_gate(config: AgentConfig) -> GateProbe:
    if config.health_backend == "simulated":
        from node.simulated_gpus import SimulatedGate

        return SimulatedGate(config.node_id, Slots(config.slots_dir), config.simulated)
    return NvmlGate()


class Applier:
    def __init__(self, config: AgentConfig, gate: GateProbe, drain: Drain) -> None:
        self.config = config
        self.settings = config.applier
        self.gate = gate
        self.drain = drain
        self.slots = Slots(config.slots_dir)
        self.path = config.journal_file
        self.log = log.bind(node=config.node_id)
        self._measure_error: str | None = None
        self._unenforced: tuple[str, ...] = ()

    def _own_folders(self) -> None:
        """The slots and the journal are root's alone: the agent can read which
        driver runs, never choose it."""
        for folder in (self.config.applier_dir, self.config.slots_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(folder, 0, 0)
            folder.chmod(0o755)

    def run(self) -> ApplyResult:
        """Resume from the journal and drive the update to a state it can stop in."""
        self._own_folders()
        journal = load_journal(self.path)
        # First this boot's key event, before the agent starts (it is ordered
        # after this unit); the active slot too when it is a confirmed one.
        self._measure(bundle=journal.state in TERMINAL | {"staged"})
        if journal.state in TERMINAL | {"staged"}:
            # A new request; a newer one also replaces an update still waiting to drain.
            try:
                spool = open_spool(self.config)
            except UpdateRefused as exc:
                return self._result(self._refuse(exc, None, last=journal), "refused")
            if spool is not None:
                with spool:
                    if spool.holds(TARGET):
                        journal = self._stage(spool, journal)
                        if journal.state == "failed":
                            return self._result(journal, "refused")
        if journal.state in TERMINAL:
            # What a driver reload forgot (a reboot, say) is set again at every start.
            self._unenforced = enforce_gpu_modes(self.config, self.slots.active(), all_modes=False)
            return self._result(journal, "nothing")
        self.log.info("applier_resuming", state=journal.state, slot=journal.slot)
        if journal.state in ("staged", "draining"):
            journal = self._drain(journal)
            if journal.state == "staged":
                return self._result(journal, "deferred")
        if journal.state == "switching":
            write_module_parameters(self.config, journal.slot, "settings:written")
            activate(self.config, journal.slot)
            journal = self._save(journal.to("verifying", boots=1))
        elif journal.state == "verifying":
            journal = self._save(journal.to("verifying", boots=journal.boots + 1))
        if journal.state == "verifying":
            journal = self._verify(journal)
        if journal.state == "rolling-back":
            write_module_parameters(self.config, journal.previous, "settings:restored")
            rollback(self.config, journal.slot, journal.previous)
            self._unenforced += enforce_gpu_modes(self.config, journal.previous, all_modes=True)
            journal = self._save(journal.to("rolled-back"))
            self._measure()  # the restored bundle, if a reboot came mid-update
            self.log.error("update_rolled_back", slot=journal.previous, reason=journal.reason)
            return self._result(journal, "rolled-back")
        return self._result(journal, "committed")

    def _save(self, journal: Journal) -> Journal:
        save_journal(self.path, journal)
        self.log.info("applier_state", state=journal.state, slot=journal.slot)
        return journal

    def _stage(self, spool: AgentFolder, last: Journal) -> Journal:
        """Consume the spooled request: stage it in the inactive slot, or refuse it.

        Whatever happens the request is consumed and no scratch folder is left, so
        the path unit never starts the applier again on the same request.
        """
        crash_point("stage:start")
        work = self.config.applier_dir / "work"
        previous = self.slots.active()
        request: TargetFile | None = None
        scratch: Path | None = None
        try:
            request = read_request(spool)
            verified = verify_spool(self.config, spool, request, work)
            counter = self._directed_counter(verified, work, last)
            running = self.slots.content(previous)
            # Signed is not enough: an agent under an attacker's control could spool
            # an older signed bundle with a known hole. Only newer versions go in,
            # unless the director (whose metadata the agent cannot forge) assigns an
            # older one with a release counter above the last committed: an
            # operator's rollback.
            if running is not None and verified.manifest.version <= running.manifest.version:
                if counter <= last.committed_counter:
                    raise UpdateRefused(
                        f"{verified.target_path} is not newer than the running "
                        f"{running.target_path}; the applier installs an older bundle only "
                        "when the director assigns it with a higher release counter"
                    )
                self.log.warning(
                    "director_rollback",
                    target=verified.target_path,
                    running=running.target_path,
                    release_counter=counter,
                )
            crash_point("stage:verified")
            slot = self.slots.inactive()
            scratch = self.slots.scratch(slot)
            unpack_bundle(verified.bundle, verified.manifest, scratch)
            installer_for(self.config, verified.manifest.payload_kind).install(
                scratch / PAYLOAD_DIR, verified.manifest
            )
        except (UpdateRefused, BadBundle) as exc:
            # A request refused for want of usable metadata is not itself at fault.
            blame = not isinstance(exc, MetadataUnusable)
            journal = self._refuse(exc, request, blame=blame, last=last)
        except (GpuwardError, OSError) as exc:
            # Nor is it when the node cannot stage it (a full disk, say); still
            # consumed, so that the applier is not started on it again and again.
            reason = GpuwardError(f"the request could not be staged: {exc}")
            journal = self._refuse(reason, request, blame=False, last=last)
        else:
            crash_point("stage:unpacked")
            content = SlotContent(verified.target_path, verified.sha256, verified.manifest)
            self.slots.commit_stage(slot, content)
            scratch = None
            journal = self._save(
                Journal(committed_counter=last.committed_counter).to(
                    "staged",
                    target_path=verified.target_path,
                    sha256=verified.sha256,
                    slot=slot,
                    previous=previous,
                    release_counter=counter,
                )
            )
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        clear_spool(spool)
        shutil.rmtree(work, ignore_errors=True)
        crash_point("spool:cleared")
        return journal

    def _directed_counter(self, verified: Verified, work: Path, last: Journal) -> int:
        """The director's release counter for the verified bundle (0 on a node without
        a director); raise ``UpdateRefused`` below the last committed one."""
        if self.config.director is None:
            return 0
        counter = verify_directive(self.config, verified, work).release_counter
        if counter < last.committed_counter:
            raise UpdateRefused(
                f"release counter {counter} of {verified.target_path} is below the last "
                f"committed {last.committed_counter}: refusing a rollback"
            )
        return counter

    def _refuse(
        self,
        exc: GpuwardError,
        request: TargetFile | None,
        *,
        blame: bool = True,
        last: Journal,
    ) -> Journal:
        """Journal a refused request; the agent's next report says why. With
        ``blame``, the refused bundle is named: the agent never hands it over again."""
        self.log.error("spool_refused", reason=str(exc), active_slot=self.slots.active())
        failed = Journal(committed_counter=last.committed_counter).to(
            "failed",
            reason=str(exc),
            target_path=None if request is None else request.path,
            sha256=_sha256_of(request) if blame else None,
        )
        return self._save(failed)

    def _drain(self, journal: Journal) -> Journal:
        journal = self._save(journal.to("draining"))
        if self.settings.pre_drain:
            hook = run_command(self.settings.pre_drain, self.settings.hook_timeout_s)
            if hook.returncode != 0:
                reason = f"pre-drain hook {hook.argv[0]} failed ({hook.returncode})"
                return self._save(journal.to("staged", reason=reason))
        crash_point("drain:hook-done")
        drained = self.drain.wait()
        if not drained.ready:
            # Busy GPUs outside a maintenance window: waiting is the policy working.
            self.log.info("update_deferred", reason=drained.reason, slot=journal.slot)
            return self._save(journal.to("staged", reason=drained.reason))
        self.log.info("drained", reason=drained.reason, slot=journal.slot)
        # What "no new errors since the switch" compares with, kept across a crash.
        baseline = self.gate.look(xid_window_s=None).baseline()
        return self._save(journal.to("switching", baseline=baseline))

    def _verify(self, journal: Journal) -> Journal:
        if journal.boots > self.settings.max_boots:
            reason = f"not confirmed after {self.settings.max_boots} starts"
            return self._save(journal.to("rolling-back", reason=reason))
        content = self.slots.content(journal.slot)
        if content is None:
            raise GpuwardError(
                f"slot {journal.slot} lost its bundle.json mid-update; point "
                f"{self.slots.root / 'active'} at {journal.previous} and reset the journal"
            )
        expected = content.manifest.driver_version
        # Set at every start in "verifying": a reboot mid-update resets some modes. What
        # could not be set shows in the gate's read-back below.
        self._unenforced = enforce_gpu_modes(self.config, journal.slot, all_modes=True)
        crash_point("settings:applied")
        crash_point("gate:before")
        after = self.gate.look(xid_window_s=self.settings.xid_window_s)
        crash_point("gate:looked")
        before = None if journal.baseline is None else Snapshot.from_baseline(journal.baseline)
        reasons = list(switch_problems(before, after, expected))
        if not after.error:  # a driver that is not even there says everything already
            reasons += settings_problems(self.config, content.manifest.settings)
        if not reasons and self.settings.smoke_test:
            reasons = self._smoke_test()
        crash_point("gate:smoke-tested")
        if reasons:
            self.log.error("health_gate_failed", driver=expected, reasons=reasons[:3])
            reason = f"driver {expected} failed health: {'; '.join(reasons[:3])}"
            return self._save(journal.to("rolling-back", reason=reason[:1024]))
        crash_point("gate:passed")
        journal = self._save(
            journal.to(
                "committed",
                reason=f"driver {expected} is healthy",
                committed_counter=max(journal.committed_counter, journal.release_counter),
            )
        )
        self.log.info("update_committed", slot=journal.slot, driver=expected)
        hold_after_commit(self.config)
        self._measure()
        if self.settings.post_commit:
            run_command(self.settings.post_commit, self.settings.hook_timeout_s)
        crash_point("commit:hook-done")
        return journal

    def _smoke_test(self) -> list[str]:
        """The operator's own check of the new driver (a CUDA sample, say)."""
        ran = run_command(self.settings.smoke_test, self.settings.smoke_test_timeout_s)
        if ran.returncode == 0:
            return []
        status = (
            f"timed out after {self.settings.smoke_test_timeout_s}s"
            if ran.returncode is None
            else f"exit status {ran.returncode}"
        )
        last = (ran.stdout + ran.stderr).strip().splitlines()[-1:] or [""]
        return [f"smoke test {ran.argv[0]} failed ({status}){': ' + last[0] if last[0] else ''}"]

    def _measure(self, bundle: bool = True) -> None:
        """Extend the driver PCR with this boot's key event, then the active bundle
        (with ``bundle``), each once per boot and commit.

        A failure never undoes or blocks an update: it is logged and returned in
        the result, and the server shows the node's reports as unattested.
        """
        attest = self.config.attestation
        if attest is None:
            return
        from node.attest.attestor import Attestor  # tpm2-pytss: only on hosts that attest

        content = self.slots.content(self.slots.active()) if bundle else None
        event = (
            None
            if content is None
            else DriverEvent(
                attest.driver_pcr,
                content.target_path,
                content.sha256,
                content.manifest.driver_version,
            )
        )
        try:
            key = driver_key.load_or_create(self.config.measurement_key)
            with Attestor(attest, self.config.state_dir) as attestor:
                measure(attestor, self.config.measurement_log, key, attest.driver_pcr, event)
        except GpuwardError as exc:  # MeasurementError, or the TPM's AttestationError
            self._measure_error = str(exc)
            self.log.error(
                "driver_not_measured",
                reason=str(exc),
                bundle=None if content is None else content.target_path,
            )

    def _result(self, journal: Journal, outcome: str) -> ApplyResult:
        return ApplyResult(
            journal.state,
            outcome,
            journal.reason,
            self.slots.active(),
            self._measure_error,
            self._unenforced,
        )


def _sha256_of(request: TargetFile | None) -> str | None:
    """The bundle digest a request names, if it is one: the request is the agent's word."""
    digest = None if request is None else request.hashes.get("sha256")
    if isinstance(digest, str) and len(digest) == 64 and all(c in hexdigits for c in digest):
        return digest.lower()
    return None


def apply_once(config: AgentConfig) -> ApplyResult:
    drain = Drain(
        make_activity(config),
        max_wait_s=config.applier.drain_max_wait_s,
        poll_s=config.applier.drain_poll_s,
        windows=config.applier.maintenance_windows,
    )
    return Applier(config, make_gate(config), drain).run()
