"""One agent cycle: refresh, choose, verify, hand over, report.

The agent never touches the slots. It leaves a verified bundle in the spool;
the applier (``applier.state_machine``, the node's one A/B state machine)
installs it, and a cycle reports what the applier's journal says happened,
once. With ``[applier] mode = "applier"`` (the packaged default) the applier is
its own root unit, started by the spool's path unit. With ``"inline"`` (the
demo, hosts without a separate root unit) the same state machine runs
in-process: the ``gpuward`` command hands the cycle an ``InlineApplier`` that
runs it before looking for an update (to resume whatever a crash left) and
again once a bundle is spooled, so the report says how the update ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from agent.channel import ImageChannel
from agent.compat_gate import current_catalog, reported_inventory
from agent.compat_gate import gate as compat_gate
from agent.cycle_state import AgentState, load_state, save_state
from agent.director import DirectorChannel, agree
from agent.identity import NotEnrolled
from agent.logproof import SplitView, reported_checkpoint, require_logged
from agent.reporter import post_report
from agent.textfile import ERROR, CycleEnd, write_textfile
from fleet.attestation import AttestationError
from fleet.errors import GpuwardError
from fleet.firewall import FirewallReport
from fleet.gpu import GpuSample
from fleet.report import HealthReport
from node.channel import Candidate, ChannelUnavailable, UpdateRefused
from node.config import AgentConfig
from node.driver_settings import settings_report
from node.firewall.enforcer import Enforcer
from node.firewall.nft import Nft
from node.firewall.state import UnitResult
from node.gpu_health import HealthProbe, ProbeResult, assess
from node.journal import TERMINAL, Journal, load_journal
from node.kernel_hold_record import load_hold_record
from node.slots import Slots
from node.spool import has_request, write_spool

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    update: str  # one of fleet.report.UPDATE_OUTCOMES
    reason: str


@dataclass(frozen=True)
class CycleResult:
    outcome: Outcome
    report: HealthReport
    report_sent: bool


# Runs the applier's state machine to a state it can stop in, in this process.
InlineApplier = Callable[[], object]

CAP_NET_ADMIN = 12
# The applier journal's final states, as the report names them.
APPLIER_OUTCOMES = {"committed": "committed", "rolled-back": "rolled-back", "failed": "refused"}


def _journal_key(path: Path, journal: Journal) -> str:
    """Tells one outcome of the applier from the next, even one that ends the same way:
    every transition rewrites the journal."""
    try:
        written = path.stat().st_mtime_ns
    except FileNotFoundError:
        written = 0
    return f"{journal.state}@{written}"


def can_admin_network() -> bool:
    """Whether this process may change nftables (CAP_NET_ADMIN in its effective set)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


class Cycle:
    def __init__(
        self,
        config: AgentConfig,
        probe: HealthProbe,
        firewall: Enforcer | UnitResult | None = None,
        inline_applier: InlineApplier | None = None,
    ) -> None:
        if config.applier.mode == "inline" and inline_applier is None:
            raise GpuwardError(
                'this agent\'s config says [applier] mode = "inline", which runs the applier '
                "in the agent's process: start it with `gpuward agent run`, or set "
                'mode = "applier" and enable gpuward-apply.path'
            )
        self.config = config
        self.inline_applier = inline_applier
        self.probe = probe
        self.slots = Slots(config.slots_dir)
        self.log = log.bind(node=config.node_id)
        # Kept across cycles: it remembers what it applied and when it resolved names.
        if firewall is None and config.firewall is not None:
            if can_admin_network():
                firewall = Enforcer(config.firewall, Nft())
            else:
                # The packaged agent runs without CAP_NET_ADMIN: gpuward-firewall.service
                # holds that privilege, keeps the table enforced on its timer, and
                # leaves its result for the report.
                self.log.info("firewall_left_to_its_unit", reason="no CAP_NET_ADMIN")
                firewall = UnitResult(config.firewall)
        self.firewall = firewall
        # What the last report covered: its XIDs end here, its samples are the
        # baseline of the next report's trends (by GPU UUID).
        self._reported_until: float | None = None
        self._last_samples: dict[str, GpuSample] = {}

    def run(self) -> CycleResult:
        """One cycle; the metrics textfile (if configured) says how it ended."""
        try:
            result = self._run()
        except GpuwardError:
            write_textfile(self.config, CycleEnd(ERROR, None, report_sent=False))
            raise
        write_textfile(
            self.config, CycleEnd(result.outcome.update, result.report, result.report_sent)
        )
        return result

    def _run(self) -> CycleResult:
        state = load_state(self.config.state_file)
        if self.inline_applier is not None:
            self.inline_applier()  # resumes whatever a crash left mid-update
        state, outcome = self._handed_off(state)
        if self.inline_applier is not None and has_request(self.config.spool_dir):
            self.inline_applier()
            state, outcome = self._applier_news(state) or (state, outcome)
        save_state(self.config.state_file, state)
        firewall = self.firewall.cycle() if self.firewall else None
        report = self._report(outcome, self.probe.probe(), firewall, reported_checkpoint(state))
        sent = True
        try:
            post_report(self.config, report)
        except (ChannelUnavailable, NotEnrolled, AttestationError) as exc:
            sent = False
            self.log.warning("report_not_sent", reason=str(exc))
        return CycleResult(outcome, report, sent)

    def _update(self, state: AgentState) -> tuple[AgentState, Outcome]:
        try:
            channel = ImageChannel(self.config)
            channel.refresh()
            if self.config.director is None:
                candidate, why_not = self._choose(channel.candidates(self.config.branch), state)
                counter = state.release_counter
            else:
                candidate, why_not, counter = self._directed(channel, state)
            if candidate is None:
                return state, Outcome("up-to-date", why_not)
            catalog = current_catalog(self.config, channel)
            verdict = compat_gate(self.config, self.probe.probe(), candidate.manifest, catalog)
            if not verdict.allowed:
                reasons = "; ".join(r.message for r in verdict.reasons)
                self.log.error(
                    "update_incompatible",
                    target=candidate.target_path,
                    codes=sorted(verdict.codes),
                    reasons=reasons,
                )
                return state, Outcome(
                    "refused", f"{candidate.target_path} is incompatible: {reasons}"
                )
            if self.config.require_provenance:
                assert self.config.build_key is not None  # the config demands one
                channel.check_provenance(candidate, self.config.build_key)
            if self.config.log_key is not None:
                state = require_logged(self.config, candidate, state)
            bundle = channel.fetch(candidate.info)
            self.log.info("bundle_verified", target=candidate.target_path, sha256=candidate.sha256)
            write_spool(self.config.spool_dir, candidate.info, bundle)
            self.log.info("bundle_handed_off", target=candidate.target_path)
            handoff = replace(state.handoff, sha256=candidate.sha256, release_counter=counter)
            return replace(state, handoff=handoff), Outcome(
                "staged", f"{candidate.target_path} is verified and spooled for the applier"
            )
        except SplitView as exc:
            return exc.state, Outcome("refused", str(exc))
        except UpdateRefused as exc:
            self.log.error("update_refused", reason=str(exc), active_slot=self.slots.active())
            return state, Outcome("refused", str(exc))
        except (ChannelUnavailable, NotEnrolled) as exc:  # director metadata needs the key
            self.log.warning("update_unavailable", reason=str(exc))
            return state, Outcome("failed", str(exc))

    def _handed_off(self, state: AgentState) -> tuple[AgentState, Outcome]:
        """Report what the applier did, once; else look for an update.

        Nothing new is spooled while the applier has one in hand, so each
        outcome it reaches is reported before the next update starts.
        """
        news = self._applier_news(state)
        if news is not None:
            return news
        journal = load_journal(self.config.journal_file)
        if has_request(self.config.spool_dir):
            return state, Outcome("staged", "spooled; waiting for the applier to take it")
        if journal.state not in TERMINAL:
            why = f" ({journal.reason})" if journal.reason else ""
            return state, Outcome("staged", f"applier: {journal.state} {journal.target_path}{why}")
        return self._update(state)

    def _applier_news(self, state: AgentState) -> tuple[AgentState, Outcome] | None:
        """The applier's last outcome, if not reported yet, and what it teaches."""
        journal = load_journal(self.config.journal_file)
        news = _journal_key(self.config.journal_file, journal)
        if journal.state not in APPLIER_OUTCOMES or news == state.handoff.reported:
            return None
        outcome = Outcome(APPLIER_OUTCOMES[journal.state], f"applier: {journal.reason}")
        state = replace(state, handoff=replace(state.handoff, reported=news))
        if journal.state in ("rolled-back", "failed") and journal.sha256:
            # Failed health, or refused: either way never handed over again.
            state = state.with_rejected(journal.sha256)
        if journal.state == "committed" and journal.sha256 == state.handoff.sha256:
            counter = max(state.release_counter, state.handoff.release_counter)
            state = replace(state, release_counter=counter)
        self.log.info("applier_outcome", state=journal.state, reason=journal.reason)
        return state, outcome

    def _directed(
        self, image: ImageChannel, state: AgentState
    ) -> tuple[Candidate | None, str, int]:
        """The bundle the director names, once it agrees with the image repository."""
        director = DirectorChannel(self.config)
        director.refresh()
        directive = director.directive()
        if directive is None:
            return None, "the director assigns no bundle to this node", state.release_counter
        running = self.slots.content(self.slots.active())
        if running is not None and running.sha256 == directive.info.hashes.get("sha256"):
            return None, f"running the assigned {directive.target_path}", state.release_counter
        candidate = agree(
            directive,
            image.candidate(directive.target_path),
            node_id=self.config.node_id,
            hardware_ids=frozenset(g.name for g in self.probe.probe().gpus),
            last_release_counter=state.release_counter,
        )
        if candidate.sha256 in state.rejected:
            reason = f"the assigned {directive.target_path} failed or was refused here before"
            return None, reason, state.release_counter
        return candidate, "", directive.release_counter

    def _choose(
        self, candidates: list[Candidate], state: AgentState
    ) -> tuple[Candidate | None, str]:
        """The newest bundle newer than what runs, skipping ones that failed here."""
        running = self.slots.content(self.slots.active())
        usable = [c for c in candidates if c.sha256 not in state.rejected]
        skipped = len(candidates) - len(usable)
        why_not = "no newer bundle for this node" + (
            f" ({skipped} skipped: failed or refused here before)" if skipped else ""
        )
        if not usable:
            return None, why_not
        newest = max(usable, key=lambda c: c.manifest.version)
        if running is not None and newest.manifest.version <= running.manifest.version:
            return None, why_not
        return newest, ""

    def _report(
        self,
        outcome: Outcome,
        seen: ProbeResult,
        firewall: FirewallReport | None,
        log_checkpoint: str | None,
    ) -> HealthReport:
        active = self.slots.active()
        content = self.slots.content(active)
        settings = settings_report(self.config)
        health = assess(
            seen,
            xids_since=self._reported_until,
            previous=self._last_samples,
            drift=() if settings is None else settings.drift,
        )
        self._reported_until = max((x.at for x in seen.xids), default=self._reported_until)
        self._last_samples = {s.uuid: s for s in seen.samples if s.uuid}
        return HealthReport(
            node_id=self.config.node_id,
            sent_at=int(time.time()),
            active_slot=active,
            driver_version=seen.driver_version,
            bundle=content.target_path if content else None,
            update=outcome.update,
            reason=outcome.reason[:1024],
            gpus=seen.gpus,
            firewall=firewall,
            kernel_hold=load_hold_record(self.config),
            health=health,
            inventory=reported_inventory(self.config, seen),
            topology=self.config.topology,
            settings=settings,
            log_checkpoint=log_checkpoint,
        )
