"""Provider health as pure state transitions: failures, benching, probes, states.

Every function here is purely computational: it takes the current ``ProviderHealth``, an
outcome and ``now`` (seconds since the epoch, injected by the caller) and returns the
next ``ProviderHealth``. No clock is read, nothing sleeps, so tests drive time by hand
and the operator can persist the state in status and resume it after a restart.

The rules (DESIGN.md, "Executing a chain" and "Health and self-healing"):

* every failed attempt counts toward ``consecutive_failures``; at ``failureThreshold``
  the provider is benched for ``initialSeconds x 2^(benchings-1)``, capped at
  ``maxSeconds``; a 429 with Retry-After benches at once for at least that long (still
  within the cap, so a hostile header cannot bench a provider for a day);
* a new benching never shortens one already running: the later deadline wins; failures
  while benched (requests already in flight when the bench began) do not escalate it;
* any success resets the failure count and the cooldown level;
* exempt providers are never benched;
* failures while a restart chainop ordered is under way cost no penalty;
* ``unhealthyThreshold`` failed probes in a row make the provider Unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from chainop.core.models import CooldownSpec, ProviderState, ProviderStatus


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """Everything chainop remembers about one provider's health; times in epoch seconds."""

    name: str
    consecutive_failures: int = 0
    benchings: int = 0
    cooldown_until: float | None = None
    consecutive_probe_failures: int = 0
    unhealthy: bool = False
    slow: bool = False
    last_error: str = ""
    last_probe_time: float | None = None
    last_probe_latency_ms: int | None = None
    excluded_since: float | None = None
    restarts: int = 0
    last_restart_time: float | None = None
    recovery_attempts: int = 0
    next_recovery_time: float | None = None

    def is_benched(self, now: float) -> bool:
        """Whether the provider is cooling down at ``now``."""
        return self.cooldown_until is not None and now < self.cooldown_until

    @property
    def excluded(self) -> bool:
        """Whether self-healing took it out of the active order."""
        return self.excluded_since is not None


def cooldown_seconds(policy: CooldownSpec, *, benchings: int) -> float:
    """Length of the ``benchings``-th benching: exponential, capped. Purely computational."""
    if benchings < 1:
        return 0.0
    # Cap the exponent first: 2**1000 would overflow a float.
    exponent = min(benchings - 1, 64)
    return float(min(policy.initial_seconds * (2.0**exponent), policy.max_seconds))


def record_success(health: ProviderHealth, *, now: float) -> ProviderHealth:
    """A real request succeeded: reset the failure count, the cooldown and its level."""
    del now  # kept for a uniform signature; success needs no time
    return replace(
        health,
        consecutive_failures=0,
        benchings=0,
        cooldown_until=None,
        last_error="",
    )


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """The next health, and whether this failure started (or extended) a benching."""

    health: ProviderHealth
    benched: bool
    cooldown_seconds: float = 0.0


def record_failure(
    health: ProviderHealth,
    *,
    now: float,
    error: str,
    failure_threshold: int,
    cooldown: CooldownSpec,
    exempt: bool = False,
    retry_after: float | None = None,
    restart_in_flight: bool = False,
) -> FailureOutcome:
    """A transient failure of a real request (or a passive signal). Purely computational.

    ``retry_after`` comes from a 429's Retry-After header; it benches at once, for at
    least that long (capped at ``cooldown.max_seconds``).
    """
    if restart_in_flight:
        # A restart we ordered is under way: failures are expected, no penalty.
        return FailureOutcome(replace(health, last_error=error), benched=False)
    failures = health.consecutive_failures + 1
    updated = replace(health, consecutive_failures=failures, last_error=error)
    if exempt:
        return FailureOutcome(updated, benched=False)
    rate_limited = retry_after is not None
    if failures < failure_threshold and not rate_limited:
        return FailureOutcome(updated, benched=False)
    if health.is_benched(now):
        # Already benched: these are requests that were in flight when the bench began
        # (or the terminus, tried anyway). They are no news: no escalation of the level,
        # and only a Retry-After may push the deadline later (never earlier).
        deadline = health.cooldown_until or now
        if retry_after is not None:
            deadline = max(deadline, now + min(retry_after, cooldown.max_seconds))
        return FailureOutcome(replace(updated, cooldown_until=deadline), benched=False)
    benchings = health.benchings + 1
    seconds = cooldown_seconds(cooldown, benchings=benchings)
    if retry_after is not None:
        seconds = min(max(seconds, retry_after), cooldown.max_seconds)
    deadline = now + seconds
    if health.cooldown_until is not None and health.cooldown_until > deadline:
        deadline = health.cooldown_until  # the later deadline wins
    return FailureOutcome(
        replace(updated, benchings=benchings, cooldown_until=deadline),
        benched=True,
        cooldown_seconds=deadline - now,
    )


def record_probe(
    health: ProviderHealth,
    *,
    now: float,
    ok: bool,
    latency_ms: int | None = None,
    error: str = "",
    unhealthy_threshold: int,
    slow_ms: float | None = None,
    restart_in_flight: bool = False,
) -> ProviderHealth:
    """An active probe finished. Purely computational.

    A success clears Unhealthy (recovery of an Excluded provider is ``healing.recover``'s
    job, not this one's). A failure while a restart is under way costs nothing.
    """
    if ok:
        return replace(
            health,
            consecutive_probe_failures=0,
            unhealthy=False,
            slow=slow_ms is not None and latency_ms is not None and latency_ms > slow_ms,
            last_probe_time=now,
            last_probe_latency_ms=latency_ms,
            last_error="" if health.consecutive_failures == 0 else health.last_error,
        )
    if restart_in_flight:
        return replace(health, last_probe_time=now, last_error=error)
    failures = health.consecutive_probe_failures + 1
    return replace(
        health,
        consecutive_probe_failures=failures,
        unhealthy=health.unhealthy or failures >= unhealthy_threshold,
        last_probe_time=now,
        last_error=error,
    )


def state_of(health: ProviderHealth, *, now: float) -> ProviderState:
    """The state shown in status, derived from the bookkeeping. Purely computational."""
    if health.excluded:
        return ProviderState.EXCLUDED
    if health.unhealthy:
        return ProviderState.UNHEALTHY
    if health.is_benched(now):
        return ProviderState.COOLING_DOWN
    if health.consecutive_failures or health.consecutive_probe_failures or health.slow:
        return ProviderState.DEGRADED
    return ProviderState.HEALTHY


# --------------------------------------------------------------------------- status I/O


def _to_epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _to_time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def from_status(status: ProviderStatus) -> ProviderHealth:
    """Rebuild the bookkeeping from a chain's status (resume after an operator restart)."""
    return ProviderHealth(
        name=status.name,
        consecutive_failures=status.consecutive_failures,
        benchings=status.benchings,
        cooldown_until=_to_epoch(status.cooldown_until),
        consecutive_probe_failures=status.consecutive_probe_failures,
        unhealthy=status.state in (ProviderState.UNHEALTHY, ProviderState.EXCLUDED),
        last_error=status.last_error,
        last_probe_time=_to_epoch(status.last_probe_time),
        last_probe_latency_ms=status.last_probe_latency_ms,
        excluded_since=_to_epoch(status.excluded_since),
        restarts=status.restarts,
        last_restart_time=_to_epoch(status.last_restart_time),
        recovery_attempts=status.recovery_attempts,
        next_recovery_time=_to_epoch(status.next_recovery_time),
    )


def to_status(health: ProviderHealth, *, now: float) -> ProviderStatus:
    """The status entry for one provider. Purely computational.

    An expired cooldown is written as null so status does not show stale deadlines.
    """
    cooldown_until = health.cooldown_until if health.is_benched(now) else None
    return ProviderStatus(
        name=health.name,
        state=state_of(health, now=now),
        consecutive_failures=health.consecutive_failures,
        benchings=health.benchings,
        cooldown_until=_to_time(cooldown_until),
        consecutive_probe_failures=health.consecutive_probe_failures,
        last_probe_time=_to_time(health.last_probe_time),
        last_probe_latency_ms=health.last_probe_latency_ms,
        last_error=health.last_error,
        excluded_since=_to_time(health.excluded_since),
        restarts=health.restarts,
        last_restart_time=_to_time(health.last_restart_time),
        recovery_attempts=health.recovery_attempts,
        next_recovery_time=_to_time(health.next_recovery_time),
    )
