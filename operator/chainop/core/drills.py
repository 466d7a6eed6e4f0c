"""Failover drills: when one is due, which hops it may use, and what its outcome means.

A drill proves the fallback path of a chain works *before* the head fails for real: one
tiny synthetic request goes through the normal executor with the head failed on purpose
inside chainop, so the next eligible hop must answer. Purely computational, no side
effects: the operator's runner (``chainop.operator.drills``) does the I/O.

* **Schedule** (:func:`next_due`): the next drill is due ``intervalMinutes`` after the
  last one started (``status.lastDrill.time``), so an operator restart or a change of
  leader neither repeats nor skips a drill, and an operator that was down for several
  intervals runs one drill, not a burst. A ``lastDrill.time`` in the future (clock skew)
  never postpones a drill by more than one interval.
* **Eligibility** (:func:`plan`): the head is the first provider real tasks would try
  (the active order under the chain's strategy); the hops are the rest, without paid
  providers unless ``allowPaid`` (:func:`is_paid`). No hop left: the drill fails with
  that reason and calls nothing.
* **Injection**: the head's call raises :class:`DrillForcedError`, a capability miss
  (advance without penalty: it never counts toward the head's failures or benching); any
  provider after the first really called one raises :class:`DrillStoppedError`, so a
  drill costs at most one provider's call (and its retries).
* **Verdict** (:func:`judge`): passed when the first really called hop answered; a hop
  that failed for real counted as that provider's failure (the executor did that, like
  for any call), and the drill fails naming it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from chainop.core import drains as drain_rules
from chainop.core.calls import CallContext, Completion, ProviderCall
from chainop.core.errors import UnsupportedRequestError
from chainop.core.models import (
    Attempt,
    AttemptOutcome,
    Message,
    MessageRole,
    PrivacyTier,
    ProviderChainSpec,
    ProviderSpec,
    RequestSpec,
    Strategy,
)
from chainop.core.rules import ordered_for_strategy

#: The error text of the head's forced failure (and how its attempt is recognised).
FORCED_MESSAGE = "drill: failure forced by chainop (the provider was not called)"
#: The error text of hops after the first real one (not called either).
STOPPED_MESSAGE = "drill: stops after its first real hop (the provider was not called)"

#: The synthetic request: a few tokens in, at most a few out.
DRILL_REQUEST = RequestSpec(
    messages=[Message(role=MessageRole.USER, content="chainop failover drill: reply OK")],
    max_tokens=4,
    temperature=0.0,
)


class DrillForcedError(UnsupportedRequestError):
    """The head of a drill, failed on purpose: advance, no penalty, nothing sent."""

    def __init__(self) -> None:
        super().__init__(FORCED_MESSAGE)


class DrillStoppedError(UnsupportedRequestError):
    """A hop after the drill's first real one: not called, so a drill costs one hop."""

    def __init__(self) -> None:
        super().__init__(STOPPED_MESSAGE)


class DrillCall:
    """The provider call of one drill, around the real one (``inner``): the head fails
    in chainop and is never called; after the first really called provider, every other
    one is stopped, so a drill costs one provider's call (and its retries) at most."""

    def __init__(self, inner: ProviderCall, head: str) -> None:
        self.inner = inner
        self.head = head
        self.first_real: str | None = None

    async def __call__(
        self, provider: ProviderSpec, request: RequestSpec, context: CallContext
    ) -> Completion:
        if provider.name == self.head:
            raise DrillForcedError()
        if self.first_real is None:
            self.first_real = provider.name
        elif provider.name != self.first_real:
            raise DrillStoppedError()
        return await self.inner(provider, request, context)


def next_due(*, last: float | None, interval_minutes: float, now: float) -> float:
    """Epoch seconds at which the next drill is due. Purely computational.

    No drill yet: due now. Otherwise ``interval`` after the last one, but never more
    than one interval after ``now`` (a ``last`` in the future is clock skew, not a
    reason to stop drilling).
    """
    interval = interval_minutes * 60.0
    if last is None:
        return now
    return min(last + interval, now + interval)


def is_due(*, last: float | None, interval_minutes: float, now: float) -> bool:
    """Whether a drill should start at ``now``."""
    return now >= next_due(last=last, interval_minutes=interval_minutes, now=now)


def is_paid(provider: ProviderSpec) -> bool:
    """Whether calling ``provider`` may cost money, for ``drills.allowPaid``.

    Paid means: not Sovereign (not on the cluster's own hardware) *and* either declaring
    a price (``cost``) or authenticating with an API key (an account that bills). A
    Sovereign provider is never paid; a non-Sovereign one with neither (a free shared
    gateway) is not either.
    """
    if provider.privacy_tier is PrivacyTier.SOVEREIGN:
        return False
    priced = (
        provider.cost.input_per_million_tokens > 0 or provider.cost.output_per_million_tokens > 0
    )
    return priced or provider.api_key_secret_ref is not None


@dataclass(frozen=True, slots=True)
class DrillPlan:
    """What a drill will do: fail ``head``, then try ``hops`` in order.

    ``reason`` is set (and ``hops`` empty) when the drill cannot run: it fails with it.
    """

    head: str
    hops: tuple[str, ...]
    paid_left_out: tuple[str, ...] = ()
    reason: str = ""
    #: Hops the chain's spend budget leaves out now (as it leaves them out of new tasks).
    budget_left_out: tuple[str, ...] = ()

    @property
    def runnable(self) -> bool:
        """Whether there is a hop to drill."""
        return not self.reason

    @property
    def eligible(self) -> list[str]:
        """The executor's routing decision for the drill: the head, then the hops."""
        return [self.head, *self.hops]


def plan(
    chain: ProviderChainSpec,
    active_order: Sequence[str],
    *,
    allow_paid: bool,
    now: datetime | None = None,
    spent: Collection[str] = (),
) -> DrillPlan:
    """The drill of ``chain`` given its ``status.activeOrder``. Purely computational.

    The head is what real tasks try first under the chain's strategy (FallbackOnly
    already skips the spec's head; RoundRobin is drilled from its unrotated order);
    PrimaryOnly has no fallback, so its drill cannot pass. Providers drained by hand at
    ``now`` are out, as for tasks (``None``: every drain entry counts). ``spent``: the
    providers the chain's spend budget leaves out of new tasks now (a spent provider
    cap, or a spent budget); they are no hop either, ``allowPaid`` or not, so a drill
    never spends what the budget refuses the chain's tasks.
    """
    known = {p.name: p for p in chain.providers}
    drained = drain_rules.in_effect(chain, now=now)
    order = [name for name in active_order if name in known and name not in drained]
    if chain.strategy is Strategy.PRIMARY_ONLY:
        head = order[0] if order else chain.providers[0].name
        return DrillPlan(head, (), reason="strategy PrimaryOnly has no fallback hop to drill")
    order = ordered_for_strategy(chain, order)
    if not order:
        return DrillPlan("", (), reason="no provider is in the chain's active order")
    head, rest = order[0], order[1:]
    budgeted = tuple(name for name in rest if name in spent)
    rest = [name for name in rest if name not in spent]
    hops = tuple(name for name in rest if allow_paid or not is_paid(known[name]))
    paid = tuple(name for name in rest if name not in hops)
    if hops:
        return DrillPlan(head, hops, paid, budget_left_out=budgeted)
    if budgeted:
        why = f"no eligible hop after {head}: the spend budget leaves out {', '.join(budgeted)}" + (
            f" and paid providers ({', '.join(paid)})" if paid else ""
        )
    elif paid:
        why = (
            f"no eligible hop after {head}: paid providers left out ({', '.join(paid)}; "
            "drills.allowPaid is false)"
        )
    else:
        why = f"no eligible hop after {head}: it is the only provider in the active order"
        why += f" (drained: {', '.join(drained)})" if drained else ""
    return DrillPlan(head, (), paid, reason=why, budget_left_out=budgeted)


@dataclass(frozen=True, slots=True)
class DrillVerdict:
    """A drill's outcome: providers really called in order, pass/fail and why."""

    passed: bool
    path: tuple[str, ...]
    reason: str


def _not_called(attempt: Attempt) -> bool:
    """Attempts that sent nothing: skipped, forced or stopped by the drill."""
    return attempt.outcome is AttemptOutcome.SKIPPED or attempt.error in (
        FORCED_MESSAGE,
        STOPPED_MESSAGE,
    )


def judge(
    drill: DrillPlan, attempts: Sequence[Attempt], *, answered_by: str, failure: str = ""
) -> DrillVerdict:
    """The verdict of a drill from the executor's attempts. Purely computational.

    ``answered_by`` is the provider whose answer came back ('' when none did). The path
    lists each really called provider once, in order (retries are one entry);
    ``failure`` is the executor's message, used when no hop was even tried.
    """
    path: list[str] = []
    for attempt in attempts:
        if not _not_called(attempt) and attempt.provider not in path:
            path.append(attempt.provider)
    if answered_by and path and path[0] == answered_by:
        return DrillVerdict(
            True, tuple(path), f"{answered_by} answered with {drill.head} failed on purpose"
        )
    if path:
        first = path[0]
        errors = [a.error for a in attempts if a.provider == first and a.error]
        detail = errors[-1] if errors else "no answer"
        return DrillVerdict(False, tuple(path), f"fallback {first} failed: {detail}")
    skipped = [
        f"{a.provider}: {a.error}"
        for a in attempts
        if a.outcome is AttemptOutcome.SKIPPED and a.provider != drill.head
    ]
    detail = "; ".join(skipped) or failure or "nothing was called"
    return DrillVerdict(False, (), f"no hop after {drill.head} could be called ({detail})")
