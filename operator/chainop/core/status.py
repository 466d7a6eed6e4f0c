"""Building the status of both resources from what the core knows. Purely computational.

The operator writes status only when its *significant* part changes (states, order,
counts, conditions, cooldowns), so a probe that merely refreshes ``lastProbeTime``
does not cost an API write; ``significant`` says what counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chainop.core import conditions, healing, routing
from chainop.core import drains as drain_rules
from chainop.core import health as health_rules
from chainop.core.health import ProviderHealth
from chainop.core.models import (
    Condition,
    ProviderChainSpec,
    ProviderChainStatus,
    ProviderState,
)

READY = "Ready"
SUCCEEDED = "Succeeded"
PROGRESSING = "Progressing"

#: Provider-status fields that change with every probe; they alone never force a write.
VOLATILE_FIELDS = frozenset({"lastProbeTime", "lastProbeLatencyMs"})


def utc(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=UTC)


def chain_status(
    spec: ProviderChainSpec,
    health: Sequence[ProviderHealth],
    *,
    now: float,
    generation: int | None,
    previous_conditions: Sequence[Condition],
    invalid: tuple[str, str] | None = None,
) -> ProviderChainStatus:
    """The status of a chain: per-provider health, active order, counts, Ready.

    ``invalid`` is ``(reason, message)`` when validation failed (a missing Secret, an
    unknown Deployment): Ready is False with that reason whatever the health says.
    """
    by_name = {h.name: h for h in health}
    ordered = [by_name.get(p.name) or ProviderHealth(name=p.name) for p in spec.providers]
    drained = drain_rules.in_effect(spec, now=utc(now))
    statuses = drain_rules.mark([health_rules.to_status(h, now=now) for h in ordered], drained)
    order = [
        name
        for name in healing.active_order([p.name for p in spec.providers], ordered)
        if name not in drained
    ]
    healthy = sum(1 for s in statuses if s.state is ProviderState.HEALTHY)
    usable = [
        s.name
        for s in statuses
        if s.name in order and s.state not in (ProviderState.UNHEALTHY, ProviderState.EXCLUDED)
    ]
    stamp = utc(now)
    ready: conditions.Status
    if invalid is not None:
        ready, reason, message = "False", invalid[0], invalid[1]
    elif not usable:
        ready, reason = "False", "NoHealthyProvider"
        message = "every provider is Unhealthy or Excluded; tasks will fail until one recovers"
        if drained:
            message = "every provider is Unhealthy, Excluded or Drained; tasks will fail"
    else:
        ready, reason = "True", "ProvidersAvailable"
        message = f"{healthy}/{len(statuses)} providers healthy; active order: {', '.join(order)}"
    if drained:
        message += "; drained: " + ", ".join(sorted(drained))
    updated = conditions.set_condition(
        previous_conditions,
        type=READY,
        status=ready,
        reason=reason,
        message=message,
        now=stamp,
        observed_generation=generation,
    )
    updated = drains_condition(spec, updated, now=stamp, generation=generation)
    return ProviderChainStatus(
        observed_generation=generation,
        conditions=updated,
        healthy=healthy,
        total=len(statuses),
        healthy_summary=drain_rules.summary(
            healthy=healthy, total=len(statuses), drained=len(drained)
        ),
        active_order=order,
        active=order[0] if order else "",
        effective_privacy_tier=routing.effective_privacy_tier(spec),
        providers=statuses,
    )


def drains_condition(
    spec: ProviderChainSpec,
    previous: Sequence[Condition],
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """The ``DrainsValid`` condition, present while ``spec.drains`` has entries.

    False (reason ``UnknownProvider``) when an entry names a provider the chain lacks:
    such an entry is ignored, with this warning — never a reason to invalidate the chain.
    """
    kept = [c for c in previous if c.type != drain_rules.DRAINS_VALID]
    if not spec.drains:
        return kept
    unknown = drain_rules.ignored(spec)
    if unknown:
        status: conditions.Status = "False"
        reason, message = (
            "UnknownProvider",
            (
                "spec.drains names " + ", ".join(unknown) + ", not a provider of this chain; "
                "ignored (the chain itself is unaffected)"
            ),
        )
    else:
        status, reason, message = "True", "AllDrainsKnown", "every drain names a provider"
    return conditions.set_condition(
        previous,
        type=drain_rules.DRAINS_VALID,
        status=status,
        reason=reason,
        message=message,
        now=now,
        observed_generation=generation,
    )


def invalid_chain_status(
    *,
    reason: str,
    message: str,
    now: float,
    generation: int | None,
    previous_conditions: Sequence[Condition],
) -> ProviderChainStatus:
    """Status of a chain whose spec could not even be parsed: Ready=False, nothing else."""
    updated = conditions.set_condition(
        previous_conditions,
        type=READY,
        status="False",
        reason=reason,
        message=message,
        now=utc(now),
        observed_generation=generation,
    )
    return ProviderChainStatus(observed_generation=generation, conditions=updated)


def significant(status: dict[str, Any]) -> dict[str, Any]:
    """The part of a chain status (wire form) whose change is worth an API write."""
    providers = [
        {k: v for k, v in p.items() if k not in VOLATILE_FIELDS}
        for p in status.get("providers", [])
    ]
    conds = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions", [])
    ]
    return {**status, "providers": providers, "conditions": conds}
