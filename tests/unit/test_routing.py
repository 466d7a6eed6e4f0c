"""We test these aspects: the routing decision of DESIGN.md, one test per rule.

* each of the six rules, in its strict precedence, with the reason it writes;
* "local" means Sovereign; an empty result when nothing is eligible;
* the active order (Excluded providers left out) feeds rules 4 and 5;
* the public API: ``decide(chain, task)`` on models built with ``model_validate``.
"""

from __future__ import annotations

import pytest

from chainop.core import routing
from chainop.core.models import PrivacyTier
from tests.unit.support import chain, provider, task

MIXED = chain(
    provider("local-vllm", "Sovereign"),
    provider("private-eu", "Private"),
    provider("openai", "Standard"),
    provider("local-small", "Sovereign"),
)
LOCALS = ("local-vllm", "local-small")
ALL = ("local-vllm", "private-eu", "openai", "local-small")


@pytest.mark.parametrize(
    ("routing_spec", "expected"),
    [
        ({"requiresLocal": True}, LOCALS),
        ({"requiresLocal": True, "allowDelegation": True}, LOCALS),
        ({"requiresLocal": True, "preferredProvider": "openai", "allowDelegation": True}, LOCALS),
    ],
)
def test_rule1_requires_local_means_local_only(routing_spec, expected):
    decision = routing.decide(MIXED, task(routing_spec))
    assert decision.providers == expected
    assert decision.reason == "requiresLocal=true"
    assert decision.rule == 1


@pytest.mark.parametrize(
    "routing_spec",
    [
        {"preferredProvider": "local"},
        {"preferredProvider": "local", "allowDelegation": True},
    ],
)
def test_rule2_preferred_local_means_local_only(routing_spec):
    decision = routing.decide(MIXED, task(routing_spec))
    assert decision.providers == LOCALS
    assert decision.reason == "preferredProvider=local"
    assert decision.rule == 2


@pytest.mark.parametrize(
    ("routing_spec", "chain_default", "expected_reason"),
    [
        ({}, None, "allowDelegation=false (default)"),
        ({}, False, "allowDelegation=false (default)"),
        ({"allowDelegation": False}, True, "allowDelegation=false"),
        ({"allowDelegation": False, "preferredProvider": "openai"}, True, "allowDelegation=false"),
        ({"preferredProvider": "openai"}, None, "allowDelegation=false (default)"),
    ],
)
def test_rule3_delegation_not_allowed_means_local_only(
    routing_spec, chain_default, expected_reason
):
    spec = MIXED
    if chain_default is not None:
        spec = MIXED.model_copy(
            update={
                "task_defaults": MIXED.task_defaults.model_copy(
                    update={"allow_delegation": chain_default}
                )
            }
        )
    decision = routing.decide(spec, task(routing_spec))
    assert decision.providers == LOCALS
    assert decision.reason == expected_reason
    assert decision.rule == 3


def test_rule3_chain_task_defaults_allow_delegation_when_task_is_silent():
    spec = chain(
        *[p.model_dump(by_alias=True) for p in MIXED.providers],
        taskDefaults={"allowDelegation": True},
    )
    decision = routing.decide(spec, task({}))
    assert decision.providers == ALL
    assert decision.rule == 5


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ("openai", ("openai", "local-vllm", "private-eu", "local-small")),
        ("local-small", ("local-small", "local-vllm", "private-eu", "openai")),
        ("local-vllm", ALL),
    ],
)
def test_rule4_named_provider_first_then_chain_order(preferred, expected):
    decision = routing.decide(
        MIXED, task({"preferredProvider": preferred, "allowDelegation": True})
    )
    assert decision.providers == expected
    assert decision.reason == f"preferredProvider={preferred}"
    assert decision.rule == 4


def test_rule4_named_provider_that_is_excluded_is_left_out():
    decision = routing.decide(
        MIXED,
        task({"preferredProvider": "openai", "allowDelegation": True}),
        active_order=["local-vllm", "private-eu", "local-small"],
    )
    assert decision.providers == ("local-vllm", "private-eu", "local-small")
    assert "excluded" in decision.reason


@pytest.mark.parametrize("preferred", ["auto", "", "  "])
def test_rule5_auto_or_empty_means_active_order(preferred):
    decision = routing.decide(
        MIXED,
        task({"preferredProvider": preferred, "allowDelegation": True}),
        active_order=["private-eu", "openai", "local-small"],
    )
    assert decision.providers == ("private-eu", "openai", "local-small")
    assert decision.rule == 5


def test_rule5_without_status_uses_spec_order():
    decision = routing.decide(MIXED, task({"allowDelegation": True}))
    assert decision.providers == ALL


@pytest.mark.parametrize("preferred", ["opneai", "OpenAI", "gpt-4o", "local-vllm2"])
def test_rule6_unknown_preferred_provider_fails_safe_to_local(preferred):
    decision = routing.decide(
        MIXED, task({"preferredProvider": preferred, "allowDelegation": True})
    )
    assert decision.providers == LOCALS
    assert decision.reason == f"unknown preferredProvider={preferred} → fail-safe"
    assert decision.rule == 6


def test_local_means_sovereign_tier_only():
    spec = chain(provider("a", "Private"), provider("b", "Standard"))
    decision = routing.decide(spec, task({"requiresLocal": True}))
    assert decision.providers == ()
    assert "no Sovereign provider" in decision.reason
    assert decision.provider == ""


def test_no_eligible_provider_gives_empty_decision_with_reason():
    decision = routing.decide(MIXED, task({"allowDelegation": True}), active_order=[])
    assert decision.providers == ()
    assert "excluded" in decision.reason


def test_decision_reason_and_first_provider_for_status():
    decision = routing.decide(MIXED, task({}))
    assert decision.provider == "local-vllm"
    assert decision.local_only


def test_public_api_from_camelcase_dicts():
    from chainop.core.models import DelegatedTaskSpec, ProviderChainSpec

    spec = ProviderChainSpec.model_validate(
        {
            "providers": [provider("x", "Sovereign"), provider("y")],
            "taskDefaults": {"allowDelegation": True},
        }
    )
    work = DelegatedTaskSpec.model_validate(
        {"chain": "c", "request": {"messages": [{"role": "user", "content": "q"}]}}
    )
    result = routing.decide(spec, work)
    assert list(result.providers) == ["x", "y"]
    assert isinstance(result.reason, str)


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        (["Sovereign"], PrivacyTier.SOVEREIGN),
        (["Sovereign", "Private"], PrivacyTier.PRIVATE),
        (["Private", "Sovereign", "Standard"], PrivacyTier.STANDARD),
    ],
)
def test_effective_privacy_tier_is_the_most_permissive(tiers, expected):
    spec = chain(*[provider(f"p{i}", tier) for i, tier in enumerate(tiers)])
    assert routing.effective_privacy_tier(spec) is expected
