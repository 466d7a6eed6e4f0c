"""We test these aspects: hypothesis fuzzing of what users and providers can throw at the core.

* arbitrary JSON given to the models never crashes validation: a model or a pydantic
  ``ValidationError``, nothing else (no TypeError, RecursionError, KeyError…);
* near-valid chain specs (valid ones with one field replaced by junk) likewise;
* the routing decision, for any valid chain and task: never raises, providers are a
  subset of the chain without repeats, local-only decisions only name Sovereign ones;
* the chain executor, for random scripts of outcomes per provider (success, every error
  class, hangs cut by the task deadline): always terminates, never raises, and the
  result keeps its invariants (success ⇔ a completion and a provider that answered last;
  failure ⇔ a CamelCase reason; no provider outside the decision is ever called).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chainop.core import chain as executor
from chainop.core import routing
from chainop.core.calls import CallContext, Completion
from chainop.core.chain import HealthBoard
from chainop.core.errors import (
    IncompleteReplyError,
    ModelNotFoundError,
    PermanentError,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnsupportedRequestError,
)
from chainop.core.health import ProviderHealth
from chainop.core.models import (
    AttemptOutcome,
    DelegatedTaskSpec,
    DelegatedTaskStatus,
    PrivacyTier,
    ProviderChainSpec,
    ProviderChainStatus,
    ProviderSpec,
    RequestSpec,
)
from tests.unit.support import T0, chain, provider, task

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
MODELS = [ProviderChainSpec, DelegatedTaskSpec, ProviderChainStatus, DelegatedTaskStatus]
CAMEL = re.compile(r"^[A-Z][A-Za-z]+$")


def validate_or_reject(model: type[Any], data: Any) -> None:
    with contextlib.suppress(ValidationError):
        model.model_validate(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=JSON, model=st.sampled_from(MODELS))
def test_arbitrary_json_is_a_model_or_a_validation_error(data: Any, model: type[Any]) -> None:
    validate_or_reject(model, data)


VALID_CHAIN: dict[str, Any] = {
    "strategy": "Fallback",
    "providers": [provider("a", "Sovereign", backend={"deployment": "vllm"}), provider("b")],
    "health": {"failureThreshold": 2, "cooldown": {"initialSeconds": 5, "maxSeconds": 300}},
    "selfHealing": {"maxRestartsPerHour": 3, "recovery": {"initialSeconds": 1}},
}
VALID_TASK: dict[str, Any] = {
    "chain": "default",
    "routing": {"preferredProvider": "auto", "allowDelegation": True},
    "request": {"messages": [{"role": "user", "content": "hi"}], "maxTokens": 5},
    "timeoutSeconds": 10,
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], junk: Any) -> Any:
    if not path:
        return junk
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(copy[path[0]], path[1:], junk)
    return copy


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_near_valid_specs_are_a_model_or_a_validation_error(data: st.DataObject) -> None:
    for model, valid in ((ProviderChainSpec, VALID_CHAIN), (DelegatedTaskSpec, VALID_TASK)):
        path = data.draw(st.sampled_from(paths(valid)))
        junk = data.draw(JSON)
        validate_or_reject(model, replaced(valid, path, junk))


# --------------------------------------------------------------------------- routing

TIERS = ["Sovereign", "Private", "Standard"]


@st.composite
def chains(draw: st.DrawFn) -> ProviderChainSpec:
    count = draw(st.integers(1, 6))
    tiers = draw(st.lists(st.sampled_from(TIERS), min_size=count, max_size=count))
    return chain(
        *[provider(f"p{i}", tier) for i, tier in enumerate(tiers)],
        strategy=draw(st.sampled_from(["Fallback", "PrimaryOnly", "RoundRobin"])),
        health={
            "failureThreshold": draw(st.integers(1, 4)),
            "transientRetries": draw(st.integers(0, 3)),
            "cooldown": {"initialSeconds": 1, "maxSeconds": 10},
        },
        advanceOnPermanentError=draw(st.booleans()),
        taskDefaults={"allowDelegation": draw(st.booleans())},
    )


@st.composite
def tasks(draw: st.DrawFn) -> DelegatedTaskSpec:
    preferred = draw(
        st.sampled_from(["auto", "local", "", "p0", "p1", "p5", "P0", "nope"])
        | st.text(max_size=10)
    )
    return task(
        {
            "preferredProvider": preferred,
            "allowDelegation": draw(st.none() | st.booleans()),
            "requiresLocal": draw(st.booleans()),
        }
    )


@settings(max_examples=400)
@given(spec=chains(), job=tasks(), active=st.none() | st.lists(st.sampled_from(["p0", "p1", "p2"])))
def test_routing_decision_never_raises_and_stays_in_the_chain(
    spec: ProviderChainSpec, job: DelegatedTaskSpec, active: list[str] | None
) -> None:
    kwargs = {} if active is None else {"active_order": list(dict.fromkeys(active))}
    decision = routing.decide(spec, job, **kwargs)
    names = [p.name for p in spec.providers]
    assert set(decision.providers) <= set(names)
    assert len(set(decision.providers)) == len(decision.providers)
    assert decision.reason
    sovereign = {p.name for p in spec.providers if p.privacy_tier is PrivacyTier.SOVEREIGN}
    if decision.local_only or job.routing.requires_local:
        assert set(decision.providers) <= sovereign
    known = job.routing.preferred_provider.strip() in {"", "auto", "local", *names}
    if not known:
        assert set(decision.providers) <= sovereign
        assert decision.rule in (1, 3, 6)
        assert decision.rule != 6 or "fail-safe" in decision.reason


# --------------------------------------------------------------------------- executor

STEPS = st.sampled_from(
    ["ok", "transient", "ratelimit", "incomplete", "notfound", "unsupported", "permanent", "hang"]
)


def step_error(kind: str) -> ProviderError | None:
    return {
        "transient": TransientError("HTTP 503"),
        "ratelimit": RateLimitedError("HTTP 429", retry_after=3),
        "incomplete": IncompleteReplyError("cut-off body"),
        "notfound": ModelNotFoundError("HTTP 404 model"),
        "unsupported": UnsupportedRequestError("too long"),
        "permanent": PermanentError("HTTP 400"),
    }.get(kind)


class Script:
    """Plays each provider's list of steps; the last step repeats."""

    def __init__(self, steps: dict[str, list[str]]) -> None:
        self.steps = steps
        self.called: list[str] = []

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        self.called.append(provider.name)
        steps = self.steps[provider.name]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "hang":
            await asyncio.sleep(3600)
        error = step_error(step)
        if error is not None:
            raise error
        return Completion(text=f"from {provider.name}", input_tokens=3, output_tokens=2)


@settings(max_examples=300, deadline=None)
@given(spec=chains(), data=st.data())
def test_executor_terminates_never_raises_and_keeps_result_invariants(
    spec: ProviderChainSpec, data: st.DataObject
) -> None:
    names = [p.name for p in spec.providers]
    eligible = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    steps = {n: data.draw(st.lists(STEPS, min_size=1, max_size=6)) for n in names}
    benched = {n: data.draw(st.booleans()) for n in names}
    board = HealthBoard(spec)
    for name, on in benched.items():
        if on:
            board.set(ProviderHealth(name=name, cooldown_until=T0 + 60, benchings=1))
    script = Script(steps)

    async def run() -> executor.ExecutionResult:
        return await executor.execute(
            chain=spec,
            eligible=eligible,
            request=RequestSpec.model_validate({"messages": [{"role": "user", "content": "x"}]}),
            call=script,
            board=board,
            now=lambda: T0,
            timeout_seconds=0.05,  # cuts "hang" steps: the task's own deadline
            task_key="uid",
        )

    result = asyncio.run(asyncio.wait_for(run(), timeout=30))
    assert set(script.called) <= set(eligible)
    called_attempts = [a for a in result.attempts if a.outcome != AttemptOutcome.SKIPPED]
    assert [a.provider for a in called_attempts] == script.called or (
        result.failure_reason == "DeadlineExceeded"
    )
    if result.succeeded:
        assert result.completion is not None
        assert result.provider in eligible
        assert result.attempts[-1].outcome == AttemptOutcome.SUCCEEDED
        assert result.attempts[-1].provider == result.provider
        assert not result.failure_reason
    else:
        assert result.completion is None
        assert CAMEL.match(result.failure_reason), result.failure_reason
        assert result.failure_message
        assert all(a.outcome != AttemptOutcome.SUCCEEDED for a in result.attempts)
    # Per-provider health stays within bounds whatever happened.
    for health in board.all():
        assert health.consecutive_failures >= 0
        if health.cooldown_until is not None:
            assert health.cooldown_until <= T0 + max(60, spec.health.cooldown.max_seconds) + 1e-6
