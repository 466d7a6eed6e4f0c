"""Drains: providers a human took out of service by hand. Purely computational.

A drain is an entry of ``spec.drains`` (``kubectl chainop drain``). It lives in the spec,
so it is declarative and survives operator restarts; what it means *now* is derived here
from the spec and ``now`` alone, never from memory, and chainop never edits the spec:

* an entry is in effect while its ``until`` is absent or ahead (``ProviderDrain.active``);
  at ``until`` it ends by itself (the operator wakes then: :func:`next_end`);
* a drained provider shows state ``Drained``, reason ``Drained`` and ``drain`` (who, why,
  until) in status, whatever its health; it is left out of ``activeOrder`` and of every
  routing decision, like an Excluded one;
* **a drain is absolute, the terminus included.** The terminus rule ("the last eligible
  provider is always attempted") guards against chainop's own automatic judgement
  (benching, exclusion) being wrong, so there is always a last resort. A drain is a
  human's explicit intent (maintenance, a leak, a bill): overriding it would make
  draining the last provider impossible. So drained providers leave the decision first,
  and the terminus is the last provider *still in service*, which keeps its
  always-attempted privilege. When every eligible provider is drained the task fails at
  once and says so (admission rejects draining the only provider left);
* a drained provider is never restarted by self-healing, never excluded, and its failed
  probes count toward no failure metric or Event; it is still probed (when its mode says
  so), so its last error and latency stay true and undrain shows real health at once;
* an entry naming a provider the chain lacks is ignored (:func:`ignored`): a warning,
  never an invalid chain;
* several entries for one provider: in effect if any is; the one ending last is shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from chainop.core import healing
from chainop.core.health import ProviderHealth
from chainop.core.models import (
    ProviderChainSpec,
    ProviderChainStatus,
    ProviderDrain,
    ProviderState,
    ProviderStatus,
    RecoverySpec,
)

#: The reason shown next to state Drained, and the Events' reasons.
DRAINED = "Drained"
UNDRAINED = "Undrained"
DRAIN_IGNORED = "DrainIgnored"
#: The condition saying whether every entry of spec.drains names a provider of the chain.
DRAINS_VALID = "DrainsValid"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _ends_later(a: ProviderDrain, b: ProviderDrain) -> bool:
    """Whether ``a`` ends after ``b`` (open-ended drains end last)."""
    if a.until is None:
        return b.until is not None
    return b.until is not None and _aware(a.until) > _aware(b.until)


def in_effect(spec: ProviderChainSpec, *, now: datetime | None) -> dict[str, ProviderDrain]:
    """Drains in effect at ``now``, by provider name (providers of the chain only).

    ``now`` None means "no clock at hand" (an offline caller): every entry counts, so a
    decision made without a clock never routes to a provider someone drained.
    """
    known = {p.name for p in spec.providers}
    found: dict[str, ProviderDrain] = {}
    for entry in spec.drains:
        if entry.provider not in known:
            continue
        if now is not None and entry.until is not None and not _aware(entry.until) > now:
            continue
        shown = found.get(entry.provider)
        if shown is None or _ends_later(entry, shown):
            found[entry.provider] = entry
    return found


def ignored(spec: ProviderChainSpec) -> list[str]:
    """Provider names in ``spec.drains`` that the chain does not have, once each, in order."""
    known = {p.name for p in spec.providers}
    names: list[str] = []
    for entry in spec.drains:
        if entry.provider not in known and entry.provider not in names:
            names.append(entry.provider)
    return names


def next_end(spec: ProviderChainSpec, *, now: datetime) -> datetime | None:
    """The earliest ``until`` still ahead of ``now``: when the operator must look again."""
    ends = [
        _aware(entry.until)
        for entry in spec.drains
        if entry.until is not None and _aware(entry.until) > now
    ]
    return min(ends) if ends else None


def describe(drain: ProviderDrain) -> str:
    """Who, why and until, in words (Events, conditions, routing reasons)."""
    who = drain.by or "someone"
    why = f": {drain.reason}" if drain.reason else ""
    until = f" until {_aware(drain.until).isoformat()}" if drain.until else " until undrained"
    return f"by {who}{why}{until}"


def mark(
    statuses: Sequence[ProviderStatus], drained: Mapping[str, ProviderDrain]
) -> list[ProviderStatus]:
    """Provider statuses with the drained ones shown as state/reason Drained and their drain.

    Health fields (last error, probe latency, restarts) stay as measured: they are what
    the provider will be judged on the moment it is undrained.
    """
    return [
        s.model_copy(
            update={"state": ProviderState.DRAINED, "reason": DRAINED, "drain": drained[s.name]}
        )
        if s.name in drained
        else s
        for s in statuses
    ]


def summary(*, healthy: int, total: int, drained: int) -> str:
    """The HEALTHY column: ``2/3``, or ``2/3 (1 drained)`` while drains are in effect."""
    return f"{healthy}/{total}" + (f" ({drained} drained)" if drained else "")


def shown(status: ProviderChainStatus) -> dict[str, ProviderDrain]:
    """The drains a written status shows (state Drained), by provider name.

    What was announced is derived from status, not memory, so an operator restart neither
    repeats a ``Drained`` Event nor misses the ``Undrained`` of a drain that ended while it
    was stopped.
    """
    return {
        p.name: p.drain or ProviderDrain(provider=p.name)
        for p in status.providers
        if p.state is ProviderState.DRAINED
    }


@dataclass(frozen=True, slots=True)
class Change:
    """One provider's drain starting or ending, as an Event says it."""

    provider: str
    reason: str  # DRAINED or UNDRAINED
    message: str
    #: An UNDRAINED because ``until`` passed (rather than lifted by hand).
    expired: bool = False


def changes(
    before: Mapping[str, ProviderDrain],
    after: Mapping[str, ProviderDrain],
    *,
    now: datetime,
) -> list[Change]:
    """The transitions from the drains shown ``before`` to those in effect ``after``.

    An ended drain whose ``until`` has passed expired; any other end (the entry removed,
    or its ``until`` moved into the past) was undone by hand. A drain whose who/why/until
    changed while it stays in effect is announced again, as what a human changed.
    """
    found: list[Change] = []
    for name, drain in after.items():
        if before.get(name) != drain:
            again = " (changed)" if name in before else ""
            found.append(Change(name, DRAINED, f"{name} drained{again} {describe(drain)}"))
    for name, drain in before.items():
        if name in after:
            continue
        expired = drain.until is not None and not _aware(drain.until) > now
        if drain.until is not None and expired:
            message = f"{name} undrained: Expired at {_aware(drain.until).isoformat()}"
        else:
            message = f"{name} undrained by hand (the drain {describe(drain)} was lifted)"
        found.append(Change(name, UNDRAINED, message, expired=expired))
    return found


def terminus_note(order: Iterable[str], drained: Mapping[str, ProviderDrain]) -> str:
    """What a routing reason says about drains: who was skipped, and the terminus rule.

    ``order`` is the candidates the decision's rule admitted before drains were applied
    (its last one the terminus). Empty when no drained provider was among them.
    """
    names = list(order)
    skipped = [name for name in names if name in drained]
    if not skipped:
        return ""
    note = "; drained by hand, skipped: " + ", ".join(
        f"{name} ({describe(drained[name])})" for name in skipped
    )
    left = [name for name in names if name not in drained]
    if not left:
        return note + (
            "; every eligible provider is drained, and a drain is never overridden, "
            "not even for the terminus (it is a human's explicit intent)"
        )
    if names[-1] in skipped:
        note += (
            f"; a drained provider is no last resort (a drain is a human's explicit "
            f"intent), so {left[-1]}, the last one in service, is the terminus"
        )
    return note


def observe_probe(
    health: ProviderHealth,
    *,
    now: float,
    ok: bool,
    latency_ms: int | None,
    error: str,
    recovery: RecoverySpec,
) -> ProviderHealth:
    """A drained provider's probe: its health kept true, without any consequence.

    Last error, latency and failure streak are recorded, but the provider is never made
    Unhealthy, excluded or restarted: it is out of service by hand, and its failures
    alarm nobody. Undrained, it is judged on this record at once (a streak already at
    the threshold makes it Unhealthy at the next failed probe). One already Excluded
    keeps its recovery going: restored quietly on success (the next probe decides
    anew), backed off on a failed recovery probe, so recovery probes never run hot.
    """
    if health.excluded:
        if ok:
            return healing.restore(health, now=now, latency_ms=latency_ms)
        if healing.recovery_due(health, now=now):
            return healing.recovery_failed(health, now=now, recovery=recovery, error=error)
        return replace(health, last_probe_time=now, last_error=error)
    if ok:
        return replace(
            health,
            last_probe_time=now,
            last_probe_latency_ms=latency_ms,
            consecutive_probe_failures=0,
            last_error="" if not health.unhealthy else health.last_error,
        )
    return replace(
        health,
        last_probe_time=now,
        consecutive_probe_failures=health.consecutive_probe_failures + 1,
        last_error=error,
    )


@dataclass(frozen=True)
class DrainWait:
    """A task only drains keep from running: wait for ``provider``'s drain to end."""

    provider: str
    until: datetime


def wait_for_drain(
    spec: ProviderChainSpec,
    undrained: Sequence[str],
    *,
    now: datetime,
    deadline: datetime,
) -> DrainWait | None:
    """When every provider the task could use (``undrained``: the names of the decision
    made as if nothing were drained) is drained, the earliest ``until`` among them, if it comes
    before the task's deadline.

    A timed drain is a temporary absence, like a cooldown: the task waits for it, as a
    pod waits for a node to be uncordoned, rather than failing the moment it is created.
    A drain without ``until`` lasts until someone lifts it: nothing to wait for. When a
    provider the task could use is not drained, drains are not what stops it.
    """
    drained = in_effect(spec, now=now)
    ends: list[tuple[datetime, str]] = []
    for name in undrained:
        entry = drained.get(name)
        if entry is None:
            return None
        if entry.until is not None:
            ends.append((_aware(entry.until), name))
    if not ends:
        return None
    until, name = min(ends)
    return DrainWait(provider=name, until=until) if until < deadline else None
