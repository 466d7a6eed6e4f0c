"""We test these aspects: building status and conditions (pure).

* ``lastTransitionTime`` changes only when a condition's status flips;
* a chain's status: counts, ``healthySummary``, ``activeOrder`` without Excluded
  providers, ``active``, ``effectivePrivacyTier``, and Ready with its reasons;
* what counts as a significant change (probe timestamps alone do not).
"""

from __future__ import annotations

from datetime import UTC, datetime

from chainop.core import conditions, status
from chainop.core.health import ProviderHealth
from tests.unit.support import T0, chain, provider

SPEC = chain(provider("a", "Sovereign"), provider("b", "Private"), provider("c"))
T = datetime.fromtimestamp(T0, tz=UTC)
LATER = datetime.fromtimestamp(T0 + 60, tz=UTC)


def test_last_transition_time_changes_only_when_status_flips():
    first = conditions.set_condition(
        [], type="Ready", status="True", reason="A", message="x", now=T
    )
    same = conditions.set_condition(
        first, type="Ready", status="True", reason="B", message="y", now=LATER
    )
    assert same[0].last_transition_time == T
    assert (same[0].reason, same[0].message) == ("B", "y")
    flipped = conditions.set_condition(
        same, type="Ready", status="False", reason="C", message="z", now=LATER
    )
    assert flipped[0].last_transition_time == LATER


def test_other_conditions_keep_their_place():
    both = conditions.set_condition([], type="A", status="True", reason="r", message="", now=T)
    both = conditions.set_condition(both, type="B", status="True", reason="r", message="", now=T)
    updated = conditions.set_condition(
        both, type="A", status="False", reason="s", message="", now=T
    )
    assert [c.type for c in updated] == ["A", "B"]
    assert conditions.get_condition(updated, "B").status == "True"
    assert conditions.get_condition(updated, "C") is None


def test_chain_status_counts_order_and_ready():
    health = [
        ProviderHealth(name="a", unhealthy=True, excluded_since=T0 - 5),
        ProviderHealth(name="b", cooldown_until=T0 + 30, benchings=1),
        ProviderHealth(name="c"),
    ]
    built = status.chain_status(SPEC, health, now=T0, generation=3, previous_conditions=[])
    assert (built.healthy, built.total, built.healthy_summary) == (1, 3, "1/3")
    assert built.active_order == ["b", "c"]
    assert built.active == "b"
    assert built.effective_privacy_tier.value == "Standard"
    assert [p.state.value for p in built.providers] == ["Excluded", "CoolingDown", "Healthy"]
    ready = conditions.get_condition(built.conditions, "Ready")
    assert (ready.status, ready.reason, ready.observed_generation) == (
        "True",
        "ProvidersAvailable",
        3,
    )


def test_chain_not_ready_when_nothing_is_usable():
    health = [ProviderHealth(name=n, unhealthy=True) for n in ("a", "b", "c")]
    built = status.chain_status(SPEC, health, now=T0, generation=1, previous_conditions=[])
    ready = conditions.get_condition(built.conditions, "Ready")
    assert (ready.status, ready.reason) == ("False", "NoHealthyProvider")


def test_chain_not_ready_when_invalid_whatever_the_health():
    built = status.chain_status(
        SPEC,
        [],
        now=T0,
        generation=2,
        previous_conditions=[],
        invalid=("SecretNotFound", "Secret 'k' not found"),
    )
    ready = conditions.get_condition(built.conditions, "Ready")
    assert (ready.status, ready.reason, ready.message) == (
        "False",
        "SecretNotFound",
        "Secret 'k' not found",
    )


def test_probe_timestamps_alone_are_not_significant():
    one = status.chain_status(
        SPEC,
        [ProviderHealth(name="a", last_probe_time=T0, last_probe_latency_ms=3)],
        now=T0,
        generation=1,
        previous_conditions=[],
    ).model_dump(by_alias=True, mode="json")
    two = status.chain_status(
        SPEC,
        [ProviderHealth(name="a", last_probe_time=T0 + 15, last_probe_latency_ms=4)],
        now=T0 + 15,
        generation=1,
        previous_conditions=[],
    ).model_dump(by_alias=True, mode="json")
    assert one != two
    assert status.significant(one) == status.significant(two)
    three = status.chain_status(
        SPEC,
        [ProviderHealth(name="a", consecutive_failures=1)],
        now=T0,
        generation=1,
        previous_conditions=[],
    ).model_dump(by_alias=True, mode="json")
    assert status.significant(three) != status.significant(one)
