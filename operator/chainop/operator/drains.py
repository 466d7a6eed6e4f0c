"""Drains in the running operator: Events each way, and what a drain forbids.

The meaning of a drain is the core's (``chainop.core.drains``): derived from the spec and
``now`` only. This module wires it into the runtime's loop:

* :func:`drained` — whether a provider is drained at ``now`` (its probes then only
  observe, ``chainop.core.drains.observe_probe``, and self-healing neither excludes nor
  restarts it);
* :func:`announce` — each time a chain's status is written, compare the drains it shows
  with those its last written (or, after an operator restart, resumed) status showed,
  and post ``Drained`` / ``Undrained`` Events and count them. Because the comparison is
  against status, and made only after the write succeeded, each transition is announced
  once, also across restarts and refused writes: a drain that expired while the operator
  was stopped is announced as Expired when it comes back;
* a ``DrainIgnored`` Warning when ``spec.drains`` names a provider the chain lacks (the
  ``DrainsValid`` condition says the same, lastingly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from chainop.core import drains as drain_rules
from chainop.core.conditions import get_condition
from chainop.core.models import Condition, ProviderChainSpec, ProviderChainStatus, ProviderDrain
from chainop.kube.client import ObjectRef
from chainop.metrics import Metrics
from chainop.operator import audit

#: ``Runtime.event``: (ref, type=, reason=, message=) -> None.
PostEvent = Callable[..., None]


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


def drained(spec: ProviderChainSpec | None, name: str, *, now: float) -> bool:
    """Whether ``name`` is drained by hand in this chain at ``now``."""
    return spec is not None and name in drain_rules.in_effect(spec, now=_utc(now))


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
    spec: ProviderChainSpec | None = None,
) -> dict[str, ProviderDrain]:
    """Post the Events of the drain transitions from ``shown`` to ``built``; return what
    ``built`` shows (the next comparison's ``shown``).

    ``previous_conditions`` are the last written or resumed status' conditions (the
    DrainsValid warning is posted when that condition turns False or its message changes).
    """
    after = drain_rules.shown(built)
    for change in drain_rules.changes(shown, after, now=_utc(now)):
        post(ref, type="Normal", reason=change.reason, message=change.message, dedupe=False)
        metrics.drain_changes.labels(
            namespace, chain, change.provider, "Expired" if change.expired else change.reason
        ).inc()
        known = spec.provider(change.provider) if spec is not None else None
        audit.record(
            "drain",
            namespace=namespace,
            chain=chain,
            provider=change.provider,
            provider_tier=known.privacy_tier.value if known is not None else None,
            outcome="Expired" if change.expired else change.reason,
            reason=change.message,
        )
    condition = get_condition(built.conditions, drain_rules.DRAINS_VALID)
    before = get_condition(previous_conditions, drain_rules.DRAINS_VALID)
    if (
        condition is not None
        and condition.status == "False"
        and (before is None or before.message != condition.message)
    ):
        post(ref, type="Warning", reason=drain_rules.DRAIN_IGNORED, message=condition.message)
    return after
