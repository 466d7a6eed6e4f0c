"""We test these aspects: invariants of the core, as hypothesis properties.

* a benched (or excluded) non-terminus provider is never called;
* the terminus is always attempted when nothing earlier ended the task;
* a cooldown never exceeds its cap and never shrinks on re-failure;
* an unknown or local-only route never yields a non-Sovereign provider;
* a task is never reported Succeeded on an incomplete reply.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from chainop.core import chain as executor
from chainop.core import health as rules
from chainop.core import routing
from chainop.core.calls import CallContext, Completion
from chainop.core.chain import HealthBoard
from chainop.core.errors import (
    IncompleteReplyError,
    ModelNotFoundError,
    ProviderError,
    RateLimitedError,
    TransientError,
)
from chainop.core.health import ProviderHealth
from chainop.core.models import CooldownSpec, PrivacyTier, ProviderSpec, RequestSpec
from tests.unit.support import T0, chain, provider, request, task

TIERS = ["Sovereign", "Private", "Standard"]
OUTCOMES = st.sampled_from(["ok", "transient", "incomplete", "ratelimit", "notfound"])


def make_error(kind: str) -> ProviderError | None:
    return {
        "ok": None,
        "transient": TransientError("HTTP 500"),
        "incomplete": IncompleteReplyError("malformed JSON"),
        "ratelimit": RateLimitedError("HTTP 429", retry_after=7),
        "notfound": ModelNotFoundError("HTTP 404"),
    }[kind]


@st.composite
def scenarios(draw):
    count = draw(st.integers(min_value=1, max_value=5))
    tiers = draw(st.lists(st.sampled_from(TIERS), min_size=count, max_size=count))
    spec = chain(
        *[provider(f"p{i}", tier) for i, tier in enumerate(tiers)],
        health={
            "failureThreshold": draw(st.integers(1, 4)),
            "transientRetries": draw(st.integers(0, 3)),
        },
    )
    benched = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    excluded = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    scripts = {f"p{i}": draw(st.lists(OUTCOMES, min_size=1, max_size=6)) for i in range(count)}
    return spec, benched, excluded, scripts


class Script:
    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.called: list[str] = []
        self.outcomes: list[str] = []

    async def __call__(
        self, provider_spec: ProviderSpec, req: RequestSpec, context: CallContext
    ) -> Completion:
        self.called.append(provider_spec.name)
        steps = self.scripts[provider_spec.name]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        self.outcomes.append(step)
        error = make_error(step)
        if error is not None:
            raise error
        return Completion(text=f"answer from {provider_spec.name}")


def run_scenario(spec, benched, excluded, scripts):
    board = HealthBoard(spec)
    for i, p in enumerate(spec.providers):
        board.set(
            ProviderHealth(
                name=p.name,
                cooldown_until=T0 + 60 if benched[i] else None,
                benchings=1 if benched[i] else 0,
                excluded_since=T0 - 1 if excluded[i] else None,
                unhealthy=excluded[i],
            )
        )
    eligible = [p.name for p in spec.providers]
    call = Script(scripts)
    result = asyncio.run(
        executor.execute(
            chain=spec,
            eligible=eligible,
            request=request(),
            call=call,
            board=board,
            now=lambda: T0,
        )
    )
    return result, call, eligible


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_benched_non_terminus_provider_is_never_called(scenario):
    spec, benched, excluded, scripts = scenario
    _, call, eligible = run_scenario(spec, benched, excluded, scripts)
    for i, name in enumerate(eligible[:-1]):
        if benched[i] or excluded[i]:
            assert name not in call.called


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_terminus_is_always_attempted(scenario):
    spec, benched, excluded, scripts = scenario
    result, call, eligible = run_scenario(spec, benched, excluded, scripts)
    if result.failure_reason == "AllProvidersFailed":
        assert eligible[-1] in call.called
    if result.succeeded:
        assert result.was_terminus == (result.provider == eligible[-1])


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_succeeded_on_an_incomplete_reply(scenario):
    spec, benched, excluded, scripts = scenario
    result, call, _ = run_scenario(spec, benched, excluded, scripts)
    if result.succeeded:
        # The answering call returned a complete reply, and it is the attempt reported.
        assert call.outcomes[-1] == "ok"
        assert result.attempts[result.attempt - 1].outcome == "Succeeded"
        assert result.attempts[result.attempt - 1].provider == result.provider
    else:
        assert result.completion is None
    incomplete_calls = call.outcomes.count("incomplete")
    incomplete_attempts = [a for a in result.attempts if a.outcome == "IncompleteReply"]
    assert len(incomplete_attempts) == incomplete_calls


@settings(max_examples=500, deadline=None)
@given(
    initial=st.floats(min_value=0.001, max_value=1000),
    factor=st.floats(min_value=1, max_value=100),
    threshold=st.integers(1, 5),
    events=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=500),
            st.one_of(st.none(), st.floats(min_value=0, max_value=1e7)),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_cooldown_never_exceeds_cap_and_never_shrinks(initial, factor, threshold, events):
    policy = CooldownSpec(initial_seconds=initial, max_seconds=min(initial * factor, 86_400))
    health = ProviderHealth(name="p")
    now = T0
    for gap, retry_after in events:
        now += gap
        before = health.cooldown_until
        outcome = rules.record_failure(
            health,
            now=now,
            error="x",
            failure_threshold=threshold,
            cooldown=policy,
            retry_after=retry_after,
        )
        health = outcome.health
        if health.cooldown_until is not None:
            assert health.cooldown_until - now <= policy.max_seconds + 1e-6 or (
                before is not None and health.cooldown_until == before
            )
            if before is not None:
                assert health.cooldown_until >= before
        assert rules.cooldown_seconds(policy, benchings=health.benchings) <= policy.max_seconds


PREFERRED = st.one_of(
    st.sampled_from(["auto", "", "local", "p0", "p1", "p2"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
)


@settings(max_examples=500, deadline=None)
@given(
    tiers=st.lists(st.sampled_from(TIERS), min_size=1, max_size=6),
    preferred=PREFERRED,
    allow=st.one_of(st.none(), st.booleans()),
    requires_local=st.booleans(),
    chain_default=st.booleans(),
    excluded=st.sets(st.integers(0, 5)),
)
def test_unknown_or_local_only_route_never_yields_non_sovereign(
    tiers, preferred, allow, requires_local, chain_default, excluded
):
    spec = chain(
        *[provider(f"p{i}", tier) for i, tier in enumerate(tiers)],
        taskDefaults={"allowDelegation": chain_default},
    )
    routing_spec = {"preferredProvider": preferred, "requiresLocal": requires_local}
    if allow is not None:
        routing_spec["allowDelegation"] = allow
    order = [p.name for i, p in enumerate(spec.providers) if i not in excluded]
    decision = routing.decide(spec, task(routing_spec), active_order=order)
    names = {p.name for p in spec.providers}
    delegation = allow if allow is not None else chain_default
    unknown = preferred.strip() not in names | {"auto", "", "local"}
    if requires_local or preferred.strip() == "local" or not delegation or unknown:
        assert decision.local_only
        for name in decision.providers:
            assert spec.provider(name).privacy_tier is PrivacyTier.SOVEREIGN
    assert set(decision.providers) <= set(order)
