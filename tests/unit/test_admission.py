"""We test these aspects: the admission rules (``chainop.core.admission``, pure).

* refused: an endpoint the guard refuses (by literal or by what the host resolves to,
  and by the operator's allow-list); drains that leave no provider in service, also when
  FallbackOnly already leaves out the head; the message names the field;
* not refused: a drain with providers left, an expired drain, a cost on a Sovereign
  provider (a decision: chargeback of in-cluster GPUs);
* warned: drains naming unknown providers or already expired, drains whose remaining
  providers are all Excluded (status), FallbackOnly with one provider; tasks naming a
  missing or invalid chain, requiring local on a chain without Sovereign providers (each
  of the three routing rules names its own field), a preferredProvider the chain lacks;
* a property: drains are refused exactly when no provider the strategy uses is left
  undrained, whatever the drains and strategy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainop.core import admission
from chainop.core.endpoints import EndpointPolicy
from chainop.core.models import ProviderState
from tests.unit.support import chain, provider, task

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
OPEN = EndpointPolicy()


def review(spec: Any, **extra: Any) -> admission.Review:
    extra.setdefault("addresses", {})
    extra.setdefault("policy", OPEN)
    return admission.review_chain(spec, now=NOW, **extra)


def drain(name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": name, "reason": "maintenance", "by": "alice", **extra}


# ----------------------------------------------------------------------------- refused


def test_endpoint_the_guard_refuses_is_denied_naming_the_field():
    spec = chain(
        provider("a"), provider("meta", endpoint="http://169.254.169.254/latest"), provider("b")
    )
    result = review(spec)
    assert not result.allowed
    (denial,) = result.denials
    assert denial.startswith("spec.providers[1].endpoint: host 169.254.169.254 is ")


def test_endpoint_resolving_to_metadata_is_denied():
    spec = chain(provider("a", endpoint="http://sneaky.example/v1"))
    result = review(spec, addresses={"sneaky.example": ["10.0.0.1", "169.254.169.254"]})
    assert result.denials[0].startswith("spec.providers[0].endpoint: host sneaky.example is")


def test_endpoint_outside_the_allow_list_is_denied_and_inside_is_not():
    policy = EndpointPolicy.from_entries(["*.svc", "10.0.0.0/8"])
    spec = chain(provider("a", endpoint="http://vllm.team.svc/v1"), provider("b"))
    result = review(spec, policy=policy, addresses={"b.example": ["93.184.216.34"]})
    assert result.denials == (
        "spec.providers[1].endpoint: host b.example is not in the operator's endpoint allow-list",
    )


def test_draining_every_provider_is_denied_naming_the_terminus_drain():
    spec = chain(provider("a"), provider("b"), drains=[drain("b"), drain("a")])
    result = review(spec)
    assert result.denials == (
        "spec.drains[0].provider: draining 'b' leaves no provider in service "
        "(drained: a, b); undrain one first",
    )


def test_draining_the_only_provider_is_denied():
    result = review(chain(provider("only"), drains=[drain("only")]))
    assert not result.allowed


def test_fallback_only_with_the_rest_drained_is_denied():
    """FallbackOnly never uses the head, so draining everything else leaves nothing."""
    spec = chain(
        provider("head"), provider("tail"), strategy="FallbackOnly", drains=[drain("tail")]
    )
    assert review(spec).denials[0].startswith("spec.drains[0].provider: draining 'tail'")


# ----------------------------------------------------------------------------- allowed


def test_draining_the_terminus_with_another_provider_left_is_allowed():
    result = review(chain(provider("a"), provider("b"), drains=[drain("b")]))
    assert result.allowed
    assert result.warnings == ()


def test_expired_drain_is_allowed_with_a_warning():
    until = NOW - timedelta(minutes=5)
    result = review(chain(provider("a"), drains=[drain("a", until=until.isoformat())]))
    assert result.allowed
    assert result.warnings == (
        "spec.drains[0].until: 2026-12-02T09:55:00Z has passed: the drain is no longer in effect",
    )


def test_drain_until_ahead_counts():
    until = NOW + timedelta(minutes=30)
    assert not review(chain(provider("a"), drains=[drain("a", until=until.isoformat())])).allowed


@pytest.mark.parametrize(("minutes", "allowed"), [(30, False), (-5, True)])
def test_drain_until_without_a_zone_is_utc(minutes: int, allowed: bool):
    """``2026-12-02T10:30:00`` passes the CRD's date-time format; reviewing it must not
    raise (the webhook would then admit it unreviewed, drain denial and warnings lost)."""
    until = (NOW + timedelta(minutes=minutes)).replace(tzinfo=None).isoformat()
    assert review(chain(provider("a"), drains=[drain("a", until=until)])).allowed is allowed


def test_cost_on_a_sovereign_provider_is_allowed_without_warning():
    cost = {"inputPerMillionTokens": 0.05, "outputPerMillionTokens": 0.1}
    result = review(chain(provider("gpu", "Sovereign", cost=cost)))
    assert result == admission.Review()


# ----------------------------------------------------------------------------- chain warnings


def test_drain_of_an_unknown_provider_is_a_warning():
    result = review(chain(provider("a"), provider("b"), drains=[drain("c")]))
    assert result.allowed
    assert result.warnings == (
        "spec.drains[0].provider: no provider named 'c' in spec.providers: the drain has no effect",
    )


def test_drains_leaving_only_excluded_providers_warn():
    spec = chain(provider("a"), provider("b"), provider("c"), drains=[drain("c")])
    states = {"a": ProviderState.EXCLUDED, "b": ProviderState.EXCLUDED, "c": ProviderState.HEALTHY}
    result = review(spec, states=states)
    assert result.allowed
    assert result.warnings == (
        "spec.drains: every provider left in service (a, b) is Excluded right now: no task is "
        "served until one of them recovers",
    )
    # Without drains, Excluded providers are the operator's business, not admission's.
    assert review(chain(provider("a"), provider("b")), states=states).warnings == ()


def test_fallback_only_with_a_single_provider_warns():
    result = review(chain(provider("only"), strategy="FallbackOnly"))
    assert result.allowed
    assert result.warnings[0].startswith("spec.strategy: FallbackOnly skips the head (only)")


# ----------------------------------------------------------------------------- tasks


def test_task_naming_a_missing_chain_warns():
    result = admission.review_task(task(), None, namespace="team-a")
    assert result.allowed
    assert result.warnings == (
        "spec.chain: no ProviderChain 'default' in namespace 'team-a' (yet): the task waits "
        "for it and fails after spec.timeoutSeconds (120s) if it is not fixed",
    )


def test_task_naming_an_invalid_chain_warns_with_its_problem():
    result = admission.review_task(task(), None, namespace="ns", chain_problem="spec.x: bad")
    assert result.warnings[0].startswith("spec.chain: ProviderChain 'default' is invalid (spec.x")


@pytest.mark.parametrize(
    ("routing", "field"),
    [
        ({"requiresLocal": True, "allowDelegation": True}, "spec.routing.requiresLocal"),
        ({"preferredProvider": "local", "allowDelegation": True}, "spec.routing.preferredProvider"),
        ({}, "spec.routing.allowDelegation"),
        ({"allowDelegation": False}, "spec.routing.allowDelegation"),
    ],
)
def test_task_requiring_local_on_a_chain_without_sovereign_warns(routing, field):
    spec = chain(provider("cloud"), provider("api", "Private"))
    (warning,) = admission.review_task(task(routing), spec, namespace="ns").warnings
    assert warning.startswith(f"{field}: the task may run only on Sovereign (local) providers")
    assert "it will fail NoEligibleProvider" in warning


def test_task_requiring_local_on_a_chain_with_sovereign_is_quiet():
    spec = chain(provider("gpu", "Sovereign"), provider("cloud"))
    assert admission.review_task(task({"requiresLocal": True}), spec, namespace="ns").warnings == ()
    assert admission.review_task(task(), spec, namespace="ns").warnings == ()


def test_delegating_task_on_a_cloud_chain_is_quiet():
    spec = chain(provider("cloud"))
    routing = {"allowDelegation": True, "preferredProvider": "cloud"}
    assert admission.review_task(task(routing), spec, namespace="ns") == admission.Review()


def test_unknown_preferred_provider_warns_fail_safe_to_local():
    spec = chain(provider("gpu", "Sovereign"), provider("cloud"))
    routing = {"preferredProvider": "clod", "allowDelegation": True}
    (warning,) = admission.review_task(task(routing), spec, namespace="ns").warnings
    assert warning == (
        "spec.routing.preferredProvider: chain 'default' has no provider 'clod' (it has gpu, "
        "cloud): the task fails safe to local (Sovereign providers only)"
    )


def test_unknown_preferred_provider_without_sovereign_warns_twice():
    spec = chain(provider("cloud"))
    routing = {"preferredProvider": "clod", "allowDelegation": True}
    warnings = admission.review_task(task(routing), spec, namespace="ns").warnings
    assert [w.split(":")[0] for w in warnings] == ["spec.routing.preferredProvider"] * 2
    assert "NoEligibleProvider" in warnings[1]


# ----------------------------------------------------------------------------- property


@given(
    count=st.integers(min_value=1, max_value=5),
    drained=st.sets(st.integers(min_value=0, max_value=6)),
    strategy=st.sampled_from(["Fallback", "PrimaryOnly", "RoundRobin", "FallbackOnly"]),
)
def test_drains_are_denied_exactly_when_nothing_the_strategy_uses_is_left(
    count: int, drained: set[int], strategy: str
):
    names = [f"p{i}" for i in range(count)]
    spec = chain(
        *(provider(name) for name in names),
        strategy=strategy,
        drains=[drain(f"p{i}") for i in sorted(drained)],
    )
    used = names[1:] if strategy == "FallbackOnly" else names
    left = [name for name in used if int(name[1:]) not in drained]
    assert review(spec).allowed is (not used or bool(left))


# ----------------------------------------------------------------------------- messages


def test_validation_messages_name_the_field_once_without_pydantic_prefixes():
    """The message admission refuses with is the InvalidSpec message of the operator."""
    from pydantic import ValidationError

    from chainop.core.models import DelegatedTaskSpec, ProviderChainSpec
    from chainop.operator.runtime import validation_message

    def message(model: Any, body: dict[str, Any]) -> str:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        return validation_message(caught.value)

    duplicate = {"providers": [provider("a"), provider("a")]}
    assert message(ProviderChainSpec, duplicate) == (
        "spec.providers[1].name: duplicate provider name 'a'"
    )
    hedge = {"chain": "c", "hedge": {}, "request": {"messages": [{"content": "hi"}]}}
    assert (
        message(DelegatedTaskSpec, hedge) == "spec.hedge: set afterMillis, afterPercentile or both"
    )
    negative = {"providers": [provider("a", timeoutSeconds=-1)]}
    assert message(ProviderChainSpec, negative).startswith("spec.providers.0.timeoutSeconds: ")
