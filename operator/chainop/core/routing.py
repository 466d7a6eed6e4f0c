"""The routing decision: which providers of a chain a task may use, in which order.

DESIGN.md's six rules, in strict precedence:

1. ``requiresLocal: true`` → local only.
2. ``preferredProvider: local`` → local only.
3. delegation not allowed (task field, else chain ``taskDefaults``, else false) → local only.
4. ``preferredProvider`` names a provider of the chain → that one first, then the rest.
5. ``auto`` or empty → the chain's active order.
6. anything else → local only, reason ``unknown preferredProvider=X → fail-safe``.

"Local" means ``privacyTier: Sovereign``. The result is a public, scriptable API::

    from chainop.core import models, routing
    chain = models.ProviderChainSpec.model_validate({...})
    task = models.DelegatedTaskSpec.model_validate({...})
    decision = routing.decide(chain, task)
    decision.providers, decision.reason
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from chainop.core import adaptive
from chainop.core import drains as drain_rules
from chainop.core.latency import LatencyStats
from chainop.core.models import (
    PRIVACY_ORDER,
    DelegatedTaskSpec,
    PrivacyTier,
    ProviderChainSpec,
    ProviderDrain,
    ProviderSpec,
    Strategy,
)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Eligible providers (names, in order) and the rule that chose them, in words.

    An empty ``providers`` means nothing is eligible; ``reason`` then says why.
    """

    providers: tuple[str, ...]
    reason: str
    rule: int
    local_only: bool

    @property
    def provider(self) -> str:
        """The first provider to try, or '' when none is eligible."""
        return self.providers[0] if self.providers else ""


def _is_local(provider: ProviderSpec) -> bool:
    return provider.privacy_tier is PrivacyTier.SOVEREIGN


def decide(
    chain: ProviderChainSpec,
    task: DelegatedTaskSpec,
    *,
    active_order: Sequence[str] | None = None,
    now: datetime | None = None,
) -> RoutingDecision:
    """Apply the six routing rules. Purely computational, no side effects.

    ``active_order`` is the chain's ``status.activeOrder`` (Excluded providers left out);
    None means the spec's order. Names in it that the spec does not know are ignored.
    Providers drained by hand at ``now`` (``spec.drains``, see ``chainop.core.drains``)
    are left out too — the terminus included: a drain is a human's explicit intent, so
    the last provider still in service is the terminus — and the reason names them.
    ``now`` None (no clock at hand, e.g. an offline preview) counts every drain entry.
    """
    by_name = {p.name: p for p in chain.providers}
    if active_order is None:
        order = [p.name for p in chain.providers]
    else:
        order = [name for name in active_order if name in by_name]
    drained = drain_rules.in_effect(chain, now=now)
    decision = _decide(chain, task, [n for n in order if n not in drained], drained=drained)
    if not drained:
        return decision
    # Who the same rule would have admitted without drains: the ones to name as skipped.
    # Drained providers count even when the given order lacks them (status.activeOrder
    # already leaves them out), so a decision made from status still names them.
    undrained_order = [p.name for p in chain.providers if p.name in order or p.name in drained]
    admitted = _decide(chain, task, undrained_order, drained={}).providers
    note = drain_rules.terminus_note(admitted, drained)
    return replace(decision, reason=decision.reason + note)


def _decide(
    chain: ProviderChainSpec,
    task: DelegatedTaskSpec,
    order: list[str],
    *,
    drained: Mapping[str, ProviderDrain],
) -> RoutingDecision:
    """The six rules over ``order`` (the providers in service, in order)."""
    by_name = {p.name: p for p in chain.providers}
    routing = task.routing
    preferred = routing.preferred_provider.strip()

    def local_only(reason: str, rule: int) -> RoutingDecision:
        names = tuple(name for name in order if _is_local(by_name[name]))
        if not names:
            reason = f"{reason}; no Sovereign provider is available in chain {task.chain!r}"
        return RoutingDecision(providers=names, reason=reason, rule=rule, local_only=True)

    # Rule 1.
    if routing.requires_local:
        return local_only("requiresLocal=true", 1)
    # Rule 2.
    if preferred == "local":
        return local_only("preferredProvider=local", 2)
    # Rule 3.
    if routing.allow_delegation is not None:
        allowed, source = routing.allow_delegation, "allowDelegation=false"
    elif chain.task_defaults.allow_delegation:
        allowed, source = True, ""
    else:
        allowed, source = False, "allowDelegation=false (default)"
    if not allowed:
        return local_only(source, 3)
    # Rule 4.
    if preferred in by_name:
        if preferred in order:
            rest = tuple(name for name in order if name != preferred)
            return RoutingDecision(
                providers=(preferred, *rest),
                reason=f"preferredProvider={preferred}",
                rule=4,
                local_only=False,
            )
        why = "drained" if preferred in drained else "excluded"
        return RoutingDecision(
            providers=tuple(order),
            reason=f"preferredProvider={preferred} is {why}; using the active order",
            rule=4,
            local_only=False,
        )
    # Rule 5.
    if preferred in ("", "auto"):
        reason = "preferredProvider=auto: active order"
        if not order:
            reason += "; every provider is excluded" if not drained else "; no provider is left"
        return RoutingDecision(providers=tuple(order), reason=reason, rule=5, local_only=False)
    # Rule 6.
    return local_only(f"unknown preferredProvider={preferred} → fail-safe", 6)


def effective_privacy_tier(chain: ProviderChainSpec) -> PrivacyTier | None:
    """The most permissive tier any task could reach through this chain.

    Purely computational. Any task may opt into delegation, and Excluded providers come
    back on recovery, so every declared provider counts. None only for an empty chain.
    """
    tiers = {p.privacy_tier for p in chain.providers}
    reachable = [tier for tier in PRIVACY_ORDER if tier in tiers]
    return reachable[-1] if reachable else None


def apply_strategy(chain: ProviderChainSpec, decision: RoutingDecision) -> RoutingDecision:
    """The decision as the chain's strategy narrows it, when that changes who is tried.

    Only ``FallbackOnly`` changes the decision itself (the chain's head is left out, to
    drain it or test the fallback path); PrimaryOnly and RoundRobin are applied per
    execution. Purely computational.
    """
    if chain.strategy is not Strategy.FALLBACK_ONLY:
        return decision
    head = chain.providers[0].name
    if head not in decision.providers:
        return decision
    rest = tuple(name for name in decision.providers if name != head)
    reason = f"{decision.reason}; strategy FallbackOnly skips the head ({head})"
    if not rest:
        reason += " and nothing else is eligible"
    return RoutingDecision(
        providers=rest, reason=reason, rule=decision.rule, local_only=decision.local_only
    )


def route(
    chain: ProviderChainSpec,
    task: DelegatedTaskSpec,
    *,
    active_order: Sequence[str] | None = None,
    latency: Mapping[str, LatencyStats] | None = None,
    now: datetime | None = None,
) -> RoutingDecision:
    """The decision a task gets: the six rules, the chain's strategy, its adaptive order.

    The one function the operator (when it executes a task) and ``kubectl chainop decide``
    (before anything is created) both call, so the plugin can never explain a decision the
    operator would not make. ``latency`` is the operator's in-memory EWMA per provider;
    the plugin has none (it is not in status), and without measurements the adaptive step
    changes nothing. ``now`` is when drains are judged (see ``decide``). Purely
    computational.
    """
    decision = decide(chain, task, active_order=active_order, now=now)
    decision = apply_strategy(chain, decision)
    return adaptive.adapt(chain, decision, latency or {})


def drain_wait(
    chain: ProviderChainSpec,
    task: DelegatedTaskSpec,
    *,
    active_order: Sequence[str] | None = None,
    latency: Mapping[str, LatencyStats] | None = None,
    now: datetime,
    deadline: datetime,
) -> drain_rules.DrainWait | None:
    """When :func:`route` leaves the task nothing: whether only timed drains are why, and
    which one to wait for (``chainop.core.drains.wait_for_drain``) — judged against the
    decision the task would get with nothing drained. The operator parks the task on it;
    ``kubectl chainop decide`` says so. Purely computational."""
    if not chain.drains:
        return None
    undrained = route(
        chain.model_copy(update={"drains": []}),
        task,
        active_order=active_order,
        latency=latency,
        now=now,
    )
    return drain_rules.wait_for_drain(chain, undrained.providers, now=now, deadline=deadline)
