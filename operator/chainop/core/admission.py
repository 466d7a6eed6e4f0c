"""Admission review: what ``kubectl apply`` refuses, and what it only warns about.

The operator serves a validating admission webhook (``chainop.operator.admission``); the
rules live here, purely computational, so that they are unit-tested without a cluster.
The webhook parses the object with the same pydantic models the operator uses (a spec
the operator would mark ``InvalidSpec`` is refused with that very message, duplicate
provider names included) and then asks this module.

Refused (the object can never work, whatever happens in the cluster):

* a provider endpoint the endpoint guard (``chainop.core.endpoints``) refuses — the
  operator would never call it;
* drains that leave no provider in service: every provider the strategy can use is
  drained (a drained terminus with nothing else left is the usual way to get there).

Warned about (admission warnings, which ``kubectl`` prints as ``Warning: ...``; the object
is created, because the mistake may be deliberate or fixed later):

* a DelegatedTask naming a chain that does not exist (yet) in its namespace, or one
  whose spec is invalid — the task waits for it until its timeout;
* a task that may only run on Sovereign providers (``requiresLocal``, ``preferredProvider:
  local``, delegation not allowed) on a chain without one — it will fail
  ``NoEligibleProvider``;
* a ``preferredProvider`` the chain lacks — the task fails safe to local;
* a drain naming an unknown provider, or one whose ``until`` has passed (no effect);
* drains whose remaining providers are all Excluded right now (status, on updates);
* strategy FallbackOnly on a chain with a single provider (nothing left to fall back to).

A ``cost`` block on a Sovereign provider is allowed on purpose: in-cluster GPUs cost
money too, and a price per token is how a platform team charges them back to the teams
whose tasks ran there. Nothing else reads ``cost`` as "paid API" (probing and routing
go by ``privacyTier``), so a price there can mislead nothing.

Every message starts with the field it is about (``spec.providers[2].endpoint: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from chainop.core import endpoints, routing
from chainop.core.models import (
    DelegatedTaskSpec,
    PrivacyTier,
    ProviderChainSpec,
    ProviderState,
    Strategy,
)


@dataclass(frozen=True, slots=True)
class Review:
    """The verdict on one object: why it is refused (if at all) and what to warn about."""

    denials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether the object may be stored."""
        return not self.denials


def serving(spec: ProviderChainSpec) -> tuple[str, ...]:
    """Providers the chain's strategy can ever send work to (FallbackOnly skips the head).

    Purely computational.
    """
    names = tuple(provider.name for provider in spec.providers)
    if spec.strategy is Strategy.FALLBACK_ONLY:
        return names[1:]
    return names


def endpoint_denials(
    spec: ProviderChainSpec,
    *,
    addresses: Mapping[str, Sequence[str]],
    policy: endpoints.EndpointPolicy,
) -> list[str]:
    """Providers whose endpoint the guard refuses; ``addresses`` maps host -> resolved IPs.

    Purely computational: the caller resolves each host (an unresolved host is judged by
    its name and IP literal alone, as the operator does).
    """
    denials = []
    for index, provider in enumerate(spec.providers):
        host = endpoints.host_of(provider.endpoint)
        why = endpoints.refusal(provider.endpoint, addresses.get(host, ()), policy)
        if why is not None:
            denials.append(f"spec.providers[{index}].endpoint: {why}")
    return denials


def drain_findings(
    spec: ProviderChainSpec, *, now: datetime, excluded: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(denials, warnings) about ``spec.drains`` at ``now``; ``excluded``: names Excluded
    in the chain's status (empty on create). Purely computational.
    """
    denials: list[str] = []
    warnings: list[str] = []
    names = {provider.name for provider in spec.providers}
    drained: dict[str, int] = {}
    for index, drain in enumerate(spec.drains):
        if drain.provider not in names:
            warnings.append(
                f"spec.drains[{index}].provider: no provider named {drain.provider!r} in "
                "spec.providers: the drain has no effect"
            )
        elif not drain.active(now):
            warnings.append(
                f"spec.drains[{index}].until: {drain.until:%Y-%m-%dT%H:%M:%SZ} has passed: "
                "the drain is no longer in effect"
            )
        else:
            drained[drain.provider] = index
    usable = serving(spec)
    left = [name for name in usable if name not in drained]
    if usable and not left:
        index = drained[usable[-1]]  # the terminus: the last one that could have served
        denials.append(
            f"spec.drains[{index}].provider: draining {spec.drains[index].provider!r} leaves "
            f"no provider in service (drained: {', '.join(usable)}); undrain one first"
        )
    elif drained and left and all(name in excluded for name in left):
        warnings.append(
            f"spec.drains: every provider left in service ({', '.join(left)}) is Excluded "
            "right now: no task is served until one of them recovers"
        )
    return denials, warnings


def review_chain(
    spec: ProviderChainSpec,
    *,
    now: datetime,
    addresses: Mapping[str, Sequence[str]],
    policy: endpoints.EndpointPolicy,
    states: Mapping[str, ProviderState] | None = None,
) -> Review:
    """Admission verdict on a ProviderChain whose spec parsed. Purely computational.

    ``states`` are the provider states of the object's status (updates only).
    """
    denials = endpoint_denials(spec, addresses=addresses, policy=policy)
    excluded = [name for name, state in (states or {}).items() if state is ProviderState.EXCLUDED]
    drain_denials, warnings = drain_findings(spec, now=now, excluded=excluded)
    denials.extend(drain_denials)
    if not serving(spec):
        warnings.append(
            f"spec.strategy: FallbackOnly skips the head ({spec.providers[0].name}) and the "
            "chain has no other provider: no task can run on it"
        )
    return Review(denials=tuple(denials), warnings=tuple(warnings))


_LOCAL_FIELD = {
    1: "spec.routing.requiresLocal",
    2: "spec.routing.preferredProvider",
    3: "spec.routing.allowDelegation",
    6: "spec.routing.preferredProvider",
}


def review_task(
    task: DelegatedTaskSpec,
    chain: ProviderChainSpec | None,
    *,
    namespace: str,
    chain_problem: str | None = None,
) -> Review:
    """Admission verdict on a DelegatedTask whose spec parsed: only warnings.

    ``chain`` is the spec of the chain it names (None when there is none, or when it is
    invalid: then ``chain_problem`` says why). Purely computational.
    """
    waits = (
        f"the task waits for it and fails after spec.timeoutSeconds "
        f"({task.timeout_seconds:g}s) if it is not fixed"
    )
    if chain is None:
        if chain_problem is not None:
            return Review(
                warnings=(
                    f"spec.chain: ProviderChain {task.chain!r} is invalid "
                    f"({chain_problem}): {waits}",
                )
            )
        return Review(
            warnings=(
                f"spec.chain: no ProviderChain {task.chain!r} in namespace {namespace!r} "
                f"(yet): {waits}",
            )
        )
    warnings: list[str] = []
    names = [provider.name for provider in chain.providers]
    preferred = task.routing.preferred_provider.strip()
    if preferred not in ("", "auto", "local") and preferred not in names:
        warnings.append(
            f"spec.routing.preferredProvider: chain {task.chain!r} has no provider "
            f"{preferred!r} (it has {', '.join(names)}): the task fails safe to local "
            "(Sovereign providers only)"
        )
    decision = routing.decide(chain, task)
    has_local = any(p.privacy_tier is PrivacyTier.SOVEREIGN for p in chain.providers)
    if decision.local_only and not has_local:
        field = _LOCAL_FIELD.get(decision.rule, "spec.routing")
        hint = (
            " (set spec.routing.allowDelegation: true to let it leave Sovereign providers)"
            if decision.rule == 3
            else ""
        )
        warnings.append(
            f"{field}: the task may run only on Sovereign (local) providers and chain "
            f"{task.chain!r} has none: it will fail NoEligibleProvider{hint}"
        )
    return Review(warnings=tuple(warnings))
