"""Latency-aware order within a privacy tier (``routing.adaptive: LatencyWithinTier``).

Purely computational. A chain lists, say, two in-cluster vLLM pools and then two cloud
APIs; which pool of the two answers faster changes with load, and putting the faster one
first saves every task a slow call. What may never change is the privacy order: so only
providers of the *same* tier that are *next to each other* in the routing decision swap
places, sorted by the EWMA of their recent latency (per output token when known). A
provider nobody has measured yet sorts first within its run, so it gets measured; ties
keep the chain's order (the sort is stable). The decision's reason says when the order
changed and why, so ``kubectl get dtask -o yaml`` explains every move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chainop.core import routing
from chainop.core.latency import LatencyStats
from chainop.core.models import AdaptiveOrder, ProviderChainSpec

# The module, not the class: routing.route() calls adapt(), so the two import each other,
# and only attribute access at call time works in both import orders.


def _runs(names: Sequence[str], tier_of: Mapping[str, str]) -> list[list[str]]:
    """Split ``names`` into maximal runs of adjacent providers of one tier."""
    runs: list[list[str]] = []
    for name in names:
        if runs and tier_of[runs[-1][-1]] == tier_of[name]:
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs


def reorder(
    names: Sequence[str],
    tier_of: Mapping[str, str],
    latency: Mapping[str, LatencyStats],
) -> list[str]:
    """``names`` with each run of same-tier neighbours sorted by observed latency."""

    def score(name: str) -> float:
        stats = latency.get(name)
        value = stats.score if stats is not None else None
        return -1.0 if value is None else value

    return [name for run in _runs(names, tier_of) for name in sorted(run, key=score)]


def _describe(name: str, latency: Mapping[str, LatencyStats]) -> str:
    stats = latency.get(name)
    if stats is None or stats.score is None:
        return f"{name} (not measured yet)"
    return f"{name} ({stats.score:.1f} {stats.unit})"


def adapt(
    chain: ProviderChainSpec,
    decision: routing.RoutingDecision,
    latency: Mapping[str, LatencyStats],
) -> routing.RoutingDecision:
    """Apply the chain's adaptive order to a routing decision (unchanged when Off).

    A provider the task named (rule 4) stays first: the task asked for it.
    """
    if chain.routing.adaptive is AdaptiveOrder.OFF or len(decision.providers) < 2:
        return decision
    tier_of = {p.name: p.privacy_tier.value for p in chain.providers}
    fixed = decision.providers[:1] if decision.rule == 4 else ()
    rest = decision.providers[len(fixed) :]
    new = (*fixed, *reorder(rest, tier_of, latency))
    if new == decision.providers:
        return decision
    moved = [name for old, name in zip(decision.providers, new, strict=True) if old != name]
    why = ", ".join(_describe(name, latency) for name in moved)
    return routing.RoutingDecision(
        providers=new,
        reason=f"{decision.reason}; adaptive LatencyWithinTier reordered: {why}",
        rule=decision.rule,
        local_only=decision.local_only,
    )
