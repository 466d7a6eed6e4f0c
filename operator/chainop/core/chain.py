"""The chain executor: run one request through a routing decision, failing over.

This is DESIGN.md's "Executing a chain" made code. It knows providers only through the
one-method ``ProviderCall`` protocol and health only through ``HealthBoard`` (in-memory,
no I/O), so every rule is testable with plain async functions and an injected clock:

* skip CoolingDown/Excluded providers, except the terminus (always attempted);
* retry transient errors ``transientRetries`` times on the same provider; each failure
  counts; at ``failureThreshold`` bench and advance at once;
* model-not-found and capability mismatches (declared, or said by the provider in any
  status) advance without penalty;
* quota exhausted advances at once and benches for ``health.quotaCooldownSeconds``;
* a content-policy refusal fails the task (never a success, never the provider's
  fault) unless ``advanceOnContentPolicy``;
* other permanent errors (bad request, auth) fail at once unless
  ``advanceOnPermanentError``;
* failed real calls of a provider with a backend are evidence of a wedged engine;
* the task's own deadline is never the provider's fault;
* an incomplete reply is a transient error: never a success;
* when everything fails, one error joins every provider's reason.

``PrimaryOnly`` tries the head only; ``RoundRobin`` rotates the start over the eligible
providers and falls back like ``Fallback``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from chainop.core.board import HealthBoard
from chainop.core.calls import CallContext, Completion, ProviderCall
from chainop.core.errors import (
    ChainExhaustedError,
    ContentPolicyError,
    ModelNotFoundError,
    ProviderError,
    QuotaExhaustedError,
    TransientError,
    UnsupportedRequestError,
)
from chainop.core.models import (
    Attempt,
    AttemptOutcome,
    PrivacyTier,
    ProviderChainSpec,
    ProviderSpec,
    RequestSpec,
    Strategy,
)

SUCCEEDED = AttemptOutcome.SUCCEEDED
SKIPPED = AttemptOutcome.SKIPPED


# --------------------------------------------------------------------------- observer


class ChainObserver:
    """Hooks for Events and metrics; every method is a no-op here, override what you need.

    Hooks are synchronous and must not block: they run inside the executor's loop.
    """

    def on_attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        """An attempt ended (any outcome, including Skipped)."""

    def on_failover(
        self, from_provider: ProviderSpec, to_provider: ProviderSpec, reason: str
    ) -> None:
        """Work moved on from one provider to the next."""

    def on_benched(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        """A provider was benched (or its benching extended)."""

    def on_spillover(self, from_provider: ProviderSpec, to_provider: ProviderSpec) -> None:
        """Work left a Sovereign provider for a non-Sovereign one."""

    def on_quota_exhausted(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        """A provider said its quota, credit or spend limit ran out (benched ``seconds``)."""


#: The observer of executions nobody observes (its hooks do nothing).
_NO_OBSERVER = ChainObserver()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Resume:
    """Where an interrupted execution stands (from task status, after an operator restart)."""

    attempts: tuple[Attempt, ...] = ()
    provider: str | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of one execution: a completion, or the reason there is none."""

    attempts: tuple[Attempt, ...]
    completion: Completion | None = None
    provider: str = ""
    attempt: int = 0
    was_terminus: bool = False
    latency_ms: int = 0
    cost_usd: float = 0.0
    #: CamelCase reason when failed: ChainExhausted, PermanentError, DeadlineExceeded…
    failure_reason: str = ""
    failure_message: str = ""

    @property
    def succeeded(self) -> bool:
        """Whether a complete answer came back."""
        return self.completion is not None


def cost_of(provider: ProviderSpec, completion: Completion) -> float:
    """USD cost of a completion: the provider's own figure, else usage x price."""
    if completion.cost_usd is not None:
        return max(completion.cost_usd, 0.0)
    return (
        completion.input_tokens * provider.cost.input_per_million_tokens
        + completion.output_tokens * provider.cost.output_per_million_tokens
    ) / 1_000_000


def capability_miss(provider: ProviderSpec, request: RequestSpec) -> str | None:
    """Why ``provider`` cannot take ``request`` by its declared capabilities, or None."""
    caps = provider.capabilities
    if caps.vision is False and request.needs_vision():
        return "request has images; provider declares vision=false"
    if caps.tools is False and request.tools:
        return "request has tools; provider declares tools=false"
    if caps.context_window is not None:
        needed = request.estimated_tokens()
        if needed > caps.context_window:
            return (
                f"request needs ~{needed} tokens; provider declares "
                f"contextWindow={caps.context_window}"
            )
    return None


def ordered_for_strategy(
    chain: ProviderChainSpec, eligible: Sequence[str], *, rotation: int = 0
) -> list[str]:
    """Apply the strategy to the eligible order. Purely computational."""
    names = list(eligible)
    if not names:
        return names
    if chain.strategy is Strategy.PRIMARY_ONLY:
        return names[:1]
    if chain.strategy is Strategy.ROUND_ROBIN:
        start = rotation % len(names)
        return names[start:] + names[:start]
    return names


# --------------------------------------------------------------------------- executor


def _job_hook(
    hook: Callable[[str, str, str, int], Awaitable[None]] | None,
    *,
    provider: str,
    key: str,
    attempt: int,
    seen: list[str],
) -> Callable[[str], Awaitable[None]]:
    """Bind one attempt's identity to the caller's "job submitted" hook."""

    async def submitted(job_id: str) -> None:
        seen.append(job_id)
        if hook is not None:
            await hook(provider, job_id, key, attempt)

    return submitted


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


async def execute(
    *,
    chain: ProviderChainSpec,
    eligible: Sequence[str],
    request: RequestSpec,
    call: ProviderCall,
    board: HealthBoard,
    now: Callable[[], float],
    timeout_seconds: float | None = None,
    api_keys: dict[str, str | None] | None = None,
    task_key: str = "",
    rotation: int = 0,
    observer: ChainObserver | None = None,
    resume: Resume | None = None,
    on_job_submitted: Callable[[str, str, str, int], Awaitable[None]] | None = None,
) -> ExecutionResult:
    """Run ``request`` through ``eligible`` (a routing decision's providers).

    ``now`` gives epoch seconds (status times, cooldowns); latencies use the event loop's
    clock. ``timeout_seconds`` is the task's own deadline over every attempt.
    ``task_key`` (the task's uid) seeds idempotency keys: ``{task_key}-{provider}-{n}``
    for the n-th call of this task to that provider, so a replay after a crash sends
    the same key. ``on_job_submitted(provider, job_id, key, attempt)`` is awaited when
    a jobs provider accepted work, before waiting on it.
    """
    observer = observer or _NO_OBSERVER
    keys = api_keys or {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = None if timeout_seconds is None else started + timeout_seconds
    attempts: list[Attempt] = list(resume.attempts if resume else ())
    reasons: list[tuple[str, str]] = []
    order = ordered_for_strategy(chain, eligible, rotation=rotation)
    specs = [chain.provider(name) for name in order]
    providers = [p for p in specs if p is not None]
    if not providers:
        return ExecutionResult(
            attempts=tuple(attempts),
            failure_reason="NoEligibleProvider",
            failure_message="no provider is eligible",
        )
    start_index = 0
    resume_job = None
    if resume is not None and resume.provider is not None:
        names = [p.name for p in providers]
        if resume.provider in names:
            start_index = names.index(resume.provider)
            resume_job = resume.job_id
    calls_to: dict[str, int] = {}
    for earlier in attempts:
        if earlier.outcome != SKIPPED:
            calls_to[earlier.provider] = calls_to.get(earlier.provider, 0) + 1
    # A resumed job's own call is not in ``attempts`` (it was persisted as pending), so
    # counting earlier calls gives it the same number, and the same key, as before.

    def record(provider: ProviderSpec, attempt: Attempt) -> None:
        attempts.append(attempt)
        observer.on_attempt(provider, attempt)

    previous: ProviderSpec | None = None
    last_index = len(providers) - 1
    for index in range(start_index, len(providers)):
        provider = providers[index]
        is_terminus = index == last_index
        if previous is not None:
            observer.on_failover(previous, provider, reasons[-1][1] if reasons else "")
            if (
                previous.privacy_tier is PrivacyTier.SOVEREIGN
                and provider.privacy_tier is not PrivacyTier.SOVEREIGN
            ):
                observer.on_spillover(previous, provider)
        previous = provider
        state = board.get(provider.name)
        at = now()
        if not is_terminus and (state.excluded or state.is_benched(at)):
            why = (
                "excluded (unhealthy)"
                if state.excluded
                else f"cooling down until {_utc(state.cooldown_until or at).isoformat()}"
            )
            record(
                provider,
                Attempt(provider=provider.name, outcome=SKIPPED, error=why, started_at=_utc(at)),
            )
            reasons.append((provider.name, f"skipped: {why}"))
            continue
        miss = capability_miss(provider, request)
        if miss is not None:
            error = UnsupportedRequestError(miss)
            record(
                provider,
                Attempt(
                    provider=provider.name,
                    outcome=AttemptOutcome(error.kind.value),
                    error=miss,
                    started_at=_utc(at),
                ),
            )
            reasons.append((provider.name, miss))
            continue
        # Half-open: once a benching has run out, one request tries the provider again
        # while the others keep skipping it, so a recovering provider is not stampeded.
        trial = state.benchings > 0 and not is_terminus
        if trial and provider.name in board.trials:
            why = "half-open after a benching: another request is trying it"
            record(
                provider,
                Attempt(provider=provider.name, outcome=SKIPPED, error=why, started_at=_utc(at)),
            )
            reasons.append((provider.name, f"skipped: {why}"))
            continue
        if trial:
            board.trials.add(provider.name)
        retries_left = chain.health.transient_retries
        try:
            while True:
                number = len(attempts) + 1
                calls_to[provider.name] = calls_to.get(provider.name, 0) + 1
                key = f"{task_key}-{provider.name}-{calls_to[provider.name]}"
                job_id_seen: list[str] = []

                submitted = _job_hook(
                    on_job_submitted,
                    provider=provider.name,
                    key=key,
                    attempt=number,
                    seen=job_id_seen,
                )
                context = CallContext(
                    timeout=provider.timeout_seconds,
                    api_key=keys.get(provider.name),
                    idempotency_key=key,
                    resume_job_id=resume_job,
                    on_job_submitted=submitted,
                )
                if resume_job is not None:
                    job_id_seen.append(resume_job)
                resume_job = None
                call_started = loop.time()
                started_at = _utc(now())
                remaining = None if deadline is None else deadline - call_started
                try:
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    if remaining is None:
                        completion = await call(provider, request, context)
                    else:
                        async with asyncio.timeout(remaining):
                            completion = await call(provider, request, context)
                except TimeoutError:
                    latency = int((loop.time() - call_started) * 1000)
                    message = f"task deadline of {timeout_seconds:g}s exceeded"
                    record(
                        provider,
                        Attempt(
                            provider=provider.name,
                            outcome=AttemptOutcome.DEADLINE,
                            error=message,
                            latency_ms=latency,
                            started_at=started_at,
                            job_id=job_id_seen[-1] if job_id_seen else None,
                        ),
                    )
                    return ExecutionResult(
                        attempts=tuple(attempts),
                        failure_reason="DeadlineExceeded",
                        failure_message=message,
                    )
                except ProviderError as error:
                    latency = int((loop.time() - call_started) * 1000)
                    record(
                        provider,
                        Attempt(
                            provider=provider.name,
                            outcome=AttemptOutcome(error.kind.value),
                            error=error.message,
                            latency_ms=latency,
                            started_at=started_at,
                            job_id=job_id_seen[-1] if job_id_seen else None,
                        ),
                    )
                    if isinstance(error, TransientError):
                        outcome = board.failure(provider, error, now=now())
                        if outcome.benched:
                            observer.on_benched(provider, outcome.cooldown_seconds, error.message)
                            reasons.append((provider.name, error.message))
                            break
                        # Benched meanwhile (by a concurrent task): do not retry it, advance.
                        benched_now = not is_terminus and outcome.health.is_benched(now())
                        if retries_left > 0 and not benched_now:
                            retries_left -= 1
                            continue
                        reasons.append((provider.name, error.message))
                        break
                    if isinstance(error, ModelNotFoundError | UnsupportedRequestError):
                        reasons.append((provider.name, error.message))
                        break
                    if isinstance(error, QuotaExhaustedError):
                        quota = board.quota_exhausted(provider, error, now=now())
                        if quota.benched:
                            observer.on_quota_exhausted(
                                provider, quota.cooldown_seconds, error.message
                            )
                        reasons.append((provider.name, error.message))
                        break
                    reasons.append((provider.name, error.message))
                    if isinstance(error, ContentPolicyError):
                        if chain.advance_on_content_policy:
                            break
                        return ExecutionResult(
                            attempts=tuple(attempts),
                            failure_reason="ContentPolicy",
                            failure_message=f"{provider.name}: {error.message} (not retried "
                            "elsewhere: advanceOnContentPolicy is false)",
                        )
                    # PermanentError (and any unknown subclass) fails fast unless told otherwise.
                    if chain.advance_on_permanent_error:
                        break
                    return ExecutionResult(
                        attempts=tuple(attempts),
                        failure_reason=error.kind.value,
                        failure_message=f"{provider.name}: {error.message} (not retried: "
                        "failing over cannot fix a bad request or key)",
                    )
                else:
                    latency = int((loop.time() - call_started) * 1000)
                    record(
                        provider,
                        Attempt(
                            provider=provider.name,
                            outcome=SUCCEEDED,
                            latency_ms=latency,
                            started_at=started_at,
                            job_id=completion.job_id or (job_id_seen[-1] if job_id_seen else None),
                        ),
                    )
                    board.success(provider.name, now=now())
                    return ExecutionResult(
                        attempts=tuple(attempts),
                        completion=completion,
                        provider=provider.name,
                        attempt=number,
                        was_terminus=is_terminus,
                        latency_ms=int((loop.time() - started) * 1000),
                        cost_usd=cost_of(provider, completion),
                    )
        finally:
            if trial:
                board.trials.discard(provider.name)
    return ExecutionResult(
        attempts=tuple(attempts),
        failure_reason="AllProvidersFailed",
        failure_message=str(ChainExhaustedError(reasons)),
    )
