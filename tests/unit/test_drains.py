"""We test these aspects: drains by hand (``spec.drains``), as pure functions of spec and now.

* in effect while ``until`` is absent or ahead, over at ``until`` exactly (the expiry
  boundary, with an injected clock); an unknown provider's entry is ignored and reported;
  several entries for one provider: the one ending last is shown; no clock: all count;
* routing: a drained provider is never chosen — the terminus included (a drain is a
  human's explicit intent) — and the reason says who was skipped and which provider is
  the terminus instead; rule 4 naming a drained provider; everything drained; a property:
  the decision with drains is the decision without them, minus the drained providers;
* status: state and reason ``Drained`` with the drain, out of ``activeOrder``, the HEALTHY
  summary ``1/2 (1 drained)``, the Ready message, the ``DrainsValid`` condition; back to
  its health state when the drain ends;
* Events: ``Drained``/``Undrained`` (by hand, Expired), once per transition, also when the
  previous side comes from a resumed status (operator restart), and only once the status
  showing the transition is written (a refused write announces nothing);
* probes of a drained provider record health without making it Unhealthy.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from chainop.core import drains, healing, routing, status
from chainop.core.board import HealthBoard
from chainop.core.health import ProviderHealth
from chainop.core.models import (
    ProviderChainSpec,
    ProviderChainStatus,
    ProviderDrain,
    ProviderState,
    RecoverySpec,
)
from chainop.kube.client import KubeError, ObjectRef
from chainop.metrics import Metrics
from chainop.operator import drains as drain_ops
from chainop.operator.config import OperatorConfig
from chainop.operator.runtime import ChainRuntime, Runtime
from tests.unit.support import T0, Clock, chain, provider, task

NOW = datetime.fromtimestamp(T0, tz=UTC)


def at(seconds: float) -> str:
    """A time ``seconds`` after T0, as a user writes it in YAML."""
    return (NOW + timedelta(seconds=seconds)).isoformat()


def drained_chain(*entries: dict[str, object], **extra: object) -> ProviderChainSpec:
    return chain(
        provider("local-vllm", "Sovereign"),
        provider("private-eu", "Private"),
        provider("openai", "Standard"),
        drains=list(entries),
        **extra,
    )


AUTO = {"allowDelegation": True}


# --------------------------------------------------------------------------- in effect


def test_an_open_ended_drain_is_in_effect_until_removed():
    spec = drained_chain({"provider": "openai", "by": "alice", "reason": "bill"})
    found = drains.in_effect(spec, now=NOW + timedelta(days=365))
    assert list(found) == ["openai"]
    assert found["openai"].by == "alice"


def test_expiry_boundary_is_until_itself_with_an_injected_clock():
    spec = drained_chain({"provider": "openai", "until": at(10)})
    clock = Clock()
    clock.advance(9.999)
    assert "openai" in drains.in_effect(spec, now=datetime.fromtimestamp(clock(), tz=UTC))
    clock.advance(0.001)
    assert drains.in_effect(spec, now=datetime.fromtimestamp(clock(), tz=UTC)) == {}
    assert drains.next_end(spec, now=NOW) == NOW + timedelta(seconds=10)
    assert drains.next_end(spec, now=NOW + timedelta(seconds=10)) is None


def test_an_unknown_provider_is_ignored_and_named_once():
    spec = drained_chain({"provider": "opneai"}, {"provider": "opneai"}, {"provider": "gone"})
    assert drains.in_effect(spec, now=NOW) == {}
    assert drains.ignored(spec) == ["opneai", "gone"]


def test_several_entries_for_one_provider_show_the_one_ending_last():
    spec = drained_chain(
        {"provider": "openai", "until": at(-5), "by": "old"},
        {"provider": "openai", "until": at(60), "by": "bob"},
        {"provider": "openai", "until": at(30), "by": "carol"},
    )
    assert drains.in_effect(spec, now=NOW)["openai"].by == "bob"
    open_ended = drained_chain(
        {"provider": "openai", "until": at(60)}, {"provider": "openai", "by": "dave"}
    )
    assert drains.in_effect(open_ended, now=NOW)["openai"].by == "dave"


def test_without_a_clock_every_entry_counts():
    spec = drained_chain({"provider": "openai", "until": at(-3600)})
    assert list(drains.in_effect(spec, now=None)) == ["openai"]


# --------------------------------------------------------------------------- routing


def test_a_drained_provider_is_skipped_and_named_in_the_reason():
    spec = drained_chain({"provider": "local-vllm", "by": "alice", "reason": "upgrade"})
    decision = routing.decide(spec, task(AUTO), now=NOW)
    assert decision.providers == ("private-eu", "openai")
    assert "drained by hand, skipped: local-vllm (by alice: upgrade until undrained)" in (
        decision.reason
    )
    assert "terminus" not in decision.reason


def test_a_drained_terminus_is_no_last_resort_and_the_reason_says_why():
    spec = drained_chain({"provider": "openai", "by": "alice"})
    decision = routing.decide(spec, task(AUTO), now=NOW)
    assert decision.providers == ("local-vllm", "private-eu")
    assert decision.reason.startswith("preferredProvider=auto: active order")
    assert "human's explicit intent" in decision.reason
    assert "private-eu, the last one in service, is the terminus" in decision.reason


def test_everything_eligible_drained_leaves_nothing_and_says_so():
    spec = drained_chain({"provider": "local-vllm"})
    decision = routing.decide(spec, task({"requiresLocal": True}), now=NOW)
    assert decision.providers == ()
    assert "no Sovereign provider is available" in decision.reason
    assert "every eligible provider is drained" in decision.reason
    assert "not even for the terminus" in decision.reason


def test_a_decision_from_status_active_order_still_names_the_drained():
    spec = drained_chain({"provider": "openai", "by": "alice"})
    from_status = ["local-vllm", "private-eu"]  # status.activeOrder leaves Drained out
    decision = routing.decide(spec, task(AUTO), active_order=from_status, now=NOW)
    assert decision.providers == ("local-vllm", "private-eu")
    assert "skipped: openai (by alice" in decision.reason
    assert "private-eu, the last one in service, is the terminus" in decision.reason


def test_rule4_naming_a_drained_provider_uses_the_active_order():
    spec = drained_chain({"provider": "openai"})
    decision = routing.decide(spec, task({**AUTO, "preferredProvider": "openai"}), now=NOW)
    assert decision.rule == 4
    assert decision.providers == ("local-vllm", "private-eu")
    assert decision.reason.startswith("preferredProvider=openai is drained; using the active")


def test_an_expired_drain_no_longer_routes_around_the_provider():
    spec = drained_chain({"provider": "local-vllm", "until": at(5)})
    before = routing.decide(spec, task(AUTO), now=NOW + timedelta(seconds=4))
    after = routing.decide(spec, task(AUTO), now=NOW + timedelta(seconds=5))
    assert "local-vllm" not in before.providers
    assert after.providers == ("local-vllm", "private-eu", "openai")
    assert after.reason == "preferredProvider=auto: active order"


TIERS = ("Sovereign", "Private", "Standard")


@settings(max_examples=400, deadline=None)
@given(
    tiers=st.lists(st.sampled_from(TIERS), min_size=1, max_size=6),
    drained=st.sets(st.integers(0, 5)),
    excluded=st.sets(st.integers(0, 5)),
    preferred=st.sampled_from(["auto", "", "local", "p0", "p2", "p5", "typo"]),
    allow=st.one_of(st.none(), st.booleans()),
    requires_local=st.booleans(),
    offset=st.integers(-20, 20),
)
def test_a_drained_provider_is_never_chosen_not_even_as_the_terminus(
    tiers, drained, excluded, preferred, allow, requires_local, offset
):
    names = [f"p{i}" for i in range(len(tiers))]
    entries = [{"provider": f"p{i}", "until": at(offset)} for i in sorted(drained)]
    spec = chain(*[provider(n, t) for n, t in zip(names, tiers, strict=True)], drains=entries)
    plain = chain(*[provider(n, t) for n, t in zip(names, tiers, strict=True)])
    routing_spec: dict[str, object] = {
        "preferredProvider": preferred,
        "requiresLocal": requires_local,
    }
    if allow is not None:
        routing_spec["allowDelegation"] = allow
    order = [n for i, n in enumerate(names) if i not in excluded]
    in_effect = set(drains.in_effect(spec, now=NOW))
    assert in_effect == ({f"p{i}" for i in drained if i < len(names)} if offset > 0 else set())
    with_drains = routing.decide(spec, task(routing_spec), active_order=order, now=NOW)
    without = routing.decide(plain, task(routing_spec), active_order=order, now=NOW)
    assert not in_effect & set(with_drains.providers)
    assert with_drains.providers == tuple(n for n in without.providers if n not in in_effect)
    assert with_drains.local_only == without.local_only
    if in_effect & set(without.providers):
        assert "drained by hand, skipped" in with_drains.reason


# --------------------------------------------------------------------------- status


def build(spec: ProviderChainSpec, *, seconds: float = 0, previous=()) -> ProviderChainStatus:
    return status.chain_status(
        spec,
        [ProviderHealth(name=p.name) for p in spec.providers],
        now=T0 + seconds,
        generation=3,
        previous_conditions=list(previous),
    )


def test_status_shows_drained_with_who_why_until_and_leaves_it_out_of_the_order():
    spec = drained_chain({"provider": "local-vllm", "by": "alice", "until": at(60)})
    built = build(spec)
    shown = {p.name: p for p in built.providers}
    assert shown["local-vllm"].state is ProviderState.DRAINED
    assert shown["local-vllm"].reason == "Drained"
    assert shown["local-vllm"].drain is not None
    assert shown["local-vllm"].drain.by == "alice"
    assert shown["openai"].drain is None
    assert built.active_order == ["private-eu", "openai"]
    assert built.active == "private-eu"
    assert built.healthy == 2
    assert built.total == 3
    assert built.healthy_summary == "2/3 (1 drained)"
    ready = built.conditions[0]
    assert ready.status == "True"
    assert ready.message.endswith("; drained: local-vllm")
    valid = [c for c in built.conditions if c.type == "DrainsValid"]
    assert valid[0].status == "True"


def test_status_after_the_drain_ends_is_the_health_state_again():
    spec = drained_chain({"provider": "local-vllm", "until": at(60)})
    built = build(spec, seconds=60)
    assert {p.state for p in built.providers} == {ProviderState.HEALTHY}
    assert built.healthy_summary == "3/3"
    assert built.active_order == ["local-vllm", "private-eu", "openai"]


def test_all_drained_is_not_ready_and_says_drained():
    spec = chain(provider("only"), drains=[{"provider": "only"}])
    built = build(spec)
    ready = built.conditions[0]
    assert (ready.status, ready.reason) == ("False", "NoHealthyProvider")
    assert "Drained" in ready.message
    assert built.healthy_summary == "0/1 (1 drained)"


def test_an_unknown_provider_drain_is_a_false_condition_not_an_invalid_chain():
    spec = drained_chain({"provider": "opneai"})
    built = build(spec)
    ready = next(c for c in built.conditions if c.type == "Ready")
    valid = next(c for c in built.conditions if c.type == "DrainsValid")
    assert ready.status == "True"
    assert (valid.status, valid.reason) == ("False", "UnknownProvider")
    assert "opneai" in valid.message
    cleared = build(drained_chain(), previous=built.conditions)
    assert [c.type for c in cleared.conditions] == ["Ready"]


# --------------------------------------------------------------------------- events


def test_changes_each_way_once():
    drain = ProviderDrain(provider="a", by="alice", reason="x", until=NOW + timedelta(seconds=9))
    assert drains.changes({}, {}, now=NOW) == []
    (started,) = drains.changes({}, {"a": drain}, now=NOW)
    assert started.reason == "Drained"
    assert "by alice: x until" in started.message
    assert drains.changes({"a": drain}, {"a": drain}, now=NOW) == []
    (lifted,) = drains.changes({"a": drain}, {}, now=NOW + timedelta(seconds=8))
    assert lifted.reason == "Undrained"
    assert not lifted.expired
    assert "by hand" in lifted.message
    (ended,) = drains.changes({"a": drain}, {}, now=NOW + timedelta(seconds=9))
    assert ended.reason == "Undrained"
    assert ended.expired
    assert "Expired" in ended.message
    longer = drain.model_copy(update={"until": None})
    (changed,) = drains.changes({"a": drain}, {"a": longer}, now=NOW)
    assert changed.reason == "Drained"
    assert "(changed)" in changed.message


def test_events_derive_from_status_so_a_restart_neither_repeats_nor_misses_one():
    spec = drained_chain({"provider": "openai", "by": "alice", "until": at(30)})
    written = ProviderChainStatus.model_validate(build(spec).model_dump(by_alias=True, mode="json"))
    posted: list[tuple[str, str]] = []

    def post(ref, *, type, reason, message, dedupe=True):
        assert not dedupe  # once per transition by status; no 30 s window on top
        posted.append((reason, message))

    metrics = Metrics(CollectorRegistry())
    ref = ObjectRef("chainop.dev/v1alpha1", "ProviderChain", "ns", "c", "uid")
    common = {"ref": ref, "namespace": "ns", "chain": "c", "post": post, "metrics": metrics}
    # A restarted operator resumes what the status showed: the same drain, no Event.
    resumed = drains.shown(written)
    again = drain_ops.announce(
        shown=resumed, previous_conditions=written.conditions, built=build(spec), now=T0, **common
    )
    assert posted == []
    # The drain ended while it was stopped: one Undrained (Expired), then nothing.
    later = build(spec, seconds=31)
    shown = drain_ops.announce(
        shown=again, previous_conditions=written.conditions, built=later, now=T0 + 31, **common
    )
    drain_ops.announce(
        shown=shown, previous_conditions=later.conditions, built=later, now=T0 + 32, **common
    )
    assert [reason for reason, _ in posted] == ["Undrained"]
    assert "Expired" in posted[0][1]
    value = metrics.registry.get_sample_value(
        "chainop_drain_transitions_total",
        {"namespace": "ns", "chain": "c", "provider": "openai", "transition": "Expired"},
    )
    assert value == 1.0


def test_an_unknown_provider_drain_warns_once():
    posted: list[str] = []
    metrics = Metrics(CollectorRegistry())
    ref = ObjectRef("chainop.dev/v1alpha1", "ProviderChain", "ns", "c", "uid")
    built = build(drained_chain({"provider": "opneai"}))
    for previous in ([], built.conditions):
        drain_ops.announce(
            ref=ref,
            namespace="ns",
            chain="c",
            shown={},
            previous_conditions=previous,
            built=built,
            now=T0,
            post=lambda ref, *, type, reason, message, **_: posted.append(f"{type}/{reason}"),
            metrics=metrics,
        )
    assert posted == ["Warning/DrainIgnored"]


class RefusingOnceKube:
    """Refuses the first status write (as an API server under load may), then accepts."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.refused = 0

    async def patch_status(self, resource: Any, namespace: str, name: str, body: Any) -> None:
        if not self.refused:
            self.refused += 1
            raise KubeError(503, "ServiceUnavailable", "etcd leader changed")
        self.writes.append(body)


def test_a_refused_status_write_announces_nothing_and_the_written_one_announces_once():
    clock = Clock()
    kube = RefusingOnceKube()
    metrics = Metrics(CollectorRegistry())
    config = OperatorConfig(revalidate_seconds=1e9, status_refresh_seconds=600.0)
    runtime = Runtime(config=config, kube=kube, clients=None, metrics=metrics, clock=clock)  # type: ignore[arg-type]
    posted: list[str] = []
    runtime.event = lambda ref, *, type, reason, message, dedupe=True: posted.append(reason)  # type: ignore[method-assign]
    spec = drained_chain({"provider": "openai", "by": "alice", "reason": "incident 7"})
    runtime.chains[("ns", "c")] = ChainRuntime(
        namespace="ns", name="c", uid="uid-c", generation=1, spec=spec,
        board=HealthBoard(spec), invalid=None, validated_at=clock(),
    )  # fmt: skip

    asyncio.run(runtime.flush(now=clock()))
    assert kube.refused == 1
    assert kube.writes == []
    assert posted == [], "announced a drain no status shows"
    transitions = {"namespace": "ns", "chain": "c", "provider": "openai", "transition": "Drained"}
    assert metrics.registry.get_sample_value("chainop_drain_transitions_total", transitions) is None

    clock.advance(1)
    asyncio.run(runtime.flush(now=clock()))
    clock.advance(1)
    asyncio.run(runtime.flush(now=clock()))
    assert len(kube.writes) == 1
    openai = next(p for p in kube.writes[0]["providers"] if p["name"] == "openai")
    assert openai["state"] == "Drained"
    assert posted == ["Drained"]
    assert metrics.registry.get_sample_value("chainop_drain_transitions_total", transitions) == 1.0


# --------------------------------------------------------------------------- probes


RECOVERY = RecoverySpec.model_validate({"initialSeconds": 1, "maxSeconds": 8})


def probe(health: ProviderHealth, *, now: float, ok: bool) -> ProviderHealth:
    return drains.observe_probe(
        health,
        now=now,
        ok=ok,
        latency_ms=7 if ok else None,
        error="" if ok else "boom",
        recovery=RECOVERY,
    )


def test_probes_of_a_drained_provider_never_make_it_unhealthy():
    health = ProviderHealth(name="a")
    for _ in range(10):
        health = probe(health, now=T0, ok=False)
    assert health.consecutive_probe_failures == 10
    assert not health.unhealthy
    assert not health.excluded
    assert health.last_error == "boom"
    health = probe(health, now=T0 + 1, ok=True)
    assert (health.consecutive_probe_failures, health.last_error) == (0, "")
    assert health.last_probe_latency_ms == 7


def test_an_excluded_drained_provider_backs_off_and_is_restored_quietly():
    excluded = healing.exclude(ProviderHealth(name="a", unhealthy=True), now=T0, recovery=RECOVERY)
    due = excluded.next_recovery_time
    assert due is not None
    failed = probe(excluded, now=due, ok=False)
    assert failed.next_recovery_time is not None
    assert failed.next_recovery_time > due  # never due again at once: no hot loop
    assert not healing.recovery_due(failed, now=due + 0.5)
    restored = probe(failed, now=due + 5, ok=True)
    assert not restored.excluded
    assert not restored.unhealthy


# --------------------------------------------------------------------------- waiting


def test_a_task_waits_for_the_earliest_timed_drain_before_its_deadline():
    spec = drained_chain(
        {"provider": "local-vllm", "until": at(60)},
        {"provider": "private-eu", "until": at(30)},
    )
    deadline = NOW + timedelta(seconds=120)
    wait = drains.wait_for_drain(spec, ["local-vllm", "private-eu"], now=NOW, deadline=deadline)
    assert wait == drains.DrainWait(provider="private-eu", until=NOW + timedelta(seconds=30))
    # The drain outlasts the deadline: no wait (the task fails now, saying why).
    alone = drains.wait_for_drain(
        spec, ["local-vllm"], now=NOW, deadline=NOW + timedelta(seconds=61)
    )
    assert alone == drains.DrainWait(provider="local-vllm", until=NOW + timedelta(seconds=60))
    assert (
        drains.wait_for_drain(spec, ["local-vllm"], now=NOW, deadline=NOW + timedelta(seconds=59))
        is None
    )


def test_no_wait_when_a_usable_provider_is_not_drained_or_no_drain_has_an_end():
    spec = drained_chain({"provider": "local-vllm"}, {"provider": "private-eu", "until": at(30)})
    deadline = NOW + timedelta(seconds=120)
    # openai is not drained: drains are not what stops the task.
    assert drains.wait_for_drain(spec, ["private-eu", "openai"], now=NOW, deadline=deadline) is None
    # Drained until someone lifts it: nothing to wait for.
    assert drains.wait_for_drain(spec, ["local-vllm"], now=NOW, deadline=deadline) is None
    # Open-ended and timed together: wait for the timed one.
    wait = drains.wait_for_drain(spec, ["local-vllm", "private-eu"], now=NOW, deadline=deadline)
    assert wait is not None
    assert wait.provider == "private-eu"
    # Nothing the task could use: nothing to wait for either.
    assert drains.wait_for_drain(spec, [], now=NOW, deadline=deadline) is None


@settings(max_examples=200, deadline=None)
@given(
    ends=st.lists(st.one_of(st.none(), st.integers(1, 600)), min_size=1, max_size=3),
    budget=st.integers(1, 600),
)
def test_a_drain_wait_ends_before_the_deadline_at_a_drain_that_really_ends(ends, budget):
    names = ["local-vllm", "private-eu", "openai"][: len(ends)]
    entries = [
        {"provider": n} if e is None else {"provider": n, "until": at(e)}
        for n, e in zip(names, ends, strict=True)
    ]
    spec = drained_chain(*entries)
    deadline = NOW + timedelta(seconds=budget)
    wait = drains.wait_for_drain(spec, names, now=NOW, deadline=deadline)
    timed = [NOW + timedelta(seconds=e) for e in ends if e is not None]
    if wait is None:
        assert not timed or min(timed) >= deadline
    else:
        assert wait.until == min(timed)
        assert NOW < wait.until < deadline
