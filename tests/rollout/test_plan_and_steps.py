"""fleet.rollout: wave planning and the state machine, table-driven and by property."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import InvalidDocument
from fleet.rollout import (
    Observation,
    Phase,
    Policy,
    Progress,
    Rollout,
    RolloutError,
    assignments,
    command,
    halt,
    new_rollout,
    parse_waves,
    plan_waves,
    step,
)

NEW, OLD = "drivers/R580/new.bundle", "drivers/R580/old.bundle"


@pytest.mark.parametrize(
    ("waves", "pool", "sizes"),
    [
        ("1,5%,25%,100%", 1, [1]),
        ("1,5%,25%,100%", 4, [1, 3]),  # 5% and 25% of 4 add no node
        ("1,5%,25%,100%", 20, [1, 4, 15]),
        ("1,5%,25%,100%", 100, [1, 4, 20, 75]),
        ("1,5%,25%,100%", 1000, [1, 49, 200, 750]),
        ("100%", 7, [7]),
        ("3,100%", 2, [2]),
        ("10%,10%,100%", 10, [1, 9]),
    ],
)
def test_wave_sizes(waves: str, pool: int, sizes: list[int]) -> None:
    planned = plan_waves([f"n{i}" for i in range(pool)], parse_waves(waves), "seed")
    assert [len(w) for w in planned] == sizes


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1,50%", "must be 100%"),
        ("0,100%", "at least one node"),
        ("1,101%", "between 1% and 100%"),
        ("a,100%", "not a count"),
        (",".join(["1"] * 17) + ",100%", "at most"),
    ],
)
def test_bad_wave_specs(text: str, needle: str) -> None:
    with pytest.raises(InvalidDocument, match=needle):
        parse_waves(text)


def _rollout(nodes: int, policy: Policy) -> Rollout:
    return new_rollout(
        "r1", "prod", NEW, "580.82.07", policy, {f"n{i}": OLD for i in range(nodes)}, 0
    )


def _good(at: int) -> Observation:
    return Observation(at, NEW, "580.82.07", "committed", True)


def _rolled_back(at: int) -> Observation:
    return Observation(at, OLD, "580.65.06", "rolled-back", True)


def test_waves_advance_after_soak_until_completed() -> None:
    r = _rollout(20, Policy(parse_waves("1,5%,25%,100%"), max_unavailable=20, soak_s=100))
    r = step(r, {}, 0).rollout
    assert [n.node_id for n in r.nodes if n.progress is Progress.ASSIGNED] == [r.nodes[0].node_id]
    canary = r.nodes[0].node_id

    r = step(r, {canary: _good(5)}, 10).rollout
    assert (r.wave, r.soak_started) == (0, 10)
    assert step(r, {canary: _good(5)}, 109).rollout.wave == 0  # still soaking
    r = step(r, {canary: _good(5)}, 110).rollout
    assert r.wave == 1
    wave1 = [n.node_id for n in r.wave_nodes(1)]
    assert all(n.progress is Progress.ASSIGNED and n.assigned_at == 110 for n in r.wave_nodes(1))

    seen = {canary: _good(5), **{n: _good(120) for n in wave1}}
    r = step(step(r, seen, 120).rollout, seen, 220).rollout
    assert r.wave == 2
    seen |= {n.node_id: _good(230) for n in r.wave_nodes(2)}
    done = step(step(r, seen, 230).rollout, seen, 330)
    assert done.rollout.phase is Phase.COMPLETED
    assert "completed" in done.events
    assert set(assignments(done.rollout).values()) == {NEW}


def test_max_unavailable_bounds_nodes_in_flight() -> None:
    r = _rollout(10, Policy(parse_waves("100%"), max_unavailable=3))
    r = step(r, {}, 0).rollout
    in_flight = [n.node_id for n in r.nodes if n.progress is Progress.ASSIGNED]
    assert len(in_flight) == 3
    r = step(r, {in_flight[0]: _good(1)}, 1).rollout
    assert sum(n.progress is Progress.ASSIGNED for n in r.nodes) == 3
    assert sum(n.progress is Progress.DONE for n in r.nodes) == 1


def test_a_report_older_than_the_assignment_is_no_verdict() -> None:
    r = step(_rollout(3, Policy(parse_waves("1,100%"))), {}, 100).rollout
    canary = r.nodes[0].node_id
    assert step(r, {canary: _rolled_back(99)}, 101).rollout.phase is Phase.RUNNING
    assert step(r, {canary: _rolled_back(100)}, 101).rollout.phase is Phase.HALTED


@pytest.mark.parametrize(
    ("seen", "phase"),
    [
        (Observation(1, OLD, "580.65.06", "rolled-back", True), Phase.HALTED),
        (Observation(1, OLD, "580.65.06", "refused", True), Phase.HALTED),
        (Observation(1, NEW, "580.82.07", "committed", False), Phase.HALTED),
        (Observation(1, NEW, "580.65.06", "committed", True), Phase.RUNNING),  # wrong driver
        (Observation(1, OLD, "580.65.06", "failed", True), Phase.RUNNING),  # transient
        (Observation(1, OLD, "580.65.06", "up-to-date", True), Phase.RUNNING),
    ],
)
def test_verdicts_on_the_canary(seen: Observation, phase: Phase) -> None:
    r = step(_rollout(5, Policy(parse_waves("1,100%"))), {}, 0).rollout
    after = step(r, {r.nodes[0].node_id: seen}, 1).rollout
    assert after.phase is phase
    assert sum(n.progress is not Progress.PENDING for n in after.nodes) == 1


def test_failures_up_to_the_threshold_do_not_halt() -> None:
    r = step(_rollout(4, Policy(parse_waves("100%"), max_unavailable=4, max_failures=1)), {}, 0)
    ids = [n.node_id for n in r.rollout.nodes]
    one = step(r.rollout, {ids[0]: _rolled_back(1)}, 1).rollout
    assert one.phase is Phase.RUNNING
    two = step(one, {ids[0]: _rolled_back(1), ids[1]: _rolled_back(1)}, 2).rollout
    assert two.phase is Phase.HALTED and "2 node(s) failed" in two.reason


@pytest.mark.parametrize(
    ("phase", "name", "result"),
    [
        (Phase.RUNNING, "pause", Phase.PAUSED),
        (Phase.PAUSED, "resume", Phase.RUNNING),
        (Phase.HALTED, "abort", Phase.ABORTED),
        (Phase.HALTED, "rollback", Phase.ROLLED_BACK),
        (Phase.COMPLETED, "rollback", Phase.ROLLED_BACK),
        (Phase.RUNNING, "resume", None),
        (Phase.HALTED, "resume", None),
        (Phase.COMPLETED, "abort", None),
        (Phase.ROLLED_BACK, "rollback", None),
        (Phase.RUNNING, "explode", None),
    ],
)
def test_operator_commands(phase: Phase, name: str, result: Phase | None) -> None:
    r = replace(_rollout(2, Policy(parse_waves("100%"))), phase=phase)
    if result is None:
        with pytest.raises(RolloutError):
            command(r, name, "alice")
    else:
        assert command(r, name, "alice").rollout.phase is result


def test_halt_stops_a_running_rollout_with_its_reason_and_nothing_else() -> None:
    r = step(_rollout(3, Policy(parse_waves("1,100%"))), {}, 0).rollout
    halted = halt(r, "attributed to driver 580.82.07: 5 of the 5 nodes")
    assert halted.rollout.phase is Phase.HALTED
    assert halted.rollout.reason == "attributed to driver 580.82.07: 5 of the 5 nodes"
    assert halted.events == ("halted: attributed to driver 580.82.07: 5 of the 5 nodes",)
    assert [n.details["reason"] for n in halted.notices] == [halted.rollout.reason]
    assert assignments(halted.rollout) == assignments(r)  # nothing new assigned
    paused = command(r, "pause", "alice").rollout
    assert halt(paused, "anything").rollout == paused  # only a running rollout halts


def test_paused_rollouts_do_not_move_and_rollback_restores_previous() -> None:
    r = step(_rollout(3, Policy(parse_waves("1,100%"))), {}, 0).rollout
    paused = command(r, "pause", "alice").rollout
    canary = r.nodes[0].node_id
    assert step(paused, {canary: _good(1)}, 1000).rollout == paused
    back = command(paused, "rollback", "alice").rollout
    assert assignments(back) == {canary: OLD}


def test_serialisation_round_trips() -> None:
    r = step(_rollout(30, Policy(parse_waves("1,5%,25%,100%"), 3, 60, 2)), {}, 0).rollout
    assert Rollout.from_dict(r.to_dict()) == r


_OUTCOMES = st.sampled_from(["committed", "rolled-back", "refused", "failed", "up-to-date"])


@st.composite
def _observations(draw: st.DrawFn, nodes: list[str], now: int) -> dict[str, Observation]:
    seen = {}
    for node in nodes:
        if draw(st.booleans()):
            seen[node] = Observation(
                now,
                draw(st.sampled_from([NEW, OLD, None])),
                draw(st.sampled_from(["580.82.07", "580.65.06"])),
                draw(_OUTCOMES),
                draw(st.booleans()),
            )
    return seen


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 25),
    max_unavailable=st.integers(1, 8),
    max_failures=st.integers(0, 3),
    soak=st.integers(0, 50),
    deadline=st.integers(10, 300),
    data=st.data(),
)
def test_invariants_hold_under_any_reports(
    size: int,
    max_unavailable: int,
    max_failures: int,
    soak: int,
    deadline: int,
    data: st.DataObject,
) -> None:
    policy = Policy(parse_waves("1,5%,25%,100%"), max_unavailable, soak, max_failures, deadline)
    r = _rollout(size, policy)
    ids = [n.node_id for n in r.nodes]
    assert sorted(ids) == sorted(f"n{i}" for i in range(size))  # waves partition the pool
    assert len(r.wave_nodes(0)) == 1  # one canary
    for now in range(0, 200, 10):
        before = r
        r = step(r, data.draw(_observations(ids, now)), now).rollout
        touched = [n for n in r.nodes if n.progress is not Progress.PENDING]
        # Nothing beyond the current wave is ever assigned.
        assert all(n.wave <= r.wave for n in touched)
        # Within the current wave, at most max_unavailable nodes await a verdict.
        current = [n for n in r.nodes if n.wave == r.wave]
        assert sum(n.progress is Progress.ASSIGNED for n in current) <= max_unavailable
        # A node once touched stays touched; a halted rollout assigns nothing new.
        assert {n.node_id for n in before.nodes if n.progress is not Progress.PENDING} <= {
            n.node_id for n in touched
        }
        if before.phase is not Phase.RUNNING:
            assert r == before
        if r.phase is Phase.HALTED:
            failed = [n for n in r.nodes if n.wave == r.wave and n.progress is Progress.FAILED]
            assert len(failed) > max_failures
        # No node waits for its verdict past its deadline.
        if r.phase is Phase.RUNNING:
            assert all(
                n.assigned_at is not None and now < n.assigned_at + deadline
                for n in r.nodes
                if n.progress is Progress.ASSIGNED
            )
        # A wave is only left when every node in it is done (failures within the threshold).
        for wave in range(min(r.wave, r.wave_count)):
            assert all(n.progress in (Progress.DONE, Progress.FAILED) for n in r.wave_nodes(wave))


def test_a_silent_node_fails_at_its_progress_deadline_and_halts_the_rollout() -> None:
    r = step(_rollout(3, Policy(parse_waves("1,100%"), progress_deadline_s=600)), {}, 1000).rollout
    canary = r.nodes[0].node_id
    waiting = step(r, {}, 1599)
    assert waiting.rollout.phase is Phase.RUNNING and waiting.notices == ()
    assert waiting.rollout.nodes[0].progress is Progress.ASSIGNED

    halted = step(waiting.rollout, {}, 1600)
    assert halted.rollout.phase is Phase.HALTED
    node = halted.rollout.nodes[0]
    assert (node.progress, node.missed_deadline_at) == (Progress.FAILED, 1600)
    assert f"missed the progress deadline: {canary}" in halted.rollout.reason
    # The audit event names the node and when its deadline passed.
    assert (
        f"{canary} failed: missed its progress deadline at 1970-01-01T00:26:40+00:00 "
        "(600s after its assignment); last: no report since its assignment" in halted.events
    )
    missed, stopped = halted.notices
    assert (missed.type, missed.subject) == ("rollout.deadline_missed", "rollout/r1")
    assert missed.details["node"] == canary and missed.details["deadline_at"] == 1600
    assert (stopped.type, stopped.details["deadline_missed"]) == ("rollout.halted", [canary])
    assert assignments(halted.rollout) == {canary: NEW}  # nothing more assigned


def test_a_node_short_of_the_target_misses_the_deadline_with_what_it_said() -> None:
    policy = Policy(parse_waves("100%"), max_unavailable=1, max_failures=1, progress_deadline_s=60)
    r = step(_rollout(2, policy), {}, 0).rollout
    first = r.nodes[0].node_id
    staged = Observation(10, OLD, "580.65.06", "staged", True)
    moved = step(r, {first: staged}, 60)
    # Within max_failures: the rollout goes on with the next node.
    assert moved.rollout.phase is Phase.RUNNING
    assert [n.progress for n in moved.rollout.nodes] == [Progress.FAILED, Progress.ASSIGNED]
    assert "last: reported staged, not on the target yet" in moved.rollout.nodes[0].detail
    assert [n.type for n in moved.notices] == ["rollout.deadline_missed"]
    # A node with its verdict before the deadline is not touched by it.
    second = moved.rollout.nodes[1].node_id
    done = step(moved.rollout, {second: _good(61)}, 10_000).rollout
    assert done.phase is Phase.COMPLETED
    assert done.nodes[1].missed_deadline_at is None


def test_rollouts_stored_before_the_deadline_read_with_the_default() -> None:
    r = step(_rollout(2, Policy(parse_waves("100%"))), {}, 0).rollout
    doc = r.to_dict()
    del doc["policy"]["progress_deadline_s"]
    for node in doc["nodes"]:
        assert "missed_deadline_at" not in node or node["missed_deadline_at"] is None
        node.pop("missed_deadline_at", None)
    old = Rollout.from_dict(doc)
    assert old.policy.progress_deadline_s == 3600
    assert old == r
