"""The rules of the chain walk, one small function each. Purely computational.

``chainop.core.chain.execute`` only sequences these: which provider comes next and whether
it is skipped (:func:`skip_for`, :func:`spill_for`), what an error does to the provider's
health and to the walk (:func:`react`), when a hedge starts (:func:`hedge_delay`), and
when a task waits for the earliest recovery instead of failing (:func:`plan_wait`). Each
is unit-tested on its own with an injected clock (tests/unit/test_rules.py).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from chainop.core import load as load_rules
from chainop.core.board import HealthBoard
from chainop.core.errors import (
    ContentPolicyError,
    FirstTokenTimeoutError,
    ModelDriftError,
    ModelNotFoundError,
    ProviderError,
    QuotaExhaustedError,
    TransientError,
    UnsupportedRequestError,
)
from chainop.core.health import FailureOutcome, ProviderHealth
from chainop.core.latency import LatencyStats
from chainop.core.models import (
    AttemptOutcome,
    HedgeSpec,
    ProviderChainSpec,
    ProviderSpec,
    ProviderType,
    RequestSpec,
    Strategy,
)


def utc(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime (status times)."""
    return datetime.fromtimestamp(epoch, tz=UTC)


# --------------------------------------------------------------------------- order


def ordered_for_strategy(
    chain: ProviderChainSpec, eligible: Sequence[str], *, rotation: int = 0
) -> list[str]:
    """Apply the chain's strategy to a routing decision's order.

    PrimaryOnly keeps the head; RoundRobin rotates the start; FallbackOnly drops the
    chain's own head (spec order, not the decision's: draining the primary means that
    provider, whichever rule put it first) and keeps the rest in order.
    """
    names = list(eligible)
    if not names:
        return names
    if chain.strategy is Strategy.PRIMARY_ONLY:
        return names[:1]
    if chain.strategy is Strategy.ROUND_ROBIN:
        start = rotation % len(names)
        return names[start:] + names[:start]
    if chain.strategy is Strategy.FALLBACK_ONLY:
        head = chain.providers[0].name
        return [name for name in names if name != head]
    return names


# --------------------------------------------------------------------------- skipping


def capability_miss(provider: ProviderSpec, request: RequestSpec) -> str | None:
    """Why ``provider`` cannot take ``request`` by its declared capabilities, or None."""
    caps = provider.capabilities
    if caps.vision is False and request.needs_vision():
        return "request has images; provider declares vision=false"
    if caps.tools is False and request.needs_tools():
        return "request has tools or tool calls; provider declares tools=false"
    if caps.context_window is not None:
        needed = request.estimated_tokens()
        if needed > caps.context_window:
            return (
                f"request needs ~{needed} tokens; provider declares "
                f"contextWindow={caps.context_window}"
            )
    return None


@dataclass(frozen=True, slots=True)
class Skip:
    """A provider passed over without a call: why, and how the attempt is recorded."""

    reason: str
    outcome: AttemptOutcome = AttemptOutcome.SKIPPED
    saturated: bool = False


def skip_for(
    provider: ProviderSpec,
    state: ProviderHealth,
    *,
    request: RequestSpec,
    now: float,
    is_terminus: bool,
    trial_busy: bool,
) -> Skip | None:
    """Whether the walk passes ``provider`` by (load aside: see :func:`spill_for`).

    Benched and Excluded providers are skipped except the terminus (always attempted);
    a request beyond the declared capabilities is skipped without penalty; after a
    benching one request at a time tries the provider (half-open), the others skip it.
    """
    if not is_terminus and (state.excluded or state.is_benched(now)):
        why = (
            "excluded (unhealthy)"
            if state.excluded
            else f"cooling down until {utc(state.cooldown_until or now).isoformat()}"
        )
        return Skip(why)
    miss = capability_miss(provider, request)
    if miss is not None:
        return Skip(miss, outcome=AttemptOutcome.UNSUPPORTED)
    if state.benchings > 0 and not is_terminus and trial_busy:
        return Skip("half-open after a benching: another request is trying it")
    return None


def saturation_of(provider: ProviderSpec, board: HealthBoard, *, now: float) -> str | None:
    """Why ``provider`` is saturated by a fresh load reading (and our calls since), or None."""
    return load_rules.saturation(
        board.load_now(provider.name),
        provider.load_signal,
        now=now,
        max_age_seconds=load_rules.max_age(board.chain.health.probe.interval_seconds),
    )


def spill_for(
    index: int,
    providers: Sequence[ProviderSpec],
    board: HealthBoard,
    *,
    request: RequestSpec,
    now: float,
) -> Skip | None:
    """Skip ``providers[index]`` for load, when saturated and a later one can take it.

    Only providers of the routing decision are considered, so privacy stays a hard floor:
    a task that may only run locally still queues on a saturated local provider when no
    other local one is free. A later provider counts when it is neither benched nor
    excluded (a benched terminus is no better place to go), can take the request and
    is not saturated itself. Never a penalty to the skipped provider's health.
    """
    why = saturation_of(providers[index], board, now=now)
    if why is None:
        return None
    last = len(providers) - 1
    for offset, later in enumerate(providers[index + 1 :], start=index + 1):
        state = board.get(later.name)
        if state.excluded or state.is_benched(now):
            continue
        if state.benchings > 0 and offset != last and later.name in board.trials:
            continue  # its half-open trial is taken: the walk would skip it too
        if capability_miss(later, request) is not None:
            continue
        if saturation_of(later, board, now=now) is not None:
            continue
        return Skip(why, saturated=True)
    return None


# --------------------------------------------------------------------------- outcomes


class Next(enum.Enum):
    """What the walk does after a failed call."""

    RETRY = "retry"
    ADVANCE = "advance"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The walk's next move after an error, and the task's failure if it fails."""

    next: Next
    failure_reason: str = ""
    failure_message: str = ""
    #: Set when the provider was benched by this error (for the observer).
    benched: FailureOutcome | None = None
    quota: FailureOutcome | None = None


def react(
    error: ProviderError,
    provider: ProviderSpec,
    board: HealthBoard,
    *,
    now: float,
    is_terminus: bool,
    retries_left: int,
) -> Verdict:
    """Record ``error`` in the provider's health and say what the walk does next.

    Transient errors count (retry on the same provider while retries last and it is not
    benched, else advance); model-not-found and capability mismatches advance without
    penalty; quota exhausted benches for the quota cooldown and advances; a content
    policy refusal fails unless ``advanceOnContentPolicy``; other permanent errors fail
    unless ``advanceOnPermanentError``.
    """
    chain = board.chain
    if isinstance(error, TransientError):
        outcome = board.failure(provider, error, now=now)
        if outcome.benched:
            return Verdict(Next.ADVANCE, benched=outcome)
        if isinstance(error, FirstTokenTimeoutError | ModelDriftError):
            return Verdict(Next.ADVANCE)  # counted; retrying the same server is futile
        # Benched meanwhile (by a concurrent task): do not retry it, advance.
        benched_now = not is_terminus and outcome.health.is_benched(now)
        if retries_left > 0 and not benched_now:
            return Verdict(Next.RETRY)
        return Verdict(Next.ADVANCE)
    if isinstance(error, ModelNotFoundError | UnsupportedRequestError):
        return Verdict(Next.ADVANCE)
    if isinstance(error, QuotaExhaustedError):
        quota = board.quota_exhausted(provider, error, now=now)
        return Verdict(Next.ADVANCE, quota=quota if quota.benched else None)
    if isinstance(error, ContentPolicyError):
        if chain.advance_on_content_policy:
            return Verdict(Next.ADVANCE)
        return Verdict(
            Next.FAIL,
            "ContentPolicy",
            f"{provider.name}: {error.message} (not retried elsewhere: "
            "advanceOnContentPolicy is false)",
        )
    # PermanentError (and any unknown subclass) fails fast unless told otherwise.
    if chain.advance_on_permanent_error:
        return Verdict(Next.ADVANCE)
    return Verdict(
        Next.FAIL,
        error.kind.value,
        f"{provider.name}: {error.message} (not retried: failing over cannot fix a bad "
        "request or key)",
    )


# --------------------------------------------------------------------------- hedging


def hedge_delay(spec: HedgeSpec | None, stats: LatencyStats | None) -> float | None:
    """Seconds after a call starts at which its hedge starts, or None for no hedge.

    afterPercentile uses the provider's observed latency once enough calls are known;
    until then (or when only it is set and too little is known: no hedge) afterMillis.
    """
    if spec is None:
        return None
    if spec.after_percentile is not None and stats is not None:
        observed = stats.percentile(spec.after_percentile)
        if observed is not None:
            return max(observed, 1.0) / 1000
    if spec.after_millis is not None:
        return spec.after_millis / 1000
    return None


def may_hedge_to(provider: ProviderSpec) -> bool:
    """A hedge never starts a job: a jobs provider's work is not cancelled by a winner."""
    return provider.type is not ProviderType.JOBS


def prompt_cost(provider: ProviderSpec, request: RequestSpec) -> float:
    """A lower bound of what a cancelled call cost: its prompt at the input price."""
    prompt_tokens = max(request.estimated_tokens() - request.max_tokens, 0)
    return prompt_tokens * provider.cost.input_per_million_tokens / 1_000_000


# --------------------------------------------------------------------------- waiting


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for ``provider``'s cooldown to end at ``until`` (epoch seconds)."""

    provider: str
    until: float


def plan_wait(
    providers: Sequence[ProviderSpec],
    board: HealthBoard,
    *,
    now: float,
    deadline: float | None,
) -> Wait | None:
    """When every provider is benched, terminus included, wait for the earliest end.

    Only when that end comes before the task's deadline (``deadline`` in epoch seconds):
    a task without the time to wait goes on as before (the terminus is attempted) and
    fails with every provider's reason. Without a deadline (a library caller, never a
    DelegatedTask) nobody would run the task again, so no wait either. Excluded
    providers have no cooldown to wait for; when all are excluded there is nothing to
    wait for.
    """
    if deadline is None:
        return None
    ends: list[tuple[float, str]] = []
    for provider in providers:
        state = board.get(provider.name)
        if state.excluded:
            continue
        if not state.is_benched(now) or state.cooldown_until is None:
            return None
        ends.append((state.cooldown_until, provider.name))
    if not ends:
        return None
    until, name = min(ends)
    if until >= deadline:
        return None
    return Wait(provider=name, until=until)
