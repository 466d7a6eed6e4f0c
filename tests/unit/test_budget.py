"""We test these aspects: spend budgets (``chainop.core.budget``), with an injected clock.

* the window format: units required, bounds, caps naming real providers;
* windows are fixed and aligned to the epoch; a new window (or a new length) resets;
* a charge is the sum of the task's attempts' costs, by provider;
* crossing 80 % and 100 % is reported once per window, by the write that crossed it;
* restart: the spend rebuilt from status goes on where it left off, and a task charged
  before the restart is not charged again;
* two replicas writing one store with resourceVersion preconditions lose nothing and count
  nothing twice, whatever the interleaving (hypothesis);
* over budget: LocalOnly keeps Sovereign providers with the reason
  ``budget 10.00 USD/24h spent``; Fail fails; a spent provider cap drops that provider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chainop.core import budget, routing
from chainop.core.models import (
    Attempt,
    AttemptOutcome,
    BudgetSpec,
    ProviderChainStatus,
    TaskResult,
    window_seconds,
)
from tests.unit.support import T0, Clock, chain, provider, task

DAY = 86_400
MIDNIGHT = math.floor(T0 / DAY) * DAY


def spec(**extra: object) -> BudgetSpec:
    return BudgetSpec.model_validate({"window": "24h", "maxUSD": 10, **extra})


def charge(uid: str, usd: float, provider_name: str = "openai") -> budget.Charge:
    return budget.Charge(uid=uid, by_provider={provider_name: usd})


MIXED = chain(
    provider("vllm", "Sovereign"),
    provider("openai", "Standard"),
    provider("claude", "Standard"),
    budget={"window": "24h", "maxUSD": 10, "providers": [{"name": "claude", "maxUSD": 1}]},
    taskDefaults={"allowDelegation": True},
)


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", DAY), ("7d", 7 * DAY), ("1h30m", 5400), ("20s", 20)]
)
def test_window_format_takes_units(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds
    assert spec(window=window).seconds == seconds


@pytest.mark.parametrize("window", ["24", "1.5h", "h", "24 h", "-1h", "1w", "5s", "400d"])
def test_window_format_rejects_the_rest(window: str) -> None:
    with pytest.raises(ValidationError, match="window"):
        spec(window=window)


def test_provider_cap_must_name_a_provider_of_the_chain() -> None:
    with pytest.raises(ValidationError, match=r"budget\.providers\[0\]\.name: 'nope'"):
        chain(provider("a"), budget={"maxUSD": 1, "providers": [{"name": "nope", "maxUSD": 1}]})


def test_budget_needs_max_usd_above_zero() -> None:
    with pytest.raises(ValidationError, match="maxUSD"):
        BudgetSpec.model_validate({"maxUSD": 0})


# --------------------------------------------------------------------------- windows


def test_windows_are_aligned_to_the_epoch() -> None:
    clock = Clock(MIDNIGHT + 3_600)
    applied = budget.apply(None, [charge("a", 1.0)], spec(), now=clock())
    assert applied.spend.window_start == MIDNIGHT
    assert applied.spend.window_end == MIDNIGHT + DAY
    clock.advance(DAY - 3_601)  # 23:59:59 the same day: same window
    again = budget.apply(applied.spend, [charge("b", 2.0)], spec(), now=clock())
    assert (again.spend.window_start, again.spend.usd, again.spend.tasks) == (MIDNIGHT, 3.0, 2)


def test_a_new_window_starts_from_zero_but_remembers_charged_tasks() -> None:
    first = budget.apply(None, [charge("a", 9.0)], spec(), now=MIDNIGHT + 10).spend
    nxt = budget.current(first, spec(), now=MIDNIGHT + DAY)
    assert (nxt.window_start, nxt.usd, nxt.tasks, dict(nxt.by_provider)) == (
        MIDNIGHT + DAY,
        0.0,
        0,
        {},
    )
    # The task charged in the old window is not charged again in the new one.
    again = budget.apply(first, [charge("a", 9.0)], spec(), now=MIDNIGHT + DAY + 1)
    assert again.counted == ()
    assert again.spend.usd == 0.0
    assert budget.ratio(first, spec(), now=MIDNIGHT + DAY) == 0.0


def test_a_task_that_finished_before_the_window_is_not_charged_to_it() -> None:
    """An operator restart lists every finished, unmarked task again — also ones that
    finished days ago while the chain had no budget: they belong to closed windows."""
    now = MIDNIGHT + DAY + 60
    old = budget.Charge("old", {"openai": 9.0}, finished_at=MIDNIGHT + 10)
    new = budget.Charge("new", {"openai": 1.0}, finished_at=MIDNIGHT + DAY + 5)
    unknown = budget.Charge("unknown", {"openai": 0.5})  # no completionTime: counted
    applied = budget.apply(None, [old, new, unknown], spec(), now=now)
    assert (applied.spend.usd, applied.spend.tasks) == (1.5, 2)
    assert applied.counted == ("new", "unknown")
    assert budget.apply(None, [old], spec(), now=now).spend.usd == 0.0


def test_changing_the_window_length_resets() -> None:
    first = budget.apply(None, [charge("a", 5.0)], spec(), now=MIDNIGHT + 10).spend
    hourly = spec(window="1h")
    assert budget.current(first, hourly, now=MIDNIGHT + 20).usd == 0.0
    assert budget.current(first, hourly, now=MIDNIGHT + 20).window_seconds == 3_600


def test_a_charge_sums_the_attempts_by_provider() -> None:
    attempts = [
        Attempt(provider="vllm", outcome=AttemptOutcome.TRANSIENT),
        Attempt(provider="openai", outcome=AttemptOutcome.CANCELLED, cost_usd=0.001),
        Attempt(provider="claude", outcome=AttemptOutcome.SUCCEEDED, cost_usd=0.01),
    ]
    result = TaskResult(provider="claude", cost_usd=0.01, extra_cost_usd=0.001)
    got = budget.task_charge("uid-1", attempts, result)
    assert dict(got.by_provider) == {"openai": 0.001, "claude": 0.01}
    assert got.usd == pytest.approx(0.011)
    # An older status without per-attempt costs: the result's figures.
    old = budget.task_charge("uid-2", [Attempt(provider="claude", outcome="Succeeded")], result)
    assert dict(old.by_provider) == {"claude": pytest.approx(0.011)}
    assert budget.task_charge("uid-3", [], None).usd == 0.0


# --------------------------------------------------------------------------- crossing


def test_crossing_80_and_100_percent_is_reported_once_per_window() -> None:
    now = MIDNIGHT + 60
    s = spec()
    a = budget.apply(None, [charge("a", 7.9)], s, now=now)
    assert a.crossings == ()
    b = budget.apply(a.spend, [charge("b", 0.2)], s, now=now)
    assert [(c.provider, c.threshold) for c in b.crossings] == [("", 0.8)]
    c = budget.apply(b.spend, [charge("c", 0.5)], s, now=now)
    assert c.crossings == ()
    d = budget.apply(c.spend, [charge("d", 5.0)], s, now=now)
    assert [(x.provider, x.threshold, x.usd) for x in d.crossings] == [("", 1.0, 13.6)]
    assert budget.apply(d.spend, [charge("e", 5.0)], s, now=now).crossings == ()
    # The next window announces again.
    e = budget.apply(d.spend, [charge("f", 11.0)], s, now=now + DAY)
    assert [c.threshold for c in e.crossings] == [0.8, 1.0]


def test_a_provider_cap_crosses_on_its_own() -> None:
    s = MIXED.budget
    assert s is not None
    got = budget.apply(None, [charge("a", 1.0, "claude")], s, now=MIDNIGHT)
    assert [(c.provider, c.threshold) for c in got.crossings] == [("claude", 0.8), ("claude", 1.0)]


# --------------------------------------------------------------------------- restart


def test_restart_rebuilds_spend_from_status_and_never_charges_twice() -> None:
    s = spec()
    before = budget.apply(None, [charge("a", 2.5), charge("b", 1.25)], s, now=MIDNIGHT + 5).spend
    wire = ProviderChainStatus(spend=budget.to_status(before)).model_dump(
        by_alias=True, mode="json"
    )
    assert wire["spend"]["windowStart"].endswith("T00:00:00Z")
    assert (wire["spend"]["usd"], wire["spend"]["tasks"]) == (3.75, 2)
    # A new operator process: nothing in memory, only what status says.
    restored = budget.from_status(ProviderChainStatus.model_validate(wire).spend)
    assert restored == before
    # The task whose mark was not written before the restart is charged again: no effect.
    again = budget.apply(restored, [charge("b", 1.25), charge("c", 1.0)], s, now=MIDNIGHT + 9)
    assert again.counted == ("c",)
    assert again.spend.usd == pytest.approx(4.75)
    assert budget.from_status(None) is None


def test_the_charged_list_is_bounded() -> None:
    charges = [charge(f"t{i}", 0.001) for i in range(300)]
    got = budget.apply(None, charges, spec(), now=MIDNIGHT).spend
    assert len(got.charged) == 256
    assert got.charged[-1] == "t299"
    assert got.tasks == 300


def test_newer_keeps_the_later_reading() -> None:
    s = spec()
    one = budget.apply(None, [charge("a", 1.0)], s, now=MIDNIGHT).spend
    two = budget.apply(one, [charge("b", 1.0)], s, now=MIDNIGHT).spend
    tomorrow = budget.current(two, s, now=MIDNIGHT + DAY)
    assert budget.newer(two, one) == two
    assert budget.newer(one, two) == two
    assert budget.newer(two, tomorrow) == tomorrow
    assert budget.newer(None, one) == one


# --------------------------------------------------------------------------- two replicas


@dataclass
class Store:
    """One object's status with a resourceVersion: what the API server gives us."""

    version: int = 0
    spend: budget.Spend | None = None

    def read(self) -> tuple[int, budget.Spend | None]:
        return self.version, self.spend

    def write_if(self, version: int, spend: budget.Spend) -> bool:
        if version != self.version:
            return False  # 409 Conflict
        self.version += 1
        self.spend = spend
        return True


@dataclass
class Replica:
    """A writer that reads, applies its pending charges and writes conditionally; a
    conflict means: read again and retry (what chainop.operator.spend does)."""

    store: Store
    pending: list[budget.Charge] = field(default_factory=list)
    read_at: tuple[int, budget.Spend | None] | None = None

    def read(self) -> None:
        self.read_at = self.store.read()

    def write(self, now: float) -> None:
        if self.read_at is None or not self.pending:
            return
        version, spend = self.read_at
        applied = budget.apply(spend, self.pending, spec(maxUSD=1_000_000), now=now)
        if self.store.write_if(version, applied.spend):
            self.pending = []
        self.read_at = None


def test_two_replicas_one_store_conflict_loses_nothing() -> None:
    store = Store()
    one, two = Replica(store, [charge("a", 1.0)]), Replica(store, [charge("b", 2.0)])
    one.read()
    two.read()
    one.write(MIDNIGHT)
    two.write(MIDNIGHT)  # 409: read again
    assert two.pending
    two.read()
    two.write(MIDNIGHT)
    assert store.spend is not None
    assert (store.spend.usd, store.spend.tasks) == (3.0, 2)


OPS = st.lists(
    st.tuples(st.sampled_from(["charge", "read", "write"]), st.integers(0, 1), st.integers(0, 9)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_two_replicas_never_double_count_or_lose(ops: list[tuple[str, int, int]]) -> None:
    """Tasks 0-9 with cost 2**i cents; either replica may be handed any task (both after a
    takeover), any number of times, in any interleaving of reads and writes. In the end
    each task handed to anyone is counted exactly once."""
    store = Store()
    replicas = [Replica(store), Replica(store)]
    handed: set[int] = set()
    for op, who, number in ops:
        replica = replicas[who]
        if op == "charge":
            handed.add(number)
            replica.pending.append(charge(f"task-{number}", 2**number / 100))
        elif op == "read":
            replica.read()
        else:
            replica.write(MIDNIGHT + 1)
    for replica in replicas:  # drain what is left, retrying on conflicts
        while replica.pending:
            replica.read()
            replica.write(MIDNIGHT + 1)
    expected = sum(2**n for n in handed) / 100
    got = store.spend.usd if store.spend else 0.0
    assert got == pytest.approx(expected, abs=1e-9)
    assert (store.spend.tasks if store.spend else 0) == len(handed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 10_000)), max_size=40))
def test_spend_is_the_sum_of_distinct_charges_in_any_batching(
    charges: list[tuple[int, int]],
) -> None:
    """Charging in one batch or one by one, with repeats, gives the same spend."""
    s = spec(maxUSD=1_000_000)
    cost = {uid: micro / 1_000_000 for uid, micro in charges}  # a task has one cost
    all_charges = [charge(str(uid), cost[uid]) for uid, _ in charges]
    batched = budget.apply(None, all_charges, s, now=MIDNIGHT).spend
    one_by_one: budget.Spend | None = None
    for c in all_charges:
        one_by_one = budget.apply(one_by_one, [c], s, now=MIDNIGHT).spend
    expected = sum(cost.values())
    assert batched.usd == pytest.approx(expected, abs=1e-9)
    assert one_by_one is None or one_by_one.usd == pytest.approx(expected, abs=1e-9)
    assert batched.tasks == len(cost)


# --------------------------------------------------------------------------- routing


def decide(routing_spec: dict[str, object] | None = None) -> routing.RoutingDecision:
    return routing.decide(MIXED, task(routing_spec))


def spent(usd: float, **by_provider: float) -> budget.Spend:
    return budget.Spend(
        window="24h",
        window_start=MIDNIGHT,
        window_seconds=DAY,
        usd=usd,
        by_provider=by_provider,
    )


def test_under_budget_the_decision_is_unchanged() -> None:
    decision = decide()
    assert budget.gate(MIXED, decision, spent(9.99), now=MIDNIGHT + 1).decision == decision


def test_over_budget_local_only_keeps_sovereign_with_the_exact_reason() -> None:
    gate = budget.gate(MIXED, decide(), spent(10.0), now=MIDNIGHT + 1)
    assert gate.failure is None
    assert gate.decision.providers == ("vllm",)
    assert gate.decision.reason == "budget 10.00 USD/24h spent"
    assert gate.decision.local_only


def test_over_budget_in_an_old_window_is_not_over() -> None:
    decision = decide()
    assert budget.gate(MIXED, decision, spent(50.0), now=MIDNIGHT + DAY).decision == decision


def test_a_task_local_already_keeps_its_own_reason() -> None:
    decision = decide({"requiresLocal": True})
    assert budget.gate(MIXED, decision, spent(10.0), now=MIDNIGHT).decision == decision


def test_over_budget_fail() -> None:
    failing = chain(
        provider("vllm", "Sovereign"),
        provider("openai"),
        budget={"maxUSD": 10, "onExceeded": "Fail"},
        taskDefaults={"allowDelegation": True},
    )
    gate = budget.gate(failing, decide(), spent(10.5), now=MIDNIGHT + 1)
    assert gate.failure is not None
    assert gate.failure.startswith("budget 10.00 USD/24h spent (10.50 USD since ")
    assert gate.failure.endswith("onExceeded=Fail")


def test_over_budget_without_a_sovereign_provider_fails() -> None:
    remote = chain(provider("openai"), budget={"maxUSD": 1}, taskDefaults={"allowDelegation": True})
    gate = budget.gate(remote, routing.decide(remote, task()), spent(1.0), now=MIDNIGHT)
    assert gate.failure is not None
    assert "budget 1.00 USD/24h spent" in gate.failure


def test_a_spent_provider_cap_leaves_that_provider_out() -> None:
    gate = budget.gate(MIXED, decide(), spent(2.0, claude=1.0), now=MIDNIGHT + 1)
    assert gate.decision.providers == ("vllm", "openai")
    assert gate.decision.reason.endswith("; budget of claude 1.00 USD/24h spent")
    assert not gate.decision.local_only
    only_claude = decide({"preferredProvider": "claude"})
    assert (
        budget.gate(MIXED, only_claude, spent(2.0, claude=1.5), now=MIDNIGHT).decision.provider
        == "vllm"
    )


def test_no_budget_no_gate() -> None:
    plain = chain(provider("openai"), taskDefaults={"allowDelegation": True})
    decision = routing.decide(plain, task())
    assert budget.gate(plain, decision, spent(100.0), now=MIDNIGHT).decision == decision
