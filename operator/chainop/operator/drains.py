"""Drains in the running operator: Events each way, and what a drain forbids.

The meaning of a drain is the core's (``chainop.core.drains``): derived from the spec and
``now`` only. This module wires it into the runtime's loop:

* :func:`drained` — whether a provider is drained at ``now`` (probes then only observe,
  and self-healing neither excludes nor restarts it);
* :func:`observe_probe` — a probe result of a drained provider, recorded without any of
  the consequences of failing;
* :func:`announce` — each time a chain's status is built, compare the drains it shows
  with those its last written (or, after an operator restart, resumed) status showed,
  and post ``Drained`` / ``Undrained`` Events and count them. Because the comparison is
  against status, each transition is announced once, also across restarts: a drain that
  expired while the operator was stopped is announced as Expired when it comes back;
* a ``DrainIgnored`` Warning when ``spec.drains`` names a provider the chain lacks (the
  ``DrainsValid`` condition says the same, lastingly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from chainop.core import drains as drain_rules
from chainop.core.conditions import get_condition
from chainop.core.health import ProviderHealth
from chainop.core.models import Condition, ProviderChainSpec, ProviderChainStatus, ProviderDrain
from chainop.kube.client import ObjectRef
from chainop.metrics import Metrics

#: ``Runtime.event``: (ref, type=, reason=, message=) -> None.
PostEvent = Callable[..., None]


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


def drained(spec: ProviderChainSpec | None, name: str, *, now: float) -> bool:
    """Whether ``name`` is drained by hand in this chain at ``now``."""
    return spec is not None and name in drain_rules.in_effect(spec, now=_utc(now))


def observe_probe(
    health: ProviderHealth, *, now: float, ok: bool, latency_ms: int | None, error: str
) -> ProviderHealth:
    """A drained provider's probe: keep its last error, latency and failure streak true,
    but never make it Unhealthy, exclude, restore or restart it (it is out of service by
    hand; its failures are expected and are nobody's alarm). Undrained, it is judged on
    this record at once: a streak already at the threshold turns it Unhealthy on the
    next failed probe."""
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


def announce(
    *,
    ref: ObjectRef,
    namespace: str,
    chain: str,
    shown: dict[str, ProviderDrain],
    previous_conditions: Sequence[Condition],
    built: ProviderChainStatus,
    now: float,
    post: PostEvent,
    metrics: Metrics,
) -> dict[str, ProviderDrain]:
    """Post the Events of the drain transitions from ``shown`` to ``built``; return what
    ``built`` shows (the next comparison's ``shown``).

    ``previous_conditions`` are the last written or resumed status' conditions (the
    DrainsValid warning is posted when that condition turns False or its message changes).
    """
    after = drain_rules.shown(built)
    for change in drain_rules.changes(shown, after, now=_utc(now)):
        post(ref, type="Normal", reason=change.reason, message=change.message)
        metrics.drain_changes.labels(
            namespace, chain, change.provider, "Expired" if change.expired else change.reason
        ).inc()
    condition = get_condition(built.conditions, drain_rules.DRAINS_VALID)
    before = get_condition(previous_conditions, drain_rules.DRAINS_VALID)
    if (
        condition is not None
        and condition.status == "False"
        and (before is None or before.message != condition.message)
    ):
        post(ref, type="Warning", reason=drain_rules.DRAIN_IGNORED, message=condition.message)
    return after
