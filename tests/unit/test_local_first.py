"""Issue 14: spillover on load, hedged attempts, waiting for the earliest recovery,
FallbackOnly and latency-aware order — each rule on its own, with an injected clock, and
the executor that sequences them (no I/O: scripted provider calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainop.core import adaptive, load, routing, rules
from chainop.core import chain as executor
from chainop.core.board import HealthBoard
from chainop.core.calls import CallContext, Completion
from chainop.core.errors import TransientError
from chainop.core.health import ProviderHealth
from chainop.core.latency import MIN_SAMPLES, LatencyStats
from chainop.core.load import LoadReading
from chainop.core.models import (
    AttemptOutcome,
    HedgeSpec,
    LoadSignalSpec,
    ProviderSpec,
    RequestSpec,
)
from chainop.core.routing import RoutingDecision
from tests.unit.support import Clock, ScriptedCall, chain, names, ok, provider, request, task

LOCAL_THEN_CLOUD = chain(
    provider("vllm", "Sovereign", loadSignal={"maxWaiting": 8}),
    provider("cloud", "Standard", cost={"inputPerMillionTokens": 1000}),
    health={"probe": {"intervalSeconds": 5}},
)


def reading(
    waiting: float, *, at: float, running: float = 1, kv: float | None = None
) -> LoadReading:
    return LoadReading(waiting=waiting, running=running, kv_cache_usage=kv, observed_at=at)


async def run(spec, call, *, board=None, clock=None, eligible=None, **kw):
    clock = clock or Clock()
    board = board or HealthBoard(spec)
    result = await executor.execute(
        chain=spec,
        eligible=eligible if eligible is not None else [p.name for p in spec.providers],
        request=kw.pop("req", request()),
        call=call,
        board=board,
        now=clock,
        **kw,
    )
    return result, board


# --------------------------------------------------------------------------- load rules


def test_saturation_names_the_figure_and_the_limit():
    spec = LoadSignalSpec(max_waiting=8)
    assert load.saturation(reading(12, at=100), spec, now=101, max_age_seconds=15) == (
        "saturated: 12 waiting ≥ 8"
    )
    assert load.saturation(reading(7, at=100), spec, now=101, max_age_seconds=15) is None


def test_kv_cache_limit_and_limits_switched_off():
    spec = LoadSignalSpec(max_waiting=None, max_kv_cache_usage=0.9)
    why = load.saturation(reading(50, at=0, kv=0.93), spec, now=1, max_age_seconds=15)
    assert why is not None
    assert "KV cache 93% full" in why
    # A server that does not publish KV usage (llama.cpp) is judged by its queue alone.
    assert load.saturation(reading(50, at=0), spec, now=1, max_age_seconds=15) is None
    off = LoadSignalSpec(max_waiting=None, max_kv_cache_usage=None)
    assert load.saturation(reading(1e6, at=0, kv=1.0), off, now=1, max_age_seconds=15) is None


def test_stale_or_missing_reading_is_never_acted_on():
    spec = LoadSignalSpec(max_waiting=1)
    assert load.saturation(reading(99, at=0), spec, now=15.1, max_age_seconds=15) is None
    assert load.saturation(reading(99, at=0), spec, now=15.0, max_age_seconds=15) is not None
    assert load.saturation(None, spec, now=0, max_age_seconds=15) is None
    assert load.saturation(reading(99, at=0), None, now=0, max_age_seconds=15) is None
    # A reading from the future (clock skew beyond a second) is not trusted either.
    assert load.saturation(reading(99, at=10), spec, now=5, max_age_seconds=15) is None


def test_load_status_says_why_or_nothing_when_stale():
    spec = LoadSignalSpec(max_waiting=2)
    status = load.to_status(reading(3, at=0, kv=0.5), spec, now=1, max_age_seconds=15)
    assert (status.waiting, status.running, status.kv_cache_usage) == (3, 1, 0.5)
    assert status.saturated == "saturated: 3 waiting ≥ 2"
    assert load.to_status(reading(3, at=0), spec, now=99, max_age_seconds=15).saturated == ""


@given(
    waiting=st.floats(0, 1e6),
    age=st.floats(15.000001, 1e6),
    interval=st.floats(1, 60),
)
def test_property_a_stale_signal_never_causes_a_skip(waiting, age, interval):
    spec = chain(
        provider("a", "Sovereign", loadSignal={"maxWaiting": 0, "maxKvCacheUsage": 0.01}),
        provider("b"),
        health={"probe": {"intervalSeconds": interval}},
    )
    board = HealthBoard(spec)
    now = 1_000_000.0
    stale_age = load.max_age(interval) + age
    board.set_load("a", reading(waiting, at=now - stale_age, kv=1.0))
    assert rules.spill_for(0, spec.providers, board, request=request(), now=now) is None


# --------------------------------------------------------------------------- spillover


def test_spill_only_when_a_later_provider_is_free():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(12, at=clock()))
    providers = LOCAL_THEN_CLOUD.providers
    skip = rules.spill_for(0, providers, board, request=request(), now=clock())
    assert skip is not None
    assert skip.saturated
    assert skip.reason == "saturated: 12 waiting ≥ 8"
    # The cloud benched: nowhere better to go, so the task queues locally.
    board.set(ProviderHealth(name="cloud", cooldown_until=clock() + 30, benchings=1))
    assert rules.spill_for(0, providers, board, request=request(), now=clock()) is None
    # The terminus has nothing after it: never skipped for load.
    assert rules.spill_for(1, providers, board, request=request(), now=clock()) is None


def test_no_spill_to_a_provider_that_is_saturated_too():
    spec = chain(
        provider("a", "Sovereign", loadSignal={"maxWaiting": 1}),
        provider("b", "Sovereign", loadSignal={"maxWaiting": 1}),
    )
    clock = Clock()
    board = HealthBoard(spec)
    board.set_load("a", reading(5, at=clock()))
    board.set_load("b", reading(5, at=clock()))
    assert rules.spill_for(0, spec.providers, board, request=request(), now=clock()) is None


async def test_saturated_local_spills_allowed_tasks_without_penalty():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(12, at=clock()))
    call = ScriptedCall()
    result, _ = await run(LOCAL_THEN_CLOUD, call, board=board, clock=clock)
    assert call.called() == ["cloud"]
    assert names(result.attempts) == [("vllm", "Skipped"), ("cloud", "Succeeded")]
    assert result.attempts[0].error == "saturated: 12 waiting ≥ 8"
    health = board.get("vllm")
    assert health.consecutive_failures == 0
    assert health.cooldown_until is None
    assert health.benchings == 0
    assert not health.last_error


async def test_local_only_task_still_queues_on_the_saturated_local_provider():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(40, at=clock()))
    decision = routing.decide(LOCAL_THEN_CLOUD, task({"requiresLocal": True}))
    assert decision.providers == ("vllm",)
    call = ScriptedCall()
    result, _ = await run(
        LOCAL_THEN_CLOUD, call, board=board, clock=clock, eligible=decision.providers
    )
    assert call.called() == ["vllm"]
    assert result.provider == "vllm"


async def test_stale_reading_sends_work_to_the_local_provider():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(40, at=clock() - 16))  # 3 intervals of 5 s = 15 s
    call = ScriptedCall()
    await run(LOCAL_THEN_CLOUD, call, board=board, clock=clock)
    assert call.called() == ["vllm"]


# --------------------------------------------------------------------------- FallbackOnly


FALLBACK_ONLY = chain(
    provider("primary", "Sovereign"),
    provider("secondary", "Sovereign"),
    provider("cloud"),
    strategy="FallbackOnly",
    taskDefaults={"allowDelegation": True},
)


async def test_fallback_only_skips_the_head_and_keeps_the_order():
    assert rules.ordered_for_strategy(FALLBACK_ONLY, ["primary", "secondary", "cloud"]) == [
        "secondary",
        "cloud",
    ]
    call = ScriptedCall({"secondary": [TransientError("HTTP 500")]})
    result, _ = await run(FALLBACK_ONLY, call)
    assert "primary" not in call.called()
    assert result.provider == "cloud"


def test_fallback_only_in_the_decision_and_when_nothing_is_left():
    decision = routing.apply_strategy(FALLBACK_ONLY, routing.decide(FALLBACK_ONLY, task()))
    assert decision.providers == ("secondary", "cloud")
    assert "FallbackOnly skips the head (primary)" in decision.reason
    only_head = routing.apply_strategy(
        FALLBACK_ONLY, routing.decide(FALLBACK_ONLY, task({"preferredProvider": "primary"}))
    )
    assert only_head.providers == ("secondary", "cloud")
    lone = chain(provider("solo", "Sovereign"), provider("x"), strategy="FallbackOnly")
    local = routing.apply_strategy(lone, routing.decide(lone, task({"requiresLocal": True})))
    assert local.providers == ()
    assert "nothing else is eligible" in local.reason


async def test_fallback_only_with_nothing_after_the_head_fails_clearly():
    lone = chain(provider("solo", "Sovereign"), provider("x"), strategy="FallbackOnly")
    result, _ = await run(lone, ScriptedCall(), eligible=["solo"])
    assert result.failure_reason == "NoEligibleProvider"
    assert "FallbackOnly skips the chain's head (solo)" in result.failure_message


# --------------------------------------------------------------------------- hedging


class RaceCall:
    """A ProviderCall whose providers answer after given delays (real asyncio sleeps);
    remembers which calls were cancelled."""

    def __init__(self, delays: dict[str, float], errors: dict[str, Exception] | None = None):
        self.delays = delays
        self.errors = errors or {}
        self.called: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        self.called.append(provider.name)
        try:
            await asyncio.sleep(self.delays.get(provider.name, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(provider.name)
            raise
        if provider.name in self.errors:
            raise self.errors[provider.name]
        return ok(f"from {provider.name}")


HEDGED = chain(
    provider("slow", "Sovereign", cost={"inputPerMillionTokens": 1000}),
    provider("fast", "Standard"),
    provider("last", "Standard"),
    taskDefaults={"allowDelegation": True},
)


async def test_hedge_returns_the_fast_answer_and_cancels_the_slow_call():
    call = RaceCall({"slow": 30.0, "fast": 0.0})
    result, board = await run(HEDGED, call, hedge=HedgeSpec(after_millis=20))
    assert result.provider == "fast"
    assert result.succeeded
    assert result.hedged
    assert call.cancelled == ["slow"]
    by_provider = {a.provider: a for a in result.attempts}
    assert by_provider["fast"].hedged
    assert by_provider["fast"].outcome == "Succeeded"
    assert by_provider["slow"].outcome == AttemptOutcome.CANCELLED
    assert by_provider["slow"].error == "cancelled: fast answered first"
    assert not by_provider["slow"].hedged
    # The cancelled call's prompt at the input price (a lower bound), kept apart.
    assert by_provider["slow"].cost_usd == pytest.approx(result.extra_cost_usd)
    assert result.extra_cost_usd > 0
    assert "last" not in call.called
    # Being outrun is not a failure of the slow provider.
    assert board.get("slow").consecutive_failures == 0


async def test_no_hedge_when_the_first_answers_in_time():
    call = RaceCall({"slow": 0.0})
    result, _ = await run(HEDGED, call, hedge=HedgeSpec(after_millis=5_000))
    assert call.called == ["slow"]
    assert not result.hedged


async def test_hedge_never_reaches_beyond_the_decision():
    call = RaceCall({"slow": 30.0})
    task_ = asyncio.ensure_future(
        run(HEDGED, call, eligible=["slow"], hedge=HedgeSpec(after_millis=5), timeout_seconds=0.2)
    )
    result, _ = await task_
    assert call.called == ["slow"]
    assert result.failure_reason == "DeadlineExceeded"


async def test_hedge_never_starts_a_job():
    spec = chain(
        provider("slow", "Sovereign"),
        {**provider("batch", "Standard"), "type": "jobs"},
        taskDefaults={"allowDelegation": True},
    )
    call = RaceCall({"slow": 0.1})
    result, _ = await run(spec, call, hedge=HedgeSpec(after_millis=5))
    assert call.called == ["slow"]
    assert result.provider == "slow"
    assert not result.hedged


async def test_primary_failing_during_a_hedge_leaves_the_hedge_to_answer():
    call = RaceCall({"slow": 0.05, "fast": 0.1}, errors={"slow": TransientError("HTTP 503")})
    spec = chain(
        *HEDGED.model_dump(by_alias=True)["providers"],
        health={"transientRetries": 0},
        taskDefaults={"allowDelegation": True},
    )
    result, _ = await run(spec, call, hedge=HedgeSpec(after_millis=10))
    assert result.provider == "fast"
    assert call.called == ["slow", "fast"]  # no third call while the hedge was in flight


async def test_max_extra_two_hedges():
    call = RaceCall({"slow": 30.0, "fast": 30.0, "last": 0.0})
    result, _ = await run(HEDGED, call, hedge=HedgeSpec(after_millis=10, max_extra=2))
    assert result.provider == "last"
    assert sorted(call.cancelled) == ["fast", "slow"]


def test_hedge_delay_from_percentile_once_enough_is_known():
    spec = HedgeSpec(after_millis=500, after_percentile=95)
    stats = LatencyStats()
    assert rules.hedge_delay(spec, stats) == 0.5
    for ms in range(1, MIN_SAMPLES + 1):
        stats.observe(ms * 10.0)
    assert rules.hedge_delay(spec, stats) == pytest.approx(0.19)
    assert rules.hedge_delay(HedgeSpec(after_percentile=99), LatencyStats()) is None
    assert rules.hedge_delay(None, stats) is None


def test_hedge_spec_needs_a_delay():
    with pytest.raises(ValueError, match="afterMillis, afterPercentile or both"):
        HedgeSpec()


# --------------------------------------------------------------------------- waiting


def benched_board(spec, clock, ends: dict[str, float]) -> HealthBoard:
    board = HealthBoard(spec)
    for name, seconds in ends.items():
        board.set(ProviderHealth(name=name, cooldown_until=clock() + seconds, benchings=1))
    return board


async def test_all_benched_waits_for_the_earliest_recovery():
    clock = Clock()
    board = benched_board(HEDGED, clock, {"slow": 30, "fast": 10, "last": 20})
    call = ScriptedCall()
    result, _ = await run(HEDGED, call, board=board, clock=clock, timeout_seconds=60)
    assert call.called() == []
    assert result.failure_reason == "WaitingForProvider"
    assert result.wait == rules.Wait(provider="fast", until=clock() + 10)
    assert "waiting for fast until" in result.failure_message


async def test_no_time_to_wait_attempts_the_terminus_as_before():
    clock = Clock()
    board = benched_board(HEDGED, clock, {"slow": 30, "fast": 10, "last": 20})
    call = ScriptedCall({"last": [TransientError("HTTP 503")]})
    result, _ = await run(HEDGED, call, board=board, clock=clock, timeout_seconds=5)
    assert result.wait is None
    assert call.called() == ["last", "last"]
    assert result.failure_reason == "AllProvidersFailed"
    for name in ("slow", "fast", "last"):
        assert name in result.failure_message


def test_wait_rules():
    clock = Clock()
    providers = HEDGED.providers
    board = benched_board(HEDGED, clock, {"slow": 30, "fast": 10})
    assert rules.plan_wait(providers, board, now=clock(), deadline=clock() + 60) is None
    board = benched_board(HEDGED, clock, {"slow": 30, "fast": 10, "last": 20})
    assert rules.plan_wait(providers, board, now=clock(), deadline=None) is None
    assert rules.plan_wait(providers, board, now=clock(), deadline=clock() + 10) is None
    board.set(ProviderHealth(name="fast", excluded_since=1.0, unhealthy=True))
    wait = rules.plan_wait(providers, board, now=clock(), deadline=clock() + 60)
    assert wait == rules.Wait(provider="last", until=clock() + 20)


@given(
    ends=st.lists(st.floats(0.001, 1000), min_size=1, max_size=5),
    timeout=st.floats(0.001, 2000),
)
def test_property_waiting_never_outlives_the_deadline(ends, timeout):
    spec = chain(*(provider(f"p{i}") for i in range(len(ends))))
    clock = Clock()
    board = benched_board(spec, clock, {f"p{i}": e for i, e in enumerate(ends)})
    wait = rules.plan_wait(spec.providers, board, now=clock(), deadline=clock() + timeout)
    if wait is not None:
        assert wait.until < clock() + timeout
        assert wait.until == clock() + min(ends)
    else:
        assert min(ends) >= timeout


# --------------------------------------------------------------------------- adaptive order


ADAPTIVE = chain(
    provider("pool-a", "Sovereign"),
    provider("pool-b", "Sovereign"),
    provider("private", "Private"),
    provider("cloud-a"),
    provider("cloud-b"),
    routing={"adaptive": "LatencyWithinTier"},
    taskDefaults={"allowDelegation": True},
)


def stats(ms: float, tokens: int = 0) -> LatencyStats:
    s = LatencyStats()
    s.observe(ms, tokens)
    return s


def test_adaptive_reorders_neighbours_of_one_tier_and_says_why():
    latency = {"pool-a": stats(900, 30), "pool-b": stats(300, 30), "cloud-a": stats(100)}
    decision = adaptive.adapt(ADAPTIVE, routing.decide(ADAPTIVE, task()), latency)
    assert decision.providers == ("pool-b", "pool-a", "private", "cloud-b", "cloud-a")
    assert "adaptive LatencyWithinTier reordered" in decision.reason
    assert "pool-b (10.0 ms/token)" in decision.reason
    assert "cloud-b (not measured yet)" in decision.reason


def test_adaptive_off_or_preferred_provider_keeps_the_order():
    latency = {"pool-a": stats(900), "pool-b": stats(300)}
    off = ADAPTIVE.model_validate(
        {**ADAPTIVE.model_dump(by_alias=True), "routing": {"adaptive": "Off"}}
    )
    same = routing.decide(off, task())
    assert adaptive.adapt(off, same, latency) is same
    named = routing.decide(ADAPTIVE, task({"preferredProvider": "pool-a"}))
    assert adaptive.adapt(ADAPTIVE, named, latency).providers[0] == "pool-a"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    tiers=st.lists(st.sampled_from(["Sovereign", "Private", "Standard"]), min_size=1, max_size=8),
    scores=st.lists(st.one_of(st.none(), st.floats(0, 1e5)), min_size=8, max_size=8),
)
def test_property_adaptive_never_moves_a_provider_across_tiers(tiers, scores):
    names_ = [f"p{i}" for i in range(len(tiers))]
    tier_of = dict(zip(names_, tiers, strict=True))
    latency = {n: stats(s) for n, s in zip(names_, scores, strict=False) if s is not None}
    new = adaptive.reorder(names_, tier_of, latency)
    assert sorted(new) == sorted(names_)
    assert [tier_of[n] for n in new] == tiers


def test_latency_stats_ewma_and_percentile():
    s = LatencyStats()
    s.observe(100, 10)
    s.observe(200, 10)
    assert s.ewma_ms == pytest.approx(130)
    assert s.ewma_ms_per_token == pytest.approx(13)
    assert s.score == pytest.approx(13)
    assert s.unit == "ms/token"
    s.observe(float("nan"))
    assert len(s.window) == 2
    assert s.percentile(50) is None


async def test_successes_feed_the_latency_board():
    board = HealthBoard(HEDGED)
    await run(HEDGED, ScriptedCall(), board=board)
    assert board.latency["slow"].ewma_ms is not None


# --------------------------------------------------------------------------- properties


provider_states = st.sampled_from(["fine", "benched", "excluded", "saturated", "stale"])
behaviours = st.sampled_from(["ok", "slow", "error"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    states=st.lists(provider_states, min_size=4, max_size=4),
    behaviour=st.lists(behaviours, min_size=4, max_size=4),
    subset=st.lists(st.booleans(), min_size=4, max_size=4),
    hedge=st.one_of(st.none(), st.integers(1, 5)),
)
def test_property_hedge_or_spillover_never_leaves_the_decision(states, behaviour, subset, hedge):
    tiers = ["Sovereign", "Sovereign", "Private", "Standard"]
    spec = chain(
        *(provider(f"p{i}", tiers[i], loadSignal={"maxWaiting": 1}) for i in range(4)),
        health={"probe": {"intervalSeconds": 1}, "transientRetries": 0},
    )
    eligible = [f"p{i}" for i in range(4) if subset[i]] or ["p0"]
    clock = Clock()
    board = HealthBoard(spec)
    for i, state in enumerate(states):
        name = f"p{i}"
        if state == "benched":
            board.set(ProviderHealth(name=name, cooldown_until=clock() + 50, benchings=1))
        elif state == "excluded":
            board.set(ProviderHealth(name=name, excluded_since=1.0, unhealthy=True))
        elif state == "saturated":
            board.set_load(name, reading(9, at=clock()))
        elif state == "stale":
            board.set_load(name, reading(9, at=clock() - 10))
    delays = {f"p{i}": (0.02 if b == "slow" else 0.0) for i, b in enumerate(behaviour)}
    errors: dict[str, Any] = {
        f"p{i}": TransientError("HTTP 503") for i, b in enumerate(behaviour) if b == "error"
    }
    call = RaceCall(delays, errors)
    spec_hedge = None if hedge is None else HedgeSpec(after_millis=hedge)

    async def go():
        return await run(
            spec,
            call,
            board=board,
            clock=clock,
            eligible=eligible,
            hedge=spec_hedge,
            timeout_seconds=5,
        )

    result, _ = asyncio.run(go())
    assert set(call.called) <= set(eligible)
    assert {a.provider for a in result.attempts} <= set(eligible)


def test_decision_shape_is_unchanged_by_adapt_when_single():
    one = RoutingDecision(providers=("a",), reason="r", rule=5, local_only=False)
    assert adaptive.adapt(ADAPTIVE, one, {}) is one


# --------------------------------------------------------------------------- between readings


def test_calls_since_the_reading_beyond_the_free_slots_count_as_queued():
    spec = chain(
        provider("vllm", "Sovereign", loadSignal={"maxWaiting": 8, "slots": 2}),
        provider("cloud"),
    )
    clock = Clock()
    board = HealthBoard(spec)
    board.call_started("vllm")  # in flight before the read: already in the reading
    board.set_load("vllm", reading(0, at=clock(), running=0))
    for _ in range(10):
        board.call_started("vllm")
    why = rules.saturation_of(spec.providers[0], board, now=clock())
    assert why == "saturated: 8 waiting ≥ 8 (0 read, +10 since)"
    for _ in range(3):
        board.call_ended("vllm")
    assert rules.saturation_of(spec.providers[0], board, now=clock()) is None
    # Calls that ended since the read shorten the queue, never below zero.
    for _ in range(9):
        board.call_ended("vllm")
    estimate = board.load_now("vllm")
    assert estimate is not None
    assert estimate.queued == 0


def test_slots_are_learned_from_a_reading_that_shows_a_queue():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(0, at=clock(), running=3))
    for _ in range(5):
        board.call_started("vllm")
    # Slots unknown: new calls are assumed to find one.
    estimate = board.load_now("vllm")
    assert estimate is not None
    assert estimate.queued == 0
    board.set_load("vllm", reading(2, at=clock(), running=4))  # full: 4 slots
    board.set_load("vllm", reading(0, at=clock(), running=2))
    for _ in range(5):
        board.call_started("vllm")
    estimate = board.load_now("vllm")
    assert estimate is not None
    assert estimate.slots == 4
    assert estimate.queued == 3  # 5 sent, 2 free slots
    # Running more than that without a queue: the server grew; forget the size.
    assert load.learned_slots(reading(0, at=0, running=9), 4) is None
    assert load.learned_slots(reading(0, at=0, running=3), 4) == 4


async def test_a_burst_between_two_readings_spills_once_the_estimate_is_full():
    spec = chain(
        provider("vllm", "Sovereign", loadSignal={"maxWaiting": 3, "slots": 1}),
        provider("cloud"),
        health={"probe": {"intervalSeconds": 5}},
    )
    clock = Clock()
    board = HealthBoard(spec)
    board.set_load("vllm", reading(0, at=clock(), running=0))
    call = RaceCall({"vllm": 0.05})
    results = await asyncio.gather(*(run(spec, call, board=board, clock=clock) for _ in range(8)))
    providers = [result.provider for result, _ in results]
    # One runs, three queue (the limit), the other four spill.
    assert providers.count("vllm") == 4
    assert providers.count("cloud") == 4
    assert board.inflight == {"vllm": 0, "cloud": 0}


# --------------------------------------------------------------------------- review findings


async def test_a_hedges_permanent_error_does_not_fail_a_primary_that_answers():
    from chainop.core.errors import AuthError

    call = RaceCall({"slow": 0.1, "fast": 0.0}, errors={"fast": AuthError("HTTP 401")})
    result, _ = await run(HEDGED, call, hedge=HedgeSpec(after_millis=10))
    assert result.provider == "slow"
    assert [a.outcome for a in result.attempts] == ["AuthError", "Succeeded"]


async def test_a_hedges_permanent_error_is_the_reason_when_nothing_answers():
    from chainop.core.errors import AuthError

    spec = chain(
        *HEDGED.model_dump(by_alias=True)["providers"],
        health={"transientRetries": 0},
        taskDefaults={"allowDelegation": True},
    )
    call = RaceCall(
        {"slow": 0.1, "fast": 0.0},
        errors={"fast": AuthError("HTTP 401"), "slow": TransientError("HTTP 503")},
    )
    result, _ = await run(spec, call, hedge=HedgeSpec(after_millis=10))
    assert result.failure_reason == "AuthError"
    assert "last" not in call.called  # nothing starts after a failure that ends the walk


async def test_a_jobs_primary_is_never_hedged():
    spec = chain(
        {**provider("batch", "Sovereign"), "type": "jobs"},
        provider("cloud"),
        taskDefaults={"allowDelegation": True},
    )
    call = RaceCall({"batch": 0.1})
    result, _ = await run(spec, call, hedge=HedgeSpec(after_millis=5))
    assert call.called == ["batch"]
    assert not result.hedged


async def test_everything_after_a_saturated_provider_failing_queues_there_after_all():
    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(12, at=clock()))
    call = ScriptedCall({"cloud": [TransientError("HTTP 503")]})
    result, _ = await run(LOCAL_THEN_CLOUD, call, board=board, clock=clock)
    assert call.called() == ["cloud", "cloud", "vllm"]
    assert result.provider == "vllm"
    assert names(result.attempts)[0] == ("vllm", "Skipped")


async def test_a_saturation_skip_is_a_spillover_not_a_failover():
    from tests.unit.support import RecordingObserver

    clock = Clock()
    board = HealthBoard(LOCAL_THEN_CLOUD)
    board.set_load("vllm", reading(12, at=clock()))
    observer = RecordingObserver()
    await run(LOCAL_THEN_CLOUD, ScriptedCall(), board=board, clock=clock, observer=observer)
    assert observer.kinds("failover") == []
    assert observer.kinds("spillover") == [("spillover", "vllm", "cloud")]


async def test_a_resumed_job_is_polled_even_when_its_provider_is_benched_now():
    spec = chain(
        {**provider("batch", "Private"), "type": "jobs"},
        provider("cloud"),
    )
    clock = Clock()
    board = HealthBoard(spec)
    board.set(ProviderHealth(name="batch", cooldown_until=clock() + 60, benchings=1))
    call = ScriptedCall()
    result, _ = await run(
        spec,
        call,
        board=board,
        clock=clock,
        resume=executor.Resume(provider="batch", job_id="job-1"),
    )
    assert call.called() == ["batch"]
    assert call.calls[0][1].resume_job_id == "job-1"
    assert result.provider == "batch"


def test_the_wait_message_is_stable_while_waiting():
    clock = Clock()
    board = benched_board(HEDGED, clock, {"slow": 30, "fast": 10, "last": 20})

    async def once():
        result, _ = await run(HEDGED, ScriptedCall(), board=board, clock=clock, timeout_seconds=60)
        return result.failure_message

    first = asyncio.run(once())
    clock.advance(3)
    assert asyncio.run(once()) == first
