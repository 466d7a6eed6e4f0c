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
* ``unhealthyThreshold`` failed probes in a row make the provider Unhealthy;
* a provider's own retry delay (Retry-After & co.) benches at least that long, beyond
  ``cooldown.maxSeconds`` when it says so, up to ``health.retryAfterCapSeconds``;
* quota exhausted benches for ``health.quotaCooldownSeconds`` at once (or the provider's
  own delay, when it gave one), without a retry;
* request-path evidence: for a provider with a backend, ``wedged.failures`` failed real
  calls (timeouts, refused, 5xx) within ``wedged.windowSeconds`` with no success between
  them make it Unhealthy ("Wedged") even while its probes pass;
* model drift: a listing without the configured model makes it Unhealthy
  ("ModelNotServed") until a listing has it again; it is never restarted for that.

``reason`` says in one CamelCase word why a provider is not Healthy (status shows it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from chainop.core.models import CooldownSpec, ProviderState, ProviderStatus, WedgedSpec

#: Reasons (``ProviderHealth.reason``) that only a listing or a real success can clear.
WEDGED = "Wedged"
MODEL_NOT_SERVED = "ModelNotServed"
QUOTA_EXHAUSTED = "QuotaExhausted"
RATE_LIMITED = "RateLimited"
PROBE_FAILED = "ProbeFailed"
FAILING = "Failing"
SLOW = "Slow"
#: Reasons the kubelet gives for a backend pod that cannot run (see healing.pod_problem):
#: the kubelet is already retrying (or failing to start) the container, and a new
#: ReplicaSet would crash, or fail to pull, the same way.
POD_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_KEPT_REASONS = frozenset({WEDGED, MODEL_NOT_SERVED, QUOTA_EXHAUSTED, RATE_LIMITED}) | POD_REASONS


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
    #: Why it is not Healthy (one CamelCase word, see the module constants).
    reason: str = ""
    #: Times of real calls that failed (timeouts, refused, 5xx) since the last success.
    request_failures: tuple[float, ...] = ()
    #: What the listing served instead, while the configured model is missing.
    served: tuple[str, ...] = ()

    @property
    def wedged(self) -> bool:
        """Unhealthy from request-path evidence (calls fail while probes may pass)."""
        return self.unhealthy and self.reason == WEDGED

    @property
    def model_missing(self) -> bool:
        """Unhealthy because the listing lacks the configured model (drift)."""
        return self.unhealthy and self.reason == MODEL_NOT_SERVED

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
    wedged = health.wedged
    return replace(
        health,
        consecutive_failures=0,
        benchings=0,
        cooldown_until=None,
        last_error="",
        request_failures=(),
        # A real answer is the proof a wedge is over; drift is the listing's to clear.
        unhealthy=False if wedged else health.unhealthy,
        reason="" if not health.unhealthy or wedged else health.reason,
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
    retry_after_cap: float | None = None,
    restart_in_flight: bool = False,
    wedge: WedgedSpec | None = None,
) -> FailureOutcome:
    """A transient failure of a real request (or a passive signal). Purely computational.

    ``retry_after`` is the provider's own delay (a 429's Retry-After and the like); it
    benches at once, for at least that long, beyond ``cooldown.max_seconds`` when the
    provider says so, up to ``retry_after_cap`` (default: ``cooldown.max_seconds``).
    ``wedge`` (given for providers with a backend, for timeouts, refusals and 5xx) turns
    enough failures in its window, with no success between them, into Unhealthy/Wedged.
    """
    if restart_in_flight:
        # A restart we ordered is under way: failures are expected, no penalty.
        return FailureOutcome(replace(health, last_error=error), benched=False)
    failures = health.consecutive_failures + 1
    updated = replace(health, consecutive_failures=failures, last_error=error)
    if wedge is not None:
        recent = tuple(t for t in health.request_failures if now - t <= wedge.window_seconds)
        recent = (*recent, now)[-wedge.failures :]
        updated = replace(updated, request_failures=recent)
        if len(recent) >= wedge.failures and not health.unhealthy:
            updated = replace(updated, unhealthy=True, reason=WEDGED)
    if retry_after is not None:
        cap = cooldown.max_seconds if retry_after_cap is None else retry_after_cap
        retry_after = min(retry_after, max(cap, 0.0))
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
            deadline = max(deadline, now + retry_after)
        return FailureOutcome(replace(updated, cooldown_until=deadline), benched=False)
    benchings = health.benchings + 1
    seconds = cooldown_seconds(cooldown, benchings=benchings)
    if retry_after is not None:
        # The provider's own delay wins over our schedule, longer or shorter.
        seconds = max(min(seconds, cooldown.max_seconds), retry_after)
    deadline = now + seconds
    if health.cooldown_until is not None and health.cooldown_until > deadline:
        deadline = health.cooldown_until  # the later deadline wins
    # FAILING and PROBE_FAILED are derived by reason_of; only reasons with state are kept.
    reason = RATE_LIMITED if retry_after is not None else ""
    if updated.unhealthy:
        reason = updated.reason
    return FailureOutcome(
        replace(updated, benchings=benchings, cooldown_until=deadline, reason=reason),
        benched=True,
        cooldown_seconds=deadline - now,
    )


def record_quota_exhausted(
    health: ProviderHealth,
    *,
    now: float,
    error: str,
    quota_cooldown: float,
    retry_after: float | None = None,
    retry_after_cap: float | None = None,
    exempt: bool = False,
) -> FailureOutcome:
    """The provider's quota, credit or spend limit ran out. Purely computational.

    Not a short rate limit: bench at once for ``quota_cooldown`` (the provider's own
    delay instead, when it gave one, up to ``retry_after_cap``). It does not count as a
    consecutive failure (the provider is not broken) and never escalates the cooldown
    level; a later deadline already set stands. Exempt providers are never benched.
    """
    updated = replace(health, last_error=error)
    if exempt:
        return FailureOutcome(updated, benched=False)
    seconds = quota_cooldown
    if retry_after is not None:
        seconds = retry_after if retry_after_cap is None else min(retry_after, retry_after_cap)
    deadline = now + seconds
    if health.cooldown_until is not None and health.cooldown_until >= deadline:
        return FailureOutcome(updated, benched=False)
    return FailureOutcome(
        replace(updated, cooldown_until=deadline, reason=QUOTA_EXHAUSTED),
        benched=True,
        cooldown_seconds=seconds,
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
    generated: bool = False,
) -> ProviderHealth:
    """An active probe finished. Purely computational.

    A success clears Unhealthy (recovery of an Excluded provider is ``healing.recover``'s
    job, not this one's) — except a wedge, which only a probe that generated
    (``generated=True``) or a real answer clears: listings and /health answer while a
    hung engine does not. A failure while a restart is under way costs nothing.
    """
    if ok:
        keep_wedge = health.wedged and not generated
        cleared_drift = health.model_missing
        return replace(
            health,
            consecutive_probe_failures=0,
            unhealthy=keep_wedge,
            reason=health.reason if keep_wedge else "",
            served=() if cleared_drift else health.served,
            # Evidence from real calls outlives a listing: only generating disproves it.
            request_failures=() if generated else health.request_failures,
            slow=slow_ms is not None and latency_ms is not None and latency_ms > slow_ms,
            last_probe_time=now,
            last_probe_latency_ms=latency_ms,
            last_error=(
                "" if health.consecutive_failures == 0 and not keep_wedge else health.last_error
            ),
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


def record_model_missing(
    health: ProviderHealth, *, now: float, error: str, served: tuple[str, ...]
) -> ProviderHealth:
    """A listing lacks the configured model: drift. Purely computational.

    Unhealthy at once (a listing is a definite answer, not a flaky signal), with the
    reason ModelNotServed and what is served instead; restarting would not bring the
    model back, so the operator excludes it but never restarts it.
    """
    return replace(
        health,
        unhealthy=True,
        reason=MODEL_NOT_SERVED,
        served=served[:20],
        last_probe_time=now,
        last_error=error,
    )


def record_loading(health: ProviderHealth, *, now: float) -> ProviderHealth:
    """The server's health endpoint says it is loading its model (HTTP 503 "Loading
    model"): expected after a restart, so neither a failure nor a recovery."""
    return replace(health, last_probe_time=now, last_error="loading model")


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
        # Only the reasons that carry state of their own; the rest are derived anew.
        reason=status.reason if status.reason in _KEPT_REASONS else "",
        served=tuple(status.served_models),
    )


def reason_of(health: ProviderHealth, *, now: float) -> str:
    """The one-word reason shown next to a state that is not Healthy. Purely computational."""
    state = state_of(health, now=now)
    if state is ProviderState.HEALTHY:
        return ""
    if state in (ProviderState.EXCLUDED, ProviderState.UNHEALTHY):
        return health.reason or PROBE_FAILED
    if state is ProviderState.COOLING_DOWN:
        return health.reason if health.reason in (QUOTA_EXHAUSTED, RATE_LIMITED) else FAILING
    if health.slow and not (health.consecutive_failures or health.consecutive_probe_failures):
        return SLOW
    return PROBE_FAILED if health.consecutive_probe_failures else FAILING


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
        reason=reason_of(health, now=now),
        served_models=list(health.served) if health.model_missing else [],
    )
