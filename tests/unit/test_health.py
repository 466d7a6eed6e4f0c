"""We test these aspects: DESIGN.md's "Health and self-healing" as pure transitions.

* probe mode: Active for Sovereign providers, Passive for the others, unless set;
* ``unhealthyThreshold`` failed probes make a provider Unhealthy; a success clears it;
* the five states and their precedence;
* exclusion takes a provider out of ``activeOrder``; restore puts it back in place;
* restarts: once in flight, never more than ``maxRestartsPerHour``;
* recovery probes back off exponentially, capped;
* failures while an ordered restart is under way cost no penalty;
* the bookkeeping survives a round trip through status (operator restarts resume it).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainop.core import healing
from chainop.core import health as rules
from chainop.core.health import ProviderHealth
from chainop.core.models import CooldownSpec, ProbeMode, ProviderState, RecoverySpec
from tests.unit.support import T0, chain, node_pod, provider, rolled_deployment, stamp

RECOVERY = RecoverySpec(initial_seconds=30, max_seconds=300)


@pytest.mark.parametrize(
    ("tier", "chain_mode", "expected"),
    [
        ("Sovereign", None, ProbeMode.ACTIVE),
        ("Private", None, ProbeMode.PASSIVE),
        ("Standard", None, ProbeMode.PASSIVE),
        ("Standard", "Active", ProbeMode.ACTIVE),
        ("Sovereign", "Passive", ProbeMode.PASSIVE),
    ],
)
def test_probe_mode_active_for_sovereign_passive_for_others(tier, chain_mode, expected):
    probe = {} if chain_mode is None else {"mode": chain_mode}
    spec = chain(provider("p", tier), health={"probe": probe})
    assert spec.probe_mode(spec.providers[0]) is expected


def test_unhealthy_after_unhealthy_threshold_failed_probes():
    health = ProviderHealth(name="p")
    states = []
    for step in range(3):
        health = rules.record_probe(
            health, now=T0 + step, ok=False, error="connection refused", unhealthy_threshold=3
        )
        states.append(rules.state_of(health, now=T0 + step))
    assert states == [ProviderState.DEGRADED, ProviderState.DEGRADED, ProviderState.UNHEALTHY]


def test_successful_probe_clears_unhealthy():
    health = ProviderHealth(name="p", unhealthy=True, consecutive_probe_failures=5)
    health = rules.record_probe(health, now=T0, ok=True, latency_ms=3, unhealthy_threshold=3)
    assert rules.state_of(health, now=T0) is ProviderState.HEALTHY
    assert health.last_probe_latency_ms == 3


def test_slow_probe_is_degraded():
    health = rules.record_probe(
        ProviderHealth(name="p"),
        now=T0,
        ok=True,
        latency_ms=900,
        unhealthy_threshold=3,
        slow_ms=500,
    )
    assert rules.state_of(health, now=T0) is ProviderState.DEGRADED


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (ProviderHealth(name="p"), ProviderState.HEALTHY),
        (ProviderHealth(name="p", consecutive_failures=1), ProviderState.DEGRADED),
        (ProviderHealth(name="p", cooldown_until=T0 + 1, benchings=1), ProviderState.COOLING_DOWN),
        (ProviderHealth(name="p", cooldown_until=T0 - 1, benchings=1), ProviderState.HEALTHY),
        (ProviderHealth(name="p", unhealthy=True, cooldown_until=T0 + 9), ProviderState.UNHEALTHY),
        (ProviderHealth(name="p", unhealthy=True, excluded_since=T0), ProviderState.EXCLUDED),
    ],
)
def test_provider_states_and_their_precedence(health, expected):
    assert rules.state_of(health, now=T0) is expected


def test_exclusion_takes_it_out_of_active_order_and_restore_puts_it_back_in_place():
    order = ["a", "b", "c"]
    boards = {n: ProviderHealth(name=n) for n in order}
    boards["b"] = healing.exclude(boards["b"], now=T0, recovery=RECOVERY)
    assert healing.active_order(order, boards.values()) == ["a", "c"]
    assert rules.state_of(boards["b"], now=T0) is ProviderState.EXCLUDED
    boards["b"] = healing.restore(boards["b"], now=T0 + 30, latency_ms=4)
    assert healing.active_order(order, boards.values()) == ["a", "b", "c"]
    assert rules.state_of(boards["b"], now=T0 + 30) is ProviderState.HEALTHY


def test_exclusion_is_idempotent():
    once = healing.exclude(ProviderHealth(name="p"), now=T0, recovery=RECOVERY)
    assert healing.exclude(once, now=T0 + 99, recovery=RECOVERY) == once


def test_recovery_probes_back_off_exponentially_capped():
    health = healing.exclude(ProviderHealth(name="p"), now=T0, recovery=RECOVERY)
    assert health.next_recovery_time == T0 + 30
    assert not healing.recovery_due(health, now=T0 + 29)
    assert healing.recovery_due(health, now=T0 + 30)
    delays = []
    now = T0 + 30
    for _ in range(6):
        health = healing.recovery_failed(health, now=now, recovery=RECOVERY, error="refused")
        delays.append(health.next_recovery_time - now)
        now = health.next_recovery_time
    assert delays == [60, 120, 240, 300, 300, 300]


def test_restart_only_once_in_flight():
    ledger = healing.record_restart(healing.RestartLedger(), now=T0)
    verdict = healing.may_restart(ledger, now=T0 + 10, max_per_hour=3, grace_seconds=300)
    assert not verdict.allowed
    assert verdict.reason == "RestartInFlight"
    settled = healing.restart_settled(ledger)
    assert healing.may_restart(settled, now=T0 + 10, max_per_hour=3, grace_seconds=300).allowed


def test_restart_in_flight_expires_after_grace():
    ledger = healing.record_restart(healing.RestartLedger(), now=T0)
    assert healing.may_restart(ledger, now=T0 + 301, max_per_hour=3, grace_seconds=300).allowed


def _underway(
    deployment: dict[str, object], *pods: dict[str, object], now: float = T0 + 8
) -> str | None:
    return healing.restart_underway(deployment, pods, now=now, since=T0, grace_seconds=5)


def test_a_restart_is_under_way_until_its_new_pod_has_run_for_the_grace():
    rolled = rolled_deployment()
    old = node_pod(
        "flaky-old", {"running": {"startedAt": stamp(T0 - 60)}}, deletionTimestamp=stamp(T0 + 2)
    )
    assert _underway(rolled, old) == "old pod flaky-old is still shutting down"
    creating = node_pod("flaky-new", {"waiting": {"reason": "ContainerCreating"}})
    assert _underway(rolled, creating) == "pod flaky-new: container server is in ContainerCreating"
    init = node_pod("flaky-new", {"waiting": {"reason": "PodInitializing"}})
    assert _underway(rolled, init) == "pod flaky-new: container server is in PodInitializing"
    bare = {"metadata": {"name": "flaky-new"}, "spec": {"nodeName": "chainop-node"}}
    assert _underway(rolled, bare) == "pod flaky-new has no containers yet"
    fresh = node_pod("flaky-new", {"running": {"startedAt": stamp(T0 + 7)}})
    assert _underway(rolled, fresh) == "pod flaky-new: container server started 1s ago"
    # Past the grace from the container's start: a restart that did not help may be retried.
    assert _underway(rolled, fresh, now=T0 + 13) is None
    # A startup probe still running says more than the clock does.
    loading = node_pod("flaky-new", {"running": {"startedAt": stamp(T0 + 3)}})
    loading["status"]["containerStatuses"][0]["started"] = False  # type: ignore[index]
    assert _underway(rolled, loading, now=T0 + 60) == (
        "pod flaky-new: container server has not passed its startup probe yet"
    )


def test_a_restart_is_under_way_while_the_deployment_controller_rolls_it_out():
    behind = rolled_deployment(observedGeneration=1)
    assert _underway(behind) == "the Deployment controller has not yet acted on the restart"
    # Recreate: the new ReplicaSet has no pod until the old ones are gone.
    assert (
        _underway(rolled_deployment(updatedReplicas=0))
        == "no pod of the new template yet (1 wanted)"
    )
    # RollingUpdate of 3: one new pod is in place; whether it ran is the pods' to say.
    three = rolled_deployment(updatedReplicas=1)
    three["spec"]["replicas"] = 3  # type: ignore[index]
    assert _underway(three) is None
    scaled_to_zero = rolled_deployment(updatedReplicas=0)
    scaled_to_zero["spec"]["replicas"] = 0  # type: ignore[index]
    assert _underway(scaled_to_zero) is None


def test_a_stuck_or_unscheduled_rollout_is_not_waited_for():
    creating = node_pod("flaky-new", {"waiting": {"reason": "ContainerCreating"}})
    exceeded = rolled_deployment(
        conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]
    )
    assert _underway(exceeded, creating) is None
    assert _underway(rolled_deployment(), creating, now=T0 + 600) is None
    short = rolled_deployment()
    short["spec"]["progressDeadlineSeconds"] = 30  # type: ignore[index]
    assert _underway(short, creating, now=T0 + 30) is None
    # The API's "no deadline" is an hour here: the restart budget's window.
    endless = rolled_deployment()
    endless["spec"]["progressDeadlineSeconds"] = 2_147_483_647  # type: ignore[index]
    assert _underway(endless, creating, now=T0 + 3599) is not None
    assert _underway(endless, creating, now=T0 + 3600) is None
    # A pod the kubelet rejected (OutOfcpu...) stays Failed, bound, with no containers.
    rejected = {
        "metadata": {"name": "flaky-rejected"},
        "spec": {"nodeName": "chainop-node"},
        "status": {"phase": "Failed", "reason": "OutOfcpu"},
    }
    assert _underway(rolled_deployment(), rejected) is None
    # Still there 30 s past the end of its termination grace: stuck (a dead node).
    stuck = node_pod("flaky-old", {"running": {}}, deletionTimestamp=stamp(T0 - 30))
    assert _underway(rolled_deployment(), stuck) is None
    paused = rolled_deployment(updatedReplicas=0)
    paused["spec"]["paused"] = True  # type: ignore[index]
    assert _underway(paused) is None
    # No node took it (a control plane without nodes has no scheduler): the grace from
    # the patch is all there is.
    pending = {"metadata": {"name": "flaky-new"}, "spec": {}, "status": {"phase": "Pending"}}
    assert _underway(rolled_deployment(), pending) is None
    # A container running since before the restart (RollingUpdate keeps its pod) is not
    # waited for. (Old and new pods are told apart by that start only.)
    old = node_pod("flaky-old", {"running": {"startedAt": stamp(T0 - 600)}})
    assert _underway(rolled_deployment(), old) is None
    # Nothing ordered, or settled: nothing under way.
    assert (
        healing.restart_underway(
            rolled_deployment(), [creating], now=T0, since=None, grace_seconds=5
        )
        is None
    )


def test_past_the_grace_a_restart_stays_in_flight_while_under_way():
    ledger = healing.record_restart(healing.RestartLedger(), now=T0)
    late = {"now": T0 + 15, "max_per_hour": 3, "grace_seconds": 5}
    assert healing.may_restart(ledger, **late).allowed
    waiting = healing.may_restart(ledger, **late, underway="pod x is in ContainerCreating")
    assert waiting.reason == "RestartInFlight"
    # Once the backend answered (settled), pods starting are none of this restart's.
    settled = healing.restart_settled(ledger)
    assert healing.may_restart(settled, **late, underway="pod x is in ContainerCreating").allowed


@given(
    states=st.lists(
        st.sampled_from(
            [
                {"waiting": {"reason": "ContainerCreating"}},
                {"waiting": {"reason": "PodInitializing"}},
                {"waiting": {"reason": "CrashLoopBackOff"}},
                {"running": {"startedAt": "2026-12-02T16:06:46Z"}},
                {"running": {}},
                {"terminated": {"exitCode": 1}},
                {},
            ]
        ),
        max_size=4,
    ),
    deleting=st.booleans(),
    after=st.floats(0, 10_000),
    deadline=st.integers(1, 3600),
)
def test_no_rollout_is_waited_for_past_its_progress_deadline(states, deleting, after, deadline):
    deployment = rolled_deployment(observedGeneration=1, updatedReplicas=0)
    deployment["spec"]["progressDeadlineSeconds"] = deadline  # type: ignore[index]
    extra = {"deletionTimestamp": "2026-12-02T16:06:52Z"} if deleting else {}
    pods = [node_pod(f"p{i}", state, **extra) for i, state in enumerate(states)]
    now = T0 + deadline + after
    assert healing.restart_underway(deployment, pods, now=now, since=T0, grace_seconds=5) is None


def test_never_more_than_max_restarts_per_hour():
    ledger = healing.RestartLedger()
    now = T0
    granted = 0
    for _ in range(10):
        if healing.may_restart(ledger, now=now, max_per_hour=3, grace_seconds=60).allowed:
            ledger = healing.restart_settled(healing.record_restart(ledger, now=now))
            granted += 1
        now += 120
    # 10 tries over 20 minutes: 3 granted.
    assert granted == 3
    verdict = healing.may_restart(ledger, now=now, max_per_hour=3, grace_seconds=60)
    assert verdict.reason == "RestartBudgetExhausted"
    # An hour after the first restart, the budget frees up again.
    assert healing.may_restart(ledger, now=T0 + 3600, max_per_hour=3, grace_seconds=60).allowed


def test_zero_restarts_per_hour_disables_restarts():
    verdict = healing.may_restart(healing.RestartLedger(), now=T0, max_per_hour=0, grace_seconds=1)
    assert verdict.reason == "RestartsDisabled"


def test_failures_during_an_ordered_restart_cost_no_penalty():
    health = ProviderHealth(name="p", consecutive_probe_failures=3, unhealthy=True)
    after = rules.record_probe(
        health, now=T0, ok=False, error="refused", unhealthy_threshold=3, restart_in_flight=True
    )
    assert after.consecutive_probe_failures == 3
    outcome = rules.record_failure(
        ProviderHealth(name="p"),
        now=T0,
        error="refused",
        failure_threshold=1,
        cooldown=CooldownSpec(),
        restart_in_flight=True,
    )
    assert not outcome.benched
    assert outcome.health.consecutive_failures == 0


def test_note_restart_counts_on_the_provider():
    health = healing.note_restart(ProviderHealth(name="p"), now=T0)
    assert (health.restarts, health.last_restart_time) == (1, T0)


def test_state_survives_a_round_trip_through_status():
    health = ProviderHealth(
        name="p",
        consecutive_failures=2,
        benchings=3,
        cooldown_until=T0 + 40,
        consecutive_probe_failures=4,
        unhealthy=True,
        last_error="HTTP 503",
        last_probe_time=T0 - 1,
        last_probe_latency_ms=12,
        excluded_since=T0 - 5,
        restarts=1,
        last_restart_time=T0 - 4,
        recovery_attempts=2,
        next_recovery_time=T0 + 60,
    )
    status = rules.to_status(health, now=T0)
    assert status.state is ProviderState.EXCLUDED
    wire = status.model_dump(by_alias=True, mode="json")
    assert wire["cooldownUntil"].startswith("2027-")
    from chainop.core.models import ProviderStatus

    assert rules.from_status(ProviderStatus.model_validate(wire)) == health


def test_expired_cooldown_is_not_shown_in_status():
    health = ProviderHealth(name="p", benchings=1, cooldown_until=T0 - 1)
    assert rules.to_status(health, now=T0).cooldown_until is None
