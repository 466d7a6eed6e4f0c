"""We test these aspects: DESIGN.md's "Executing a chain", one test per rule.

* skipping CoolingDown and Excluded providers, except the terminus (always attempted);
* transient errors retried ``transientRetries`` times, counted, benching at the
  threshold and advancing at once; 429 with Retry-After;
* model-not-found and capability mismatches advancing without penalty;
* permanent errors failing at once unless ``advanceOnPermanentError``;
* success resetting the count and the cooldown level; exempt providers never benched;
* the task's own deadline never counting against a provider;
* an incomplete reply never reported as success;
* one error joining every reason when all fail;
* PrimaryOnly and RoundRobin; observer hooks; cost from usage; jobs idempotency keys.
"""

from __future__ import annotations

import asyncio

import pytest

from chainop.core import chain as executor
from chainop.core import health as health_rules
from chainop.core.calls import Completion
from chainop.core.chain import HealthBoard, Resume
from chainop.core.errors import (
    IncompleteReplyError,
    ModelNotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from chainop.core.health import ProviderHealth
from chainop.core.models import Attempt, ProviderState
from tests.unit.support import (
    Clock,
    RecordingObserver,
    ScriptedCall,
    chain,
    names,
    ok,
    provider,
    request,
)

THREE = chain(
    provider("a", "Sovereign"),
    provider("b", "Private"),
    provider("c", "Standard"),
    health={
        "failureThreshold": 2,
        "transientRetries": 1,
        "cooldown": {"initialSeconds": 5, "maxSeconds": 40},
    },
)


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


async def test_fallback_tries_providers_head_to_tail():
    call = ScriptedCall({"a": [TransientError("HTTP 500")], "b": [TransientError("HTTP 502")]})
    result, _ = await run(THREE, call)
    assert result.succeeded
    assert result.provider == "c"
    assert call.called() == ["a", "a", "b", "b", "c"]
    assert result.was_terminus
    assert result.attempt == 5


async def test_skip_cooling_down_provider():
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="a", cooldown_until=clock() + 10, benchings=1))
    call = ScriptedCall()
    result, _ = await run(THREE, call, board=board, clock=clock)
    assert call.called() == ["b"]
    assert names(result.attempts) == [("a", "Skipped"), ("b", "Succeeded")]
    assert "cooling down until" in result.attempts[0].error


async def test_skip_excluded_provider():
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="a", unhealthy=True, excluded_since=1.0))
    call = ScriptedCall()
    await run(THREE, call, board=board)
    assert call.called() == ["b"]


async def test_terminus_is_always_attempted_even_when_benched():
    clock = Clock()
    board = HealthBoard(THREE)
    for name in ("a", "b", "c"):
        board.set(ProviderHealth(name=name, cooldown_until=clock() + 100, benchings=1))
    call = ScriptedCall()
    result, _ = await run(THREE, call, board=board, clock=clock)
    assert call.called() == ["c"]
    assert result.succeeded
    assert result.was_terminus


async def test_terminus_is_the_last_eligible_provider():
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="b", cooldown_until=clock() + 100, benchings=1))
    call = ScriptedCall({"a": [TransientError("HTTP 500")]})
    # The routing decision left only a and b eligible: b is the terminus.
    result, _ = await run(THREE, call, board=board, clock=clock, eligible=["a", "b"])
    assert call.called() == ["a", "a", "b"]
    assert result.provider == "b"
    assert result.was_terminus


async def test_transient_error_is_retried_transient_retries_times():
    spec = chain(
        provider("a"), provider("b"), health={"transientRetries": 3, "failureThreshold": 10}
    )
    call = ScriptedCall({"a": [TransientError("HTTP 503")]})
    result, board = await run(spec, call)
    assert call.called() == ["a", "a", "a", "a", "b"]
    assert board.get("a").consecutive_failures == 4
    assert result.provider == "b"


async def test_transient_retry_then_success_on_the_same_provider():
    call = ScriptedCall({"a": [TransientError("connection reset"), ok("second time")]})
    result, board = await run(THREE, call)
    assert result.provider == "a"
    assert result.completion.text == "second time"
    assert board.get("a").consecutive_failures == 0


async def test_every_failed_attempt_counts_and_threshold_benches_and_advances_at_once():
    spec = chain(
        provider("a"),
        provider("b"),
        health={
            "failureThreshold": 2,
            "transientRetries": 5,
            "cooldown": {"initialSeconds": 5, "maxSeconds": 300},
        },
    )
    clock = Clock()
    observer = RecordingObserver()
    call = ScriptedCall({"a": [TransientError("HTTP 500")]})
    result, board = await run(spec, call, clock=clock, observer=observer)
    # 5 retries were allowed, but the second failure reached the threshold.
    assert call.called() == ["a", "a", "b"]
    assert board.get("a").cooldown_until == clock() + 5
    assert health_rules.state_of(board.get("a"), now=clock()) is ProviderState.COOLING_DOWN
    assert observer.kinds("benched") == [("benched", "a", "5")]
    assert result.provider == "b"


@pytest.mark.parametrize(
    ("benchings_before", "expected_seconds"),
    [(0, 5), (1, 10), (2, 20), (3, 40), (4, 40), (10, 40)],
)
async def test_benching_is_exponential_and_capped(benchings_before, expected_seconds):
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="a", consecutive_failures=1, benchings=benchings_before))
    call = ScriptedCall({"a": [TransientError("HTTP 500")]})
    await run(THREE, call, board=board, clock=clock)
    assert board.get("a").cooldown_until == clock() + expected_seconds


async def test_http_429_with_retry_after_benches_at_least_that_long():
    clock = Clock()
    call = ScriptedCall({"a": [RateLimitedError("HTTP 429", retry_after=30)]})
    result, board = await run(THREE, call, clock=clock)
    # Benched on the first 429 (no retry on the same provider), for 30 s not 5 s.
    assert call.called() == ["a", "b"]
    assert board.get("a").cooldown_until == clock() + 30
    assert names(result.attempts)[0] == ("a", "RateLimited")


async def test_http_429_without_retry_after_is_an_ordinary_transient_error():
    call = ScriptedCall({"a": [RateLimitedError("HTTP 429", retry_after=None), ok()]})
    result, _ = await run(THREE, call)
    assert call.called() == ["a", "a"]
    assert result.provider == "a"


async def test_model_not_found_advances_without_penalty():
    call = ScriptedCall({"a": [ModelNotFoundError("HTTP 404: model 'x' not found")]})
    result, board = await run(THREE, call)
    assert call.called() == ["a", "b"]
    assert board.get("a") == ProviderHealth(name="a")
    assert names(result.attempts)[0] == ("a", "ModelNotFound")


@pytest.mark.parametrize(
    ("capabilities", "req_extra", "why"),
    [
        (
            {"vision": False},
            {"messages": [{"content": "see", "images": ["http://i/x.png"]}]},
            "vision",
        ),
        ({"tools": False}, {"tools": [{"name": "lookup"}]}, "tools"),
        ({"contextWindow": 100}, {"maxTokens": 200}, "contextWindow"),
    ],
)
async def test_capability_mismatch_advances_without_penalty(capabilities, req_extra, why):
    spec = chain(provider("a", capabilities=capabilities), provider("b"))
    call = ScriptedCall()
    result, board = await run(spec, call, req=request(**req_extra))
    assert call.called() == ["b"]  # a was never called
    assert names(result.attempts)[0] == ("a", "Unsupported")
    assert why in result.attempts[0].error
    assert board.get("a") == ProviderHealth(name="a")


async def test_undeclared_capabilities_are_not_checked():
    call = ScriptedCall()
    result, _ = await run(THREE, call, req=request(tools=[{"name": "t"}], maxTokens=10**6))
    assert result.provider == "a"


@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_permanent_error_fails_the_task_at_once(status):
    call = ScriptedCall({"a": [PermanentError(f"HTTP {status}", status_code=status)]})
    result, board = await run(THREE, call)
    assert not result.succeeded
    assert call.called() == ["a"]
    assert result.failure_reason == "PermanentError"
    assert f"HTTP {status}" in result.failure_message
    assert board.get("a").consecutive_failures == 0


async def test_permanent_error_advances_with_advance_on_permanent_error():
    spec = chain(provider("a"), provider("b"), advanceOnPermanentError=True)
    call = ScriptedCall({"a": [PermanentError("HTTP 401")]})
    result, _ = await run(spec, call)
    assert call.called() == ["a", "b"]
    assert result.provider == "b"


async def test_success_resets_failure_count_and_cooldown_level():
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(
        ProviderHealth(name="c", consecutive_failures=7, benchings=3, cooldown_until=clock() + 50)
    )
    call = ScriptedCall()
    await run(THREE, call, board=board, clock=clock, eligible=["c"])
    assert board.get("c") == ProviderHealth(name="c")


async def test_new_benching_never_shortens_a_running_one():
    clock = Clock()
    board = HealthBoard(THREE)
    # c (the terminus) is benched for 1000 s by a Retry-After; it is tried and fails again.
    board.set(
        ProviderHealth(name="c", consecutive_failures=2, benchings=1, cooldown_until=clock() + 1000)
    )
    call = ScriptedCall({"c": [TransientError("HTTP 500")]})
    await run(THREE, call, board=board, clock=clock, eligible=["c"])
    assert board.get("c").cooldown_until == clock() + 1000
    assert board.get("c").benchings == 1


async def test_later_retry_after_extends_a_running_benching():
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="c", benchings=1, cooldown_until=clock() + 10))
    call = ScriptedCall({"c": [RateLimitedError("HTTP 429", retry_after=30)]})
    await run(THREE, call, board=board, clock=clock, eligible=["c"])
    assert board.get("c").cooldown_until == clock() + 30


async def test_failures_in_flight_when_benched_do_not_escalate_the_cooldown():
    spec = chain(
        provider("a"),
        provider("b"),
        health={"failureThreshold": 1, "transientRetries": 0, "cooldown": {"initialSeconds": 5}},
    )
    clock = Clock()
    board = HealthBoard(spec)
    gate = asyncio.Event()

    class Burst(ScriptedCall):
        async def __call__(self, provider_spec, req, context):
            if provider_spec.name == "a":
                await gate.wait()  # 16 requests reach a before any of them fails
                raise TransientError("HTTP 500")
            return ok()

    burst = [asyncio.create_task(run(spec, Burst(), board=board, clock=clock)) for _ in range(16)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*burst)
    assert all(result.provider == "b" for result, _ in results)
    assert board.get("a").benchings == 1  # one benching, not sixteen
    assert board.get("a").cooldown_until == clock() + 5


async def test_exempt_provider_is_never_benched():
    spec = chain(
        provider("a", exemptFromCooldown=True),
        provider("b"),
        health={"failureThreshold": 1, "transientRetries": 0},
    )
    clock = Clock()
    board = HealthBoard(spec)
    for _ in range(5):
        await run(spec, ScriptedCall({"a": [TransientError("HTTP 500")]}), board=board, clock=clock)
    assert board.get("a").cooldown_until is None
    assert board.get("a").consecutive_failures == 5
    assert health_rules.state_of(board.get("a"), now=clock()) is ProviderState.DEGRADED


async def test_task_deadline_never_counts_against_the_provider():
    call = ScriptedCall(hang={"a"})
    result, board = await run(THREE, call, timeout_seconds=0.01)
    assert not result.succeeded
    assert result.failure_reason == "DeadlineExceeded"
    assert names(result.attempts) == [("a", "DeadlineExceeded")]
    assert board.get("a") == ProviderHealth(name="a")


@pytest.mark.parametrize(
    "error",
    [
        IncompleteReplyError("malformed JSON"),
        IncompleteReplyError("body cut off after 120 bytes"),
        IncompleteReplyError("empty choice list"),
    ],
)
async def test_incomplete_reply_is_transient_and_redone_elsewhere(error):
    spec = chain(provider("a"), provider("b"), health={"transientRetries": 0})
    call = ScriptedCall({"a": [error]})
    result, board = await run(spec, call)
    assert result.provider == "b"
    assert names(result.attempts)[0] == ("a", "IncompleteReply")
    assert board.get("a").consecutive_failures == 1


async def test_all_failed_joins_every_reason():
    clock = Clock()
    board = HealthBoard(THREE)
    board.set(ProviderHealth(name="b", cooldown_until=clock() + 10, benchings=1))
    call = ScriptedCall(
        {
            "a": [ModelNotFoundError("HTTP 404: no model")],
            "c": [TransientError("connection refused")],
        }
    )
    result, _ = await run(THREE, call, board=board, clock=clock)
    assert not result.succeeded
    assert result.failure_reason == "AllProvidersFailed"
    message = result.failure_message
    assert "a: HTTP 404: no model" in message
    assert "b: skipped: cooling down" in message
    assert "c: connection refused" in message


async def test_primary_only_tries_the_head_only():
    spec = chain(
        provider("a"), provider("b"), strategy="PrimaryOnly", health={"transientRetries": 0}
    )
    call = ScriptedCall({"a": [TransientError("HTTP 500")]})
    result, _ = await run(spec, call)
    assert call.called() == ["a"]
    assert not result.succeeded


async def test_primary_only_attempts_a_benched_head():
    spec = chain(provider("a"), provider("b"), strategy="PrimaryOnly")
    clock = Clock()
    board = HealthBoard(spec)
    board.set(ProviderHealth(name="a", cooldown_until=clock() + 60, benchings=1))
    call = ScriptedCall()
    result, _ = await run(spec, call, board=board, clock=clock)
    assert call.called() == ["a"]
    assert result.was_terminus


async def test_round_robin_spreads_tasks_in_turn():
    spec = chain(provider("a"), provider("b"), provider("c"), strategy="RoundRobin")
    call = ScriptedCall()
    served = []
    for rotation in range(6):
        result, _ = await run(spec, call, rotation=rotation)
        served.append(result.provider)
    assert served == ["a", "b", "c", "a", "b", "c"]


async def test_round_robin_falls_back_on_transient_error():
    spec = chain(
        provider("a"),
        provider("b"),
        provider("c"),
        strategy="RoundRobin",
        health={"transientRetries": 0},
    )
    call = ScriptedCall({"b": [TransientError("HTTP 500")]})
    result, _ = await run(spec, call, rotation=1)
    assert call.called() == ["b", "c"]
    assert result.provider == "c"


async def test_observer_sees_failover_benching_and_spillover():
    observer = RecordingObserver()
    spec = chain(
        provider("onprem", "Sovereign"),
        provider("cloud", "Standard"),
        health={"failureThreshold": 1, "transientRetries": 0},
    )
    call = ScriptedCall({"onprem": [TransientError("HTTP 503")]})
    await run(spec, call, observer=observer)
    assert observer.kinds("failover") == [("failover", "onprem", "cloud")]
    assert observer.kinds("spillover") == [("spillover", "onprem", "cloud")]
    assert observer.kinds("benched") == [("benched", "onprem", "5")]
    assert [e[2] for e in observer.kinds("attempt")] == ["TransientError", "Succeeded"]


async def test_cost_comes_from_usage_and_prices():
    spec = chain(
        provider("a", cost={"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.60})
    )
    call = ScriptedCall({"a": [Completion(text="x", input_tokens=120, output_tokens=48)]})
    result, _ = await run(spec, call)
    assert result.cost_usd == pytest.approx((120 * 0.15 + 48 * 0.60) / 1e6)


async def test_cost_reported_by_the_provider_wins():
    spec = chain(provider("a", cost={"inputPerMillionTokens": 1.0}))
    call = ScriptedCall({"a": [Completion(text="x", input_tokens=1000, cost_usd=0.5)]})
    result, _ = await run(spec, call)
    assert result.cost_usd == 0.5


async def test_no_eligible_provider_fails_at_once():
    call = ScriptedCall()
    result, _ = await run(THREE, call, eligible=[])
    assert not result.succeeded
    assert result.failure_reason == "NoEligibleProvider"
    assert call.called() == []


async def test_idempotency_key_derives_from_task_and_attempt():
    call = ScriptedCall({"a": [TransientError("HTTP 500"), ok()]})
    await run(THREE, call, task_key="uid-1")
    assert [ctx.idempotency_key for _, ctx in call.calls] == ["uid-1-a-1", "uid-1-a-2"]


async def test_job_id_is_reported_before_waiting():
    seen = []

    async def on_job(provider_name, job_id, key, attempt):
        seen.append((provider_name, job_id, key, attempt))

    class JobsCall(ScriptedCall):
        async def __call__(self, provider_spec, req, context):
            await context.on_job_submitted("job-7")
            assert seen == [("a", "job-7", "t-a-1", 1)]  # persisted before any waiting
            return ok(job_id="job-7")

    result, _ = await run(THREE, JobsCall(), task_key="t", on_job_submitted=on_job)
    assert result.attempts[-1].job_id == "job-7"


async def test_resume_polls_the_known_job_with_the_same_key():
    earlier = (Attempt(provider="a", outcome="TransientError", error="HTTP 500"),)
    call = ScriptedCall()
    result, _ = await run(
        THREE, call, task_key="t", resume=Resume(attempts=earlier, provider="b", job_id="job-9")
    )
    assert call.called() == ["b"]
    context = call.calls[0][1]
    assert context.resume_job_id == "job-9"
    assert context.idempotency_key == "t-b-1"
    assert names(result.attempts) == [("a", "TransientError"), ("b", "Succeeded")]
    assert result.attempt == 2


async def test_failures_during_an_ordered_restart_cost_no_penalty():
    board = HealthBoard(THREE)
    board.restarting.add("a")
    call = ScriptedCall({"a": [TransientError("connection refused")]})
    await run(THREE, call, board=board)
    assert board.get("a").consecutive_failures == 0
    assert board.get("a").cooldown_until is None


async def test_after_a_benching_one_trial_request_at_a_time():
    clock = Clock()
    board = HealthBoard(THREE)
    # a was benched once; its cooldown has run out: half-open.
    board.set(ProviderHealth(name="a", consecutive_failures=2, benchings=1, cooldown_until=None))
    gate = asyncio.Event()
    called = []

    class Slow(ScriptedCall):
        async def __call__(self, provider_spec, req, context):
            called.append(provider_spec.name)
            if provider_spec.name == "a":
                await gate.wait()
            return ok(f"from {provider_spec.name}")

    trial = asyncio.create_task(run(THREE, Slow(), board=board, clock=clock))
    await asyncio.sleep(0.01)
    second, _ = await run(THREE, Slow(), board=board, clock=clock)
    assert names(second.attempts)[0] == ("a", "Skipped")
    assert "half-open" in second.attempts[0].error
    assert second.provider == "b"
    gate.set()
    first, _ = await trial
    assert first.provider == "a"
    assert board.get("a").benchings == 0  # the trial succeeded: fully healthy again
    assert board.trials == set()


async def test_no_retry_on_a_provider_benched_meanwhile_by_another_task():
    spec = chain(
        provider("a"),
        provider("b"),
        health={"failureThreshold": 2, "transientRetries": 3, "cooldown": {"initialSeconds": 5}},
    )
    clock = Clock()
    board = HealthBoard(spec)
    gate = asyncio.Event()
    calls = []

    class Burst(ScriptedCall):
        async def __call__(self, provider_spec, req, context):
            calls.append(provider_spec.name)
            if provider_spec.name == "a":
                await gate.wait()
                raise TransientError("HTTP 500")
            return ok()

    tasks = [asyncio.create_task(run(spec, Burst(), board=board, clock=clock)) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    # 4 in-flight calls fail; the first is retried at once (a is not benched yet), the
    # second failure benches a, and from then on nobody retries it: 5 calls, not 4 + 3x3.
    assert calls.count("a") == 5
    assert calls.count("b") == 4
