"""Spend budgets: fixed windows, charging finished tasks exactly once, routing over budget.

Purely computational, no side effects: time is passed in (``now``, epoch seconds), and
the store is whatever the caller reads and writes — for the operator, the chain's
``status.spend`` under a resourceVersion precondition (``chainop.operator.spend``).

Windows are fixed and aligned to the Unix epoch: a ``24h`` window runs from 00:00 to
00:00 UTC, a ``1h`` window on the hour. Any replica at any time computes the same window
from ``now`` alone, so replicas never disagree about which window a charge falls in, and
a spend recorded under an older window (or another window length) simply counts as zero.

Exactly once: a charge carries the task's uid, and the spend keeps the uids charged most
recently (``chargedTasks``, the last ``CHARGED_TASKS_KEPT``, across windows). Applying a
charge whose uid is there changes nothing, so the operator may charge a task again after
a restart (it marks the task ``charged`` only after the chain's write) without counting
it twice. The list only has to outlive the gap between the chain's write and the task's
mark — one batch — which 256 uids cover with a wide margin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from chainop.core.models import (
    CHARGED_TASKS_KEPT,
    Attempt,
    BudgetAction,
    BudgetSpec,
    PrivacyTier,
    ProviderChainSpec,
    ProviderSpend,
    SpendStatus,
    TaskResult,
)
from chainop.core.routing import RoutingDecision

#: Fractions of a budget whose crossing is announced (an Event and an audit line).
THRESHOLDS: tuple[float, ...] = (0.8, 1.0)
#: USD amounts are kept to this many decimals (a nano-dollar), so sums stay exact enough
#: that adding charges in any order gives the same figure.
DECIMALS = 9


@dataclass(frozen=True, slots=True)
class Charge:
    """What one finished task cost, by provider; ``uid`` makes charging it idempotent."""

    uid: str
    by_provider: Mapping[str, float]
    #: When the task finished (epoch seconds; None: unknown). A task belongs to the window
    #: it finished in: one that finished before the current window began is not counted
    #: in it (its window is closed), e.g. a task that finished while the chain had no
    #: budget, charged when an operator restart lists it again days later.
    finished_at: float | None = None

    @property
    def usd(self) -> float:
        return round(sum(self.by_provider.values()), DECIMALS)


@dataclass(frozen=True, slots=True)
class Spend:
    """Spend in one window (``window_start`` in epoch seconds), as kept in status."""

    window: str
    window_start: float
    window_seconds: int
    usd: float = 0.0
    tasks: int = 0
    by_provider: Mapping[str, float] = field(default_factory=dict)
    charged: tuple[str, ...] = ()

    @property
    def window_end(self) -> float:
        return self.window_start + self.window_seconds


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold of a budget crossed by a charge: ``provider`` '' for the chain's own."""

    provider: str
    threshold: float
    usd: float
    max_usd: float


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of applying charges: the new spend, the uids counted now (the others
    were already counted), and the thresholds crossed."""

    spend: Spend
    counted: tuple[str, ...]
    crossings: tuple[Crossing, ...]


def window_start(now: float, seconds: int) -> float:
    """Start of the fixed window containing ``now`` (aligned to the Unix epoch)."""
    return math.floor(now / seconds) * seconds


def current(spend: Spend | None, budget: BudgetSpec, *, now: float) -> Spend:
    """The spend of the window containing ``now``: ``spend`` if it is that window's,
    else a fresh one (a new window, or the budget's window changed). The charged uids
    are kept across windows: a task charged just before a window ended must not be
    charged again in the next one."""
    seconds = budget.seconds
    start = window_start(now, seconds)
    if spend is not None and spend.window_start == start and spend.window_seconds == seconds:
        return spend
    charged = spend.charged if spend is not None else ()
    return Spend(window=budget.window, window_start=start, window_seconds=seconds, charged=charged)


def task_charge(
    uid: str,
    attempts: Sequence[Attempt],
    result: TaskResult | None,
    *,
    finished_at: float | None = None,
) -> Charge:
    """What a finished task cost, by provider: the sum of its attempts' costs (the answer,
    plus calls a hedge cancelled), else the result's cost when attempts carry none."""
    by_provider: dict[str, float] = {}
    for attempt in attempts:
        if attempt.cost_usd:
            by_provider[attempt.provider] = (
                by_provider.get(attempt.provider, 0.0) + attempt.cost_usd
            )
    if not by_provider and result is not None and result.cost_usd + result.extra_cost_usd > 0:
        by_provider[result.provider] = result.cost_usd + result.extra_cost_usd
    return Charge(
        uid=uid,
        by_provider={k: round(v, DECIMALS) for k, v in by_provider.items()},
        finished_at=finished_at,
    )


def apply(
    spend: Spend | None, charges: Iterable[Charge], budget: BudgetSpec, *, now: float
) -> Applied:
    """Add ``charges`` to the window containing ``now``, each uid at most once; a charge
    of a task that finished before that window began is not counted (its window is over)."""
    before = current(spend, budget, now=now)
    after = before
    seen = set(before.charged)
    counted: list[str] = []
    for charge in charges:
        if charge.uid in seen:
            continue
        if charge.finished_at is not None and charge.finished_at < before.window_start:
            continue
        seen.add(charge.uid)
        counted.append(charge.uid)
        by_provider = dict(after.by_provider)
        for provider, usd in charge.by_provider.items():
            by_provider[provider] = round(by_provider.get(provider, 0.0) + usd, DECIMALS)
        after = replace(
            after,
            usd=round(after.usd + charge.usd, DECIMALS),
            tasks=after.tasks + 1,
            by_provider=by_provider,
            charged=(*after.charged, charge.uid)[-CHARGED_TASKS_KEPT:],
        )
    return Applied(spend=after, counted=tuple(counted), crossings=crossings(before, after, budget))


def crossings(before: Spend, after: Spend, budget: BudgetSpec) -> tuple[Crossing, ...]:
    """Thresholds that ``after`` reaches and ``before`` (same window) did not.

    Spend only grows within a window, so each threshold is crossed at most once per
    window — and only by the one write that made it grow past it.
    """
    scopes: list[tuple[str, float, float, float]] = [("", before.usd, after.usd, budget.max_usd)]
    for cap in budget.providers:
        scopes.append(
            (
                cap.name,
                before.by_provider.get(cap.name, 0.0),
                after.by_provider.get(cap.name, 0.0),
                cap.max_usd,
            )
        )
    found = []
    for provider, old, new, max_usd in scopes:
        for threshold in THRESHOLDS:
            if old < threshold * max_usd <= new:
                found.append(Crossing(provider, threshold, new, max_usd))
    return tuple(found)


def ratio(spend: Spend | None, budget: BudgetSpec, *, now: float) -> float:
    """Spent / maxUSD in the window containing ``now`` (0 in a new window)."""
    return current(spend, budget, now=now).usd / budget.max_usd


def reason(budget: BudgetSpec, provider: str = "") -> str:
    """The words of a spent budget, e.g. ``budget 10.00 USD/24h spent``."""
    if provider:
        cap = budget.cap(provider) or 0.0
        return f"budget of {provider} {cap:.2f} USD/{budget.window} spent"
    return f"budget {budget.max_usd:.2f} USD/{budget.window} spent"


@dataclass(frozen=True, slots=True)
class Gate:
    """A routing decision as the budget leaves it, or why the task fails instead."""

    decision: RoutingDecision
    failure: str | None = None


def gate(
    chain: ProviderChainSpec, decision: RoutingDecision, spend: Spend | None, *, now: float
) -> Gate:
    """Apply the chain's budget to a new task's routing decision.

    * a provider whose own cap is spent is left out (its words appended to the reason);
    * the chain's budget spent: ``Fail`` fails the task (BudgetExceeded); ``LocalOnly``
      keeps the Sovereign providers only, with the reason ``budget X USD/W spent``;
    * nothing left to try because of the budget: the task fails (BudgetExceeded).

    Only new tasks pass here: one already running finishes whatever it costs.
    """
    budget = chain.budget
    if budget is None:
        return Gate(decision)
    window = current(spend, budget, now=now)
    capped = [
        name
        for name in decision.providers
        if (cap := budget.cap(name)) is not None and window.by_provider.get(name, 0.0) >= cap
    ]
    providers = tuple(name for name in decision.providers if name not in capped)
    words = decision.reason
    if capped:
        words = "; ".join([words, *(reason(budget, name) for name in capped)])
    if window.usd >= budget.max_usd:
        if budget.on_exceeded is BudgetAction.FAIL:
            return Gate(decision, failure=f"{reason(budget)} ({_spent(window)}); onExceeded=Fail")
        if not decision.local_only:
            tiers = {p.name: p.privacy_tier for p in chain.providers}
            providers = tuple(n for n in providers if tiers.get(n) is PrivacyTier.SOVEREIGN)
            words = reason(budget)
    over = window.usd >= budget.max_usd
    if capped or (over and not decision.local_only):
        if not providers:
            return Gate(decision, failure=f"{words} ({_spent(window)}); nothing else may take it")
        local = decision.local_only or over
        return Gate(replace(decision, providers=providers, reason=words, local_only=local))
    return Gate(decision)


def _spent(window: Spend) -> str:
    return f"{window.usd:.2f} USD since {_rfc3339(window.window_start)}"


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- status


def to_status(spend: Spend) -> SpendStatus:
    """The spend as ``status.spend`` (providers sorted, so equal spends write equal)."""
    return SpendStatus(
        window=spend.window,
        window_start=datetime.fromtimestamp(spend.window_start, tz=UTC),
        window_end=datetime.fromtimestamp(spend.window_end, tz=UTC),
        usd=spend.usd,
        tasks=spend.tasks,
        by_provider=[
            ProviderSpend(provider=name, usd=usd) for name, usd in sorted(spend.by_provider.items())
        ],
        charged_tasks=list(spend.charged),
    )


def from_status(status: SpendStatus | None) -> Spend | None:
    """The spend kept in status (None when there is none yet): how a restarted operator,
    or another replica, picks up where the last writer left off."""
    if status is None or status.window_start is None or status.window_end is None:
        return None
    start = status.window_start
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    end = status.window_end if status.window_end.tzinfo else status.window_end.replace(tzinfo=UTC)
    return Spend(
        window=status.window,
        window_start=start.timestamp(),
        window_seconds=round((end - start).total_seconds()),
        usd=status.usd,
        tasks=status.tasks,
        by_provider={entry.provider: entry.usd for entry in status.by_provider},
        charged=tuple(status.charged_tasks),
    )


def newer(known: Spend | None, seen: Spend | None) -> Spend | None:
    """The later of two readings of the same store (a watch event may arrive after our own
    write's answer): a later window wins; in one window spend only grows, so the larger."""
    if known is None or seen is None:
        return seen or known
    if (seen.window_start, seen.usd, seen.tasks) >= (known.window_start, known.usd, known.tasks):
        return seen
    return known
