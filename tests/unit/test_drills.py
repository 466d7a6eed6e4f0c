"""We test these aspects: failover drills' pure logic (chainop.core.drills).

* schedule: the first drill is due at once, the next ``intervalMinutes`` after the last
  one started, an operator restart (state = lastDrill.time only) neither repeats nor
  skips one, a long outage gives one drill not a burst, clock skew never stops drills;
  as properties over random tick sequences (injected clock);
* "paid": not Sovereign and priced or keyed;
* eligibility: the head under each strategy, paid hops only with allowPaid, the reason
  when no hop is left (single provider, only paid hops, PrimaryOnly, empty order);
* injection through the real executor: the forced head is never called and never
  penalised (no failure, no benching, no hook), the next hop answers, only one real hop
  is ever called, a real failure of that hop counts against it;
* the verdict: path, pass, the reasons of each failure;
* admission warns at ``kubectl apply`` about drills that can never pass.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from chainop.core import admission, drills
from chainop.core import chain as executor
from chainop.core.chain import HealthBoard
from chainop.core.endpoints import EndpointPolicy
from chainop.core.errors import TransientError
from chainop.core.health import ProviderHealth
from chainop.core.models import Attempt, AttemptOutcome
from tests.unit.support import T0, Clock, RecordingObserver, ScriptedCall, chain, provider

HOUR = 3600.0
PAID = {"cost": {"inputPerMillionTokens": 0.15, "outputPerMillionTokens": 0.6}}
KEYED = {"apiKeySecretRef": {"name": "k", "key": "apiKey"}}


# --------------------------------------------------------------------------- schedule


def test_first_drill_is_due_at_once():
    assert drills.is_due(last=None, interval_minutes=60, now=T0)


def test_next_drill_is_due_interval_after_the_last():
    assert not drills.is_due(last=T0, interval_minutes=60, now=T0 + HOUR - 1)
    assert drills.is_due(last=T0, interval_minutes=60, now=T0 + HOUR)
    assert drills.next_due(last=T0, interval_minutes=60, now=T0 + 10) == T0 + HOUR


def test_restart_neither_repeats_nor_skips_a_drill():
    # A new operator process knows only status.lastDrill.time: same answer as before.
    last = T0
    for restart_at in (T0 + 1, T0 + HOUR / 2, T0 + HOUR - 0.001):
        assert not drills.is_due(last=last, interval_minutes=60, now=restart_at)
    assert drills.is_due(last=last, interval_minutes=60, now=T0 + HOUR)


def test_long_outage_gives_one_drill_not_a_burst():
    now = T0 + 5 * HOUR  # operator down for five intervals
    assert drills.is_due(last=T0, interval_minutes=60, now=now)
    # That drill starts at ``now``: the next one is a whole interval later.
    assert not drills.is_due(last=now, interval_minutes=60, now=now + 1)


def test_clock_skew_postpones_by_at_most_one_interval():
    future = T0 + 100 * HOUR
    assert drills.next_due(last=future, interval_minutes=60, now=T0) == T0 + HOUR


@settings(max_examples=200, deadline=None)
@given(
    last=st.one_of(st.none(), st.floats(T0 - 1e6, T0 + 1e6)),
    minutes=st.integers(1, 10080),
    now=st.floats(T0 - 1e6, T0 + 1e6),
)
def test_next_due_is_never_more_than_an_interval_away(last, minutes, now):
    due = drills.next_due(last=last, interval_minutes=minutes, now=now)
    assert due <= now + minutes * 60
    if last is not None and last <= now:
        assert due == last + minutes * 60


@settings(max_examples=200, deadline=None)
@given(
    minutes=st.integers(1, 120),
    gaps=st.lists(st.floats(0.1, 900.0), min_size=1, max_size=200),
    restarts=st.sets(st.integers(0, 199)),
)
def test_simulated_ticks_keep_drills_an_interval_apart(minutes, gaps, restarts):
    """Ticks at random gaps, with "restarts" that keep only lastDrill.time: consecutive
    drills are at least an interval apart and never further than interval + one gap."""
    clock = Clock()
    last: float | None = None
    runs: list[float] = []
    for index, gap in enumerate(gaps):
        clock.advance(gap)
        if index in restarts:
            last = runs[-1] if runs else None  # all a new process knows (from status)
        if drills.is_due(last=last, interval_minutes=minutes, now=clock()):
            runs.append(clock())
            last = clock()
    interval = minutes * 60
    assert runs
    assert runs[0] == T0 + gaps[0]
    for earlier, later in itertools.pairwise(runs):
        assert later - earlier >= interval
        assert later - earlier <= interval + max(gaps)


# --------------------------------------------------------------------------- paid


def test_paid_means_not_sovereign_and_priced_or_keyed():
    spec = chain(
        provider("own", "Sovereign", **PAID, **KEYED),
        provider("priced", "Standard", **PAID),
        provider("keyed", "Private", **KEYED),
        provider("gateway", "Private"),
    )
    paid = {p.name: drills.is_paid(p) for p in spec.providers}
    assert paid == {"own": False, "priced": True, "keyed": True, "gateway": False}


# --------------------------------------------------------------------------- plan


def test_plan_fails_the_head_and_drills_the_next_hop():
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"))
    drill = drills.plan(spec, ["a", "b"], allow_paid=False)
    assert (drill.head, drill.hops, drill.runnable) == ("a", ("b",), True)
    assert drill.eligible == ["a", "b"]


def test_plan_follows_the_active_order():
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"), provider("c"))
    drill = drills.plan(spec, ["b", "c"], allow_paid=False)  # a is Excluded
    assert (drill.head, drill.hops) == ("b", ("c",))


def test_allow_paid_false_leaves_paid_hops_out():
    spec = chain(provider("a", "Sovereign"), provider("b", **PAID), provider("c", "Sovereign"))
    drill = drills.plan(spec, ["a", "b", "c"], allow_paid=False)
    assert (drill.hops, drill.paid_left_out) == (("c",), ("b",))
    assert drills.plan(spec, ["a", "b", "c"], allow_paid=True).hops == ("b", "c")


def test_only_paid_hops_left_is_a_failure_with_that_reason():
    spec = chain(provider("a", "Sovereign"), provider("b", **KEYED))
    drill = drills.plan(spec, ["a", "b"], allow_paid=False)
    assert not drill.runnable
    assert "paid providers left out (b" in drill.reason
    assert "allowPaid is false" in drill.reason


def test_single_provider_has_no_hop():
    drill = drills.plan(chain(provider("a")), ["a"], allow_paid=True)
    assert not drill.runnable
    assert "only provider" in drill.reason


def test_primary_only_has_no_fallback():
    spec = chain(provider("a"), provider("b"), strategy="PrimaryOnly")
    drill = drills.plan(spec, ["a", "b"], allow_paid=True)
    assert not drill.runnable
    assert "PrimaryOnly" in drill.reason


def test_fallback_only_drills_from_the_second_provider():
    spec = chain(provider("a"), provider("b"), provider("c"), strategy="FallbackOnly")
    drill = drills.plan(spec, ["a", "b", "c"], allow_paid=True)
    assert (drill.head, drill.hops) == ("b", ("c",))


def test_drained_providers_are_out_of_the_drill():
    drain = {"provider": "a", "until": "2030-01-01T00:00:00Z"}
    spec = chain(provider("a"), provider("b"), provider("c"), drains=[drain])
    before = datetime(2029, 1, 1, tzinfo=UTC)
    drill = drills.plan(spec, ["a", "b", "c"], allow_paid=True, now=before)
    assert (drill.head, drill.hops) == ("b", ("c",))  # a's drain is in effect
    after = datetime(2031, 1, 1, tzinfo=UTC)
    assert drills.plan(spec, ["a", "b", "c"], allow_paid=True, now=after).head == "a"
    two = chain(provider("a"), provider("b"), drains=[{"provider": "b"}])
    drill = drills.plan(two, ["a", "b"], allow_paid=True, now=before)
    assert not drill.runnable
    assert drill.reason.endswith("(drained: b)")


def test_empty_active_order_is_a_failure():
    drill = drills.plan(chain(provider("a"), provider("b")), [], allow_paid=True)
    assert not drill.runnable
    assert "active order" in drill.reason


TIERS = st.sampled_from(["Sovereign", "Private", "Standard"])


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(st.tuples(TIERS, st.booleans()), min_size=1, max_size=6),
    keep=st.lists(st.booleans(), min_size=6, max_size=6),
    allow_paid=st.booleans(),
)
def test_plan_invariants(specs, keep, allow_paid):
    providers = [
        provider(f"p{i}", tier, **(PAID if priced else {}))
        for i, (tier, priced) in enumerate(specs)
    ]
    spec = chain(*providers)
    order = [p.name for p, kept in zip(spec.providers, keep, strict=False) if kept]
    drill = drills.plan(spec, order, allow_paid=allow_paid)
    assert drill.head not in drill.hops
    assert list(drill.hops) == [n for n in order if n in drill.hops]  # order kept
    if not allow_paid:
        assert not any(drills.is_paid(spec.provider(n)) for n in drill.hops)
    assert drill.runnable == bool(drill.hops)
    assert set(drill.hops) | set(drill.paid_left_out) | {drill.head} >= set(order)


# --------------------------------------------------------------------------- injection


async def _drill(spec, call, *, board=None):
    board = board or HealthBoard(spec)
    drill = drills.plan(spec, [p.name for p in spec.providers], allow_paid=True)
    observer = RecordingObserver()
    result = await executor.execute(
        chain=spec,
        eligible=drill.eligible,
        request=drills.DRILL_REQUEST,
        call=drills.DrillCall(call, drill.head),
        board=board,
        now=Clock(),
        observer=observer,
    )
    verdict = drills.judge(
        drill,
        result.attempts,
        answered_by=result.provider if result.succeeded else "",
        failure=result.failure_message,
    )
    return verdict, board, observer


FAST = {"failureThreshold": 2, "transientRetries": 1}


async def test_forced_head_is_not_penalised_and_the_next_hop_answers():
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"), health=FAST)
    call = ScriptedCall()
    verdict, board, observer = await _drill(spec, call)
    assert call.called() == ["b"]  # the head was never called
    assert verdict.passed
    assert verdict.path == ("b",)
    head = board.get("a")
    assert (head.consecutive_failures, head.benchings, head.cooldown_until) == (0, 0, None)
    assert observer.kinds("benched") == []


async def test_broken_fallback_fails_the_drill_and_counts_against_it_only():
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"), provider("c"), health=FAST)
    call = ScriptedCall({"b": [TransientError("HTTP 500")]})
    verdict, board, observer = await _drill(spec, call)
    assert not verdict.passed
    assert verdict.path == ("b",)
    assert verdict.reason == "fallback b failed: HTTP 500"
    assert board.get("a").consecutive_failures == 0
    assert board.get("b").benchings == 1  # its own failures, like any call
    assert observer.kinds("benched") == [("benched", "b", "5")]
    # Neither a nor c was really called: the drill stops after its first real hop.
    assert call.called() == ["b", "b"]


async def test_benched_fallback_is_skipped_and_the_next_one_must_answer():
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"), provider("c"), health=FAST)
    board = HealthBoard(spec)
    board.set(ProviderHealth(name="b", cooldown_until=T0 + 999, benchings=1))
    call = ScriptedCall()
    verdict, _, _ = await _drill(spec, call, board=board)
    assert verdict.passed
    assert verdict.path == ("c",)
    assert call.called() == ["c"]


# --------------------------------------------------------------------------- verdict


def _attempt(name: str, outcome: AttemptOutcome, error: str = "") -> Attempt:
    return Attempt(provider=name, outcome=outcome, error=error)


def test_judge_path_lists_each_called_provider_once():
    drill = drills.DrillPlan("a", ("b", "c"))
    attempts = [
        _attempt("a", AttemptOutcome.UNSUPPORTED, drills.FORCED_MESSAGE),
        _attempt("b", AttemptOutcome.TRANSIENT, "HTTP 502"),
        _attempt("b", AttemptOutcome.SUCCEEDED),
    ]
    verdict = drills.judge(drill, attempts, answered_by="b")
    assert verdict == drills.DrillVerdict(True, ("b",), "b answered with a failed on purpose")


def test_judge_nothing_called_names_the_skips():
    drill = drills.DrillPlan("a", ("b",))
    attempts = [
        _attempt("a", AttemptOutcome.UNSUPPORTED, drills.FORCED_MESSAGE),
        _attempt("b", AttemptOutcome.SKIPPED, "excluded"),
    ]
    verdict = drills.judge(drill, attempts, answered_by="")
    assert not verdict.passed
    assert verdict.path == ()
    assert verdict.reason == "no hop after a could be called (b: excluded)"


def test_judge_without_attempts_uses_the_executor_message():
    verdict = drills.judge(drills.DrillPlan("a", ("b",)), [], answered_by="", failure="waiting")
    assert verdict.reason == "no hop after a could be called (waiting)"


# --------------------------------------------------------------------------- admission


def test_admission_warns_about_drills_that_cannot_pass():
    now = datetime(2026, 12, 2, tzinfo=UTC)
    policy = EndpointPolicy.from_entries([])
    paid_only = chain(
        provider("a", "Sovereign"), provider("b", **PAID), drills={"intervalMinutes": 60}
    )
    review = admission.review_chain(paid_only, now=now, addresses={}, policy=policy)
    assert review.allowed
    assert review.warnings == (
        "spec.drills: every drill will fail: no eligible hop after a: paid providers left "
        "out (b; drills.allowPaid is false)",
    )
    allowed = paid_only.model_copy(
        update={"drills": paid_only.drills.model_copy(update={"allow_paid": True})}
    )
    assert admission.review_chain(allowed, now=now, addresses={}, policy=policy).warnings == ()


# ----------------------------------------------------------------------------- gauges


def test_a_drill_ending_after_its_chain_is_gone_leaves_no_gauge_behind():
    """A drill runs in the background for up to two minutes: if its chain is deleted (or
    this replica turns standby) meanwhile, its result must not leave a drill gauge that
    nobody drops (a stale 0 keeps ChainopDrillFailing firing for ever)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from chainop.core.models import DrillStatus
    from chainop.metrics import Metrics
    from chainop.operator.drills import DrillRunner
    from chainop.operator.runtime import ChainRuntime

    metrics = Metrics()
    runtime = SimpleNamespace(
        tick_hooks=[],
        chains={},
        metrics=metrics,
        event=lambda *args, **kwargs: None,
        clock=lambda: 0.0,
        restarts=SimpleNamespace(ledgers={}),
    )
    runner = DrillRunner(runtime)  # type: ignore[arg-type]
    spec = chain(provider("a", "Sovereign"), provider("b", "Sovereign"), drills={})
    gone = ChainRuntime("ns", "gone", "uid-1", spec=spec)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "chainop_drill_last_passed", {"namespace": "ns", "chain": "gone"}
        )

    for active in (True, False):
        failed = DrillStatus(time=datetime.now(tz=UTC), forced="a", passed=False, reason="x")
        runner._record(gone, failed)  # the chain was deleted while its drill ran
        assert gauge() == 0.0
        runner.on_tick(0.0, active)  # active: the chain is not present; or standby
        assert gauge() is None


# ----------------------------------------------------------------------------- budgets


def test_hops_the_budget_leaves_out_are_no_hops_even_with_allow_paid():
    spec = chain(provider("a", "Sovereign"), provider("b", **PAID), provider("c", "Sovereign"))
    drill = drills.plan(spec, ["a", "b", "c"], allow_paid=True, spent={"b"})
    assert (drill.hops, drill.budget_left_out) == (("c",), ("b",))
    alone = drills.plan(
        chain(provider("a", "Sovereign"), provider("b", **PAID)),
        ["a", "b"],
        allow_paid=True,
        spent={"b"},
    )
    assert not alone.runnable
    assert "spend budget leaves out b" in alone.reason


def test_a_drill_with_allow_paid_spends_nothing_the_budget_refuses_tasks():
    """The runner asks the budget keeper (the gate new tasks pass): a spent budget
    (LocalOnly) or a spent provider cap leaves those paid hops out of the drill; with
    onExceeded Fail spent, every paid provider."""
    from types import SimpleNamespace

    from chainop.core import budget
    from chainop.metrics import Metrics
    from chainop.operator.drills import DrillRunner
    from chainop.operator.runtime import ChainRuntime
    from chainop.operator.spend import BudgetKeeper

    now = 1_800_000_000.0
    runtime = SimpleNamespace(tick_hooks=[], chains={}, metrics=Metrics(), clock=lambda: now)
    keeper = BudgetKeeper(runtime)  # type: ignore[arg-type]
    runner = DrillRunner(runtime, keeper)  # type: ignore[arg-type]

    def spent(on_exceeded: str, usd: float, **by_provider: float) -> frozenset[str]:
        spec = chain(
            provider("a", "Sovereign"),
            provider("b", **PAID),
            provider("c", **PAID),
            drills={"allowPaid": True},
            budget={
                "maxUSD": 10,
                "onExceeded": on_exceeded,
                "providers": [{"name": "c", "maxUSD": 1}],
            },
        )
        assert spec.budget is not None
        window = budget.current(None, spec.budget, now=now)
        keeper.known[("ns", "c")] = budget.Spend(
            window="24h",
            window_start=window.window_start,
            window_seconds=window.window_seconds,
            usd=usd,
            by_provider=by_provider,
        )
        return runner.spent(ChainRuntime("ns", "c", "uid", spec=spec))

    assert spent("LocalOnly", 0.5, b=0.5) == frozenset()
    assert spent("LocalOnly", 1.0, c=1.0) == {"c"}  # c's own cap
    assert spent("LocalOnly", 10.0, b=10.0) == {"b", "c"}  # the chain's budget
    assert spent("Fail", 10.0, b=10.0) == {"b", "c"}
    assert DrillRunner(runtime).spent(ChainRuntime("ns", "c", "uid")) == frozenset()  # type: ignore[arg-type]
