"""The chain executor: run one request through a routing decision, failing over.

This is DESIGN.md's "Executing a chain" made code. It knows providers only through the
one-method ``ProviderCall`` protocol and health only through ``HealthBoard`` (in-memory,
no I/O), so every rule is testable with plain async functions and an injected clock.

The rules themselves live in ``chainop.core.rules``, one small function each; this module
only sequences them:

* the order: the strategy (PrimaryOnly, RoundRobin, FallbackOnly) over the decision;
* before a call, :func:`~chainop.core.rules.skip_for` (benched or excluded except the
  terminus, beyond declared capabilities, half-open trial taken) and
  :func:`~chainop.core.rules.spill_for` (saturated by a fresh load signal while a later
  provider of the decision is free: skipped, no penalty);
* after an error, :func:`~chainop.core.rules.react` (retry, advance or fail; what it does
  to the provider's health);
* with ``spec.hedge``, :func:`~chainop.core.rules.hedge_delay` after a call started, an
  extra call on the next eligible provider races it (never a jobs provider, never outside
  the decision); the first complete answer wins and the others are cancelled;
* when every provider is benched, terminus included, :func:`~chainop.core.rules.plan_wait`
  returns a wait for the earliest recovery instead of a doomed call, if the task has the
  time; the caller parks the task until then;
* the task's own deadline is never the provider's fault; an incomplete reply is a
  transient error, never a success; when everything fails, one error joins every
  provider's reason.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from chainop.core import rules
from chainop.core.board import HealthBoard
from chainop.core.calls import CallContext, Completion, ProviderCall
from chainop.core.drift import model_matches
from chainop.core.errors import (
    ChainExhaustedError,
    IncompleteReplyError,
    ModelDriftError,
    ProviderError,
)
from chainop.core.latency import LatencyStats
from chainop.core.models import (
    Attempt,
    AttemptOutcome,
    CutStreamPolicy,
    HedgeSpec,
    PrivacyTier,
    ProviderChainSpec,
    ProviderSpec,
    RequestSpec,
)
from chainop.core.rules import capability_miss, ordered_for_strategy, utc

__all__ = [
    "SKIPPED",
    "SUCCEEDED",
    "ChainObserver",
    "ExecutionResult",
    "HealthBoard",
    "Resume",
    "capability_miss",
    "cost_of",
    "execute",
    "ordered_for_strategy",
]

SUCCEEDED = AttemptOutcome.SUCCEEDED
SKIPPED = AttemptOutcome.SKIPPED


# --------------------------------------------------------------------------- observer


class ChainObserver:
    """Hooks for Events and metrics; every method is a no-op here, override what you need.

    Hooks are synchronous and must not block: they run inside the executor's loop.
    """

    def on_attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        """An attempt ended (any outcome, including Skipped and Cancelled)."""

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

    def on_saturated(self, provider: ProviderSpec, reason: str) -> None:
        """A provider was skipped because its load signal says it is saturated."""

    def on_hedge(self, primary: ProviderSpec, hedge: ProviderSpec, after_seconds: float) -> None:
        """An extra attempt started on ``hedge`` because ``primary`` was slow."""

    def on_model_drift(self, provider: ProviderSpec, served: str) -> None:
        """A reply named another model than the configured one (``served``; '' when a
        reply names the configured model again). Called once per change, per board."""


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
    """The outcome of one execution: a completion, a wait, or the reason there is none."""

    attempts: tuple[Attempt, ...]
    completion: Completion | None = None
    provider: str = ""
    attempt: int = 0
    was_terminus: bool = False
    latency_ms: int = 0
    cost_usd: float = 0.0
    #: Whether a hedge raced this execution, and what the calls it cancelled cost.
    hedged: bool = False
    extra_cost_usd: float = 0.0
    #: A stitched answer's parts, (provider, characters) in order; empty when not stitched.
    parts: tuple[tuple[str, int], ...] = ()
    #: CamelCase reason when failed: ChainExhausted, PermanentError, DeadlineExceeded…
    #: or WaitingForProvider (then ``wait`` says for whom and until when).
    failure_reason: str = ""
    failure_message: str = ""
    wait: rules.Wait | None = None

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


# --------------------------------------------------------------------------- one walk


class _End(enum.Enum):
    SUCCESS = "success"
    ADVANCE = "advance"
    FAIL = "fail"


@dataclass(slots=True)
class _RunEnd:
    """How one provider's run (its call and retries) ended."""

    end: _End
    provider: ProviderSpec
    completion: Completion | None = None
    number: int = 0
    is_terminus: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    #: The cut text this call was asked to continue, and its parts (a stitched answer).
    continued: str | None = None
    parts: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)
class _Run:
    """A provider's run in flight; ``cancel_reason`` is set before it is cancelled."""

    provider: ProviderSpec
    hedged: bool
    started: float
    #: Holds the provider's half-open trial (released when the run ends or is cancelled).
    trial: bool = False
    cancel_reason: str = ""
    released: bool = False


def _claim(walk: _Walk, run: _Run) -> None:
    """Count the run as in flight on its provider (the load estimate between readings)
    from the moment it is decided, so tasks deciding in the same instant see each other."""
    walk.board.call_started(run.provider.name)
    if run.trial:
        walk.board.trials.add(run.provider.name)


def _release(walk: _Walk, run: _Run) -> None:
    """Undo :func:`_claim` once, whether the run ended, failed or was cancelled unstarted."""
    if run.released:
        return
    run.released = True
    walk.board.call_ended(run.provider.name)
    if run.trial:
        walk.board.trials.discard(run.provider.name)


@dataclass(slots=True)
class _Walk:
    """The state of one execution, shared by its runs (primary and hedges)."""

    chain: ProviderChainSpec
    providers: list[ProviderSpec]
    request: RequestSpec
    call: ProviderCall
    board: HealthBoard
    now: Callable[[], float]
    observer: ChainObserver
    keys: dict[str, str | None]
    task_key: str
    timeout_seconds: float | None
    deadline: float | None
    on_job_submitted: Callable[[str, str, str, int], Awaitable[None]] | None
    attempts: list[Attempt]
    reasons: list[tuple[str, str]] = field(default_factory=list)
    calls_to: dict[str, int] = field(default_factory=dict)
    resume_job: str | None = None
    cursor: int = 0
    previous: ProviderSpec | None = None
    extra_cost: float = 0.0
    #: With onCutStream: Continue, the text cut streams delivered so far, and who wrote
    #: which part (provider, characters).
    continue_from: str | None = None
    parts: list[tuple[str, int]] = field(default_factory=list)
    #: Providers skipped only because they were saturated (indices), in order: the
    #: walk queues on the first of them rather than fail when everything after fails.
    saturated: list[int] = field(default_factory=list)
    #: A failure (permanent, content policy) of one run while another is still racing:
    #: the task fails with it only if nothing else answers.
    pending_failure: _RunEnd | None = None
    #: Index of the provider a resumed job belongs to (-1: none).
    resume_index: int = -1
    #: The last Sovereign provider considered (for the spillover hook).
    last_sovereign: ProviderSpec | None = None

    def record(self, provider: ProviderSpec, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self.observer.on_attempt(provider, attempt)

    def next_key(self, provider: ProviderSpec) -> tuple[int, str]:
        """The attempt number and idempotency key of the next call to ``provider``."""
        self.calls_to[provider.name] = self.calls_to.get(provider.name, 0) + 1
        return len(
            self.attempts
        ) + 1, f"{self.task_key}-{provider.name}-{self.calls_to[provider.name]}"

    def failed(self, reason: str, message: str) -> ExecutionResult:
        return ExecutionResult(
            attempts=tuple(self.attempts),
            failure_reason=reason,
            failure_message=message,
            hedged=any(a.hedged for a in self.attempts),
            extra_cost_usd=self.extra_cost,
        )


def _job_hook(
    walk: _Walk, provider: str, key: str, number: int, seen: list[str]
) -> Callable[[str], Awaitable[None]]:
    """Bind one attempt's identity to the caller's "job submitted" hook."""

    async def submitted(job_id: str) -> None:
        seen.append(job_id)
        if walk.on_job_submitted is not None:
            await walk.on_job_submitted(provider, job_id, key, number)

    return submitted


@dataclass(slots=True)
class _Call:
    """One call in flight: what its attempt record needs."""

    run: _Run
    started: float
    started_at: datetime
    seen_jobs: list[str]
    continued: str | None = None
    parts: tuple[tuple[str, int], ...] = ()

    def attempt(self, outcome: AttemptOutcome, error: str = "", **extra: object) -> Attempt:
        """The attempt record of this call, ending now."""
        loop = asyncio.get_running_loop()
        return Attempt.model_validate(
            {
                "provider": self.run.provider.name,
                "outcome": outcome,
                "error": error,
                "latency_ms": int((loop.time() - self.started) * 1000),
                "started_at": self.started_at,
                "job_id": self.seen_jobs[-1] if self.seen_jobs else None,
                "hedged": self.run.hedged,
                **extra,
            }
        )


async def _call_once(
    walk: _Walk, run: _Run, *, is_terminus: bool, retries_left: int
) -> tuple[_RunEnd | None, int]:
    """One call to ``run.provider``; records its attempt. (None, retries) means retry."""
    provider = run.provider
    loop = asyncio.get_running_loop()
    number, key = walk.next_key(provider)
    seen = [walk.resume_job] if walk.resume_job is not None else []
    context = CallContext(
        timeout=provider.timeout_seconds,
        api_key=walk.keys.get(provider.name),
        idempotency_key=key,
        resume_job_id=walk.resume_job,
        on_job_submitted=_job_hook(walk, provider.name, key, number, seen),
        continue_from=walk.continue_from,
    )
    walk.resume_job = None
    call = _Call(
        run=run,
        started=loop.time(),
        started_at=utc(walk.now()),
        seen_jobs=seen,
        continued=walk.continue_from,
        parts=tuple(walk.parts),
    )
    remaining = None if walk.deadline is None else walk.deadline - call.started
    try:
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            completion = await walk.call(provider, walk.request, context)
    except TimeoutError:
        message = f"task deadline of {walk.timeout_seconds:g}s exceeded"
        walk.record(provider, call.attempt(AttemptOutcome.DEADLINE, message))
        end = _RunEnd(_End.FAIL, provider, failure_reason="DeadlineExceeded")
        end.failure_message = message
        return end, 0
    except asyncio.CancelledError:
        if run.cancel_reason:  # outrun by a hedge (else: the whole task is cancelled)
            elapsed_ms = (loop.time() - call.started) * 1000
            walk.board.latency.setdefault(provider.name, LatencyStats()).observe_outrun(elapsed_ms)
            cost = rules.prompt_cost(provider, walk.request)
            walk.extra_cost += cost
            walk.record(
                provider, call.attempt(AttemptOutcome.CANCELLED, run.cancel_reason, cost_usd=cost)
            )
        raise
    except ProviderError as error:
        return _after_error(walk, call, error, is_terminus=is_terminus, retries_left=retries_left)
    drift = _drift(walk, provider, completion)
    if drift is not None:
        return _after_error(walk, call, drift, is_terminus=is_terminus, retries_left=retries_left)
    return _after_success(walk, call, completion, number=number, is_terminus=is_terminus), 0


def _drift(walk: _Walk, provider: ProviderSpec, completion: Completion) -> ProviderError | None:
    """Note a reply naming another model (once per change); an error when the chain's
    ``guards.requireConfiguredModel`` says such a reply is no answer."""
    served = (
        ""
        if not completion.model or model_matches(provider.model, completion.model)
        else (completion.model)
    )
    if walk.board.served_model.get(provider.name, "") != served:
        walk.board.served_model[provider.name] = served
        walk.observer.on_model_drift(provider, served)
    if served and walk.chain.guards.require_configured_model:
        return ModelDriftError(
            f"answered as model {served!r}, not the configured {provider.model!r} "
            "(guards.requireConfiguredModel)"
        )
    return None


def _after_error(
    walk: _Walk, call: _Call, error: ProviderError, *, is_terminus: bool, retries_left: int
) -> tuple[_RunEnd | None, int]:
    """Record a failed call, apply :func:`rules.react`, and say how the run goes on."""
    provider = call.run.provider
    walk.record(provider, call.attempt(AttemptOutcome(error.kind.value), error.message))
    _keep_cut_text(walk, provider, error)
    verdict = rules.react(
        error,
        provider,
        walk.board,
        now=walk.now(),
        is_terminus=is_terminus,
        retries_left=retries_left,
    )
    if verdict.benched is not None:
        walk.observer.on_benched(provider, verdict.benched.cooldown_seconds, error.message)
    if verdict.quota is not None:
        walk.observer.on_quota_exhausted(provider, verdict.quota.cooldown_seconds, error.message)
    if verdict.next is rules.Next.RETRY:
        return None, retries_left - 1
    walk.reasons.append((provider.name, error.message))
    if verdict.next is rules.Next.FAIL:
        end = _RunEnd(_End.FAIL, provider, failure_reason=verdict.failure_reason)
        end.failure_message = verdict.failure_message
        return end, 0
    return _RunEnd(_End.ADVANCE, provider), 0


def _keep_cut_text(walk: _Walk, provider: ProviderSpec, error: ProviderError) -> None:
    """With ``onCutStream: Continue``, keep what a cut stream delivered for the next call."""
    if walk.chain.on_cut_stream is not CutStreamPolicy.CONTINUE:
        return
    if isinstance(error, IncompleteReplyError) and error.partial_text:
        walk.continue_from = (walk.continue_from or "") + error.partial_text
        walk.parts.append((provider.name, len(error.partial_text)))


def _after_success(
    walk: _Walk, call: _Call, completion: Completion, *, number: int, is_terminus: bool
) -> _RunEnd:
    """Record a complete answer: attempt, health, observed latency."""
    provider = call.run.provider
    job_id = completion.job_id or (call.seen_jobs[-1] if call.seen_jobs else None)
    drifted = walk.board.served_model.get(provider.name, "")
    attempt = call.attempt(
        AttemptOutcome.SUCCEEDED,
        job_id=job_id,
        cost_usd=cost_of(provider, completion),
        first_token_ms=completion.first_token_ms,
        served_model=drifted,
    )
    walk.record(provider, attempt)
    walk.board.success(provider.name, now=walk.now())
    walk.board.observe_latency(provider.name, attempt.latency_ms, completion.output_tokens)
    end = _RunEnd(_End.SUCCESS, provider, completion=completion, number=number)
    end.is_terminus = is_terminus
    end.continued, end.parts = call.continued, call.parts
    return end


async def _run_provider(walk: _Walk, run: _Run, *, is_terminus: bool) -> _RunEnd:
    """Call one provider, retrying transient errors as :func:`rules.react` says."""
    retries_left = walk.chain.health.transient_retries
    try:
        while True:
            end, retries_left = await _call_once(
                walk, run, is_terminus=is_terminus, retries_left=retries_left
            )
            if end is not None:
                return end
    finally:
        _release(walk, run)


def _start_next(walk: _Walk, *, hedge: bool) -> tuple[_Run, Awaitable[_RunEnd]] | None:
    """Move the cursor to the next provider that is not skipped and prepare its run.

    Skipped providers are recorded as such. For a hedge the next provider must not be a
    jobs provider (a hedge never starts a job): then nothing starts and the cursor stays.
    """
    last = len(walk.providers) - 1
    while walk.cursor <= last:
        index = walk.cursor
        provider = walk.providers[index]
        if hedge and not rules.may_hedge_to(provider):
            return None
        walk.cursor += 1
        _consider(walk, provider, hedge=hedge)
        if index == walk.resume_index:
            # A job already submitted there: poll it, whatever its health says now.
            return _prepare(walk, index, hedge=hedge)
        at = walk.now()
        skip = rules.skip_for(
            provider,
            walk.board.get(provider.name),
            request=walk.request,
            now=at,
            is_terminus=index == last,
            trial_busy=provider.name in walk.board.trials,
        ) or rules.spill_for(index, walk.providers, walk.board, request=walk.request, now=at)
        if skip is not None:
            walk.record(
                provider,
                Attempt(
                    provider=provider.name,
                    outcome=skip.outcome,
                    error=skip.reason,
                    started_at=utc(at),
                ),
            )
            prefix = "" if skip.outcome is AttemptOutcome.UNSUPPORTED else "skipped: "
            walk.reasons.append((provider.name, f"{prefix}{skip.reason}"))
            if skip.saturated:
                walk.saturated.append(index)
                walk.observer.on_saturated(provider, skip.reason)
            continue
        return _prepare(walk, index, hedge=hedge)
    return None


def _prepare(walk: _Walk, index: int, *, hedge: bool) -> tuple[_Run, Awaitable[_RunEnd]]:
    """Claim ``walk.providers[index]`` and build its run.

    Leaving Sovereign for a provider that really runs is a spillover (never said of a
    provider that is then skipped).
    """
    provider = walk.providers[index]
    is_terminus = index == len(walk.providers) - 1
    origin = walk.last_sovereign
    if origin is not None and provider.privacy_tier is not PrivacyTier.SOVEREIGN:
        walk.observer.on_spillover(origin, provider)
        walk.last_sovereign = None  # said once per move out of the Sovereign tier
    run = _Run(
        provider=provider,
        hedged=hedge,
        started=asyncio.get_running_loop().time(),
        trial=walk.board.get(provider.name).benchings > 0 and not is_terminus,
    )
    _claim(walk, run)
    return run, _run_provider(walk, run, is_terminus=is_terminus)


def _consider(walk: _Walk, provider: ProviderSpec, *, hedge: bool) -> None:
    """The walk moves on to ``provider``: the failover hook, unless this is a hedge (the
    slow call goes on) or the move only passed a saturated provider (no failure: the
    Saturated/Spillover hooks say it)."""
    previous = walk.previous
    walk.previous = provider
    if previous is not None and previous.privacy_tier is PrivacyTier.SOVEREIGN:
        walk.last_sovereign = previous
    if previous is None or previous is provider or hedge:
        return
    reason = walk.reasons[-1][1] if walk.reasons else ""
    if reason.startswith("skipped: saturated"):
        return
    walk.observer.on_failover(previous, provider, reason)


def _success(walk: _Walk, end: _RunEnd, started: float) -> ExecutionResult:
    assert end.completion is not None
    loop = asyncio.get_running_loop()
    completion = end.completion
    parts: tuple[tuple[str, int], ...] = ()
    if end.parts and end.continued is not None:
        # A stitched answer: the cut text this very call was asked to continue, then its
        # continuation (a hedge that answered from scratch is never stitched).
        parts = (*end.parts, (end.provider.name, len(completion.text)))
        completion = replace(completion, text=end.continued + completion.text)
    return ExecutionResult(
        attempts=tuple(walk.attempts),
        completion=completion,
        parts=tuple(parts),
        provider=end.provider.name,
        attempt=end.number,
        was_terminus=end.is_terminus,
        latency_ms=int((loop.time() - started) * 1000),
        cost_usd=cost_of(end.provider, end.completion),
        hedged=any(a.hedged for a in walk.attempts),
        extra_cost_usd=walk.extra_cost,
    )


async def _cancel_all(walk: _Walk, running: dict[asyncio.Task[_RunEnd], _Run], reason: str) -> None:
    """Cancel the runs still in flight; each records a Cancelled attempt with ``reason``.

    A run cancelled before its first step never enters its ``finally``, so its claim
    (in-flight count, half-open trial) is released here as well.
    """
    for task, run in running.items():
        run.cancel_reason = reason
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for run in running.values():
        _release(walk, run)
    running.clear()


# --------------------------------------------------------------------------- executor


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
    hedge: HedgeSpec | None = None,
) -> ExecutionResult:
    """Run ``request`` through ``eligible`` (a routing decision's providers).

    ``now`` gives epoch seconds (status times, cooldowns); latencies use the event loop's
    clock. ``timeout_seconds`` is the task's own deadline over every attempt.
    ``task_key`` (the task's uid) seeds idempotency keys: ``{task_key}-{provider}-{n}``
    for the n-th call of this task to that provider, so a replay after a crash sends
    the same key. ``on_job_submitted(provider, job_id, key, attempt)`` is awaited when
    a jobs provider accepted work, before waiting on it. ``hedge`` is the task's
    ``spec.hedge``. A result with ``wait`` set did not call anything: every provider is
    benched and the caller should run the task again at ``wait.until``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    walk = _new_walk(
        chain,
        eligible,
        request,
        call,
        board,
        now,
        observer,
        api_keys,
        task_key,
        timeout_seconds,
        on_job_submitted,
        resume,
        rotation,
    )
    if not walk.providers:
        return walk.failed("NoEligibleProvider", _no_provider_message(chain, eligible))
    if walk.resume_job is None:
        at = now()
        deadline = None if timeout_seconds is None else at + timeout_seconds
        wait = rules.plan_wait(walk.providers, board, now=at, deadline=deadline)
        if wait is not None:
            return ExecutionResult(
                attempts=tuple(walk.attempts),
                failure_reason="WaitingForProvider",
                failure_message=_wait_message(walk, wait),
                wait=wait,
            )
    return await _race(walk, hedge, started)


def _new_walk(
    chain: ProviderChainSpec,
    eligible: Sequence[str],
    request: RequestSpec,
    call: ProviderCall,
    board: HealthBoard,
    now: Callable[[], float],
    observer: ChainObserver | None,
    api_keys: dict[str, str | None] | None,
    task_key: str,
    timeout_seconds: float | None,
    on_job_submitted: Callable[[str, str, str, int], Awaitable[None]] | None,
    resume: Resume | None,
    rotation: int,
) -> _Walk:
    """The walk's starting state: providers in order, and where a resumed one stands."""
    order = ordered_for_strategy(chain, eligible, rotation=rotation)
    providers = [p for p in (chain.provider(name) for name in order) if p is not None]
    loop = asyncio.get_running_loop()
    walk = _Walk(
        chain=chain,
        providers=providers,
        request=request,
        call=call,
        board=board,
        now=now,
        observer=observer or _NO_OBSERVER,
        keys=api_keys or {},
        task_key=task_key,
        timeout_seconds=timeout_seconds,
        deadline=None if timeout_seconds is None else loop.time() + timeout_seconds,
        on_job_submitted=on_job_submitted,
        attempts=list(resume.attempts if resume else ()),
    )
    for earlier in walk.attempts:
        if earlier.outcome != SKIPPED:
            walk.calls_to[earlier.provider] = walk.calls_to.get(earlier.provider, 0) + 1
    # A resumed job's own call is not in ``attempts`` (it was persisted as pending), so
    # counting earlier calls gives it the same number, and the same key, as before.
    names = [p.name for p in providers]
    if resume is not None and resume.provider is not None and resume.provider in names:
        walk.cursor = names.index(resume.provider)
        walk.resume_job = resume.job_id
        if resume.job_id is not None:
            walk.resume_index = walk.cursor
    return walk


def _no_provider_message(chain: ProviderChainSpec, eligible: Sequence[str]) -> str:
    if eligible and ordered_for_strategy(chain, eligible) == []:
        return (
            f"no provider is eligible: strategy FallbackOnly skips the chain's head "
            f"({chain.providers[0].name}) and the routing decision allows nothing else"
        )
    return "no provider is eligible"


def _wait_message(walk: _Walk, wait: rules.Wait) -> str:
    return (
        f"all {len(walk.providers)} eligible providers are cooling down; waiting for "
        f"{wait.provider} until {utc(wait.until).isoformat()}"
    )


class _Runs:
    """The runs of one race in flight, and how new ones start."""

    def __init__(self, walk: _Walk) -> None:
        self.walk = walk
        self.running: dict[asyncio.Task[_RunEnd], _Run] = {}

    def launch(self, *, as_hedge: bool) -> _Run | None:
        """Start the next provider the walk does not skip (None when none is left)."""
        prepared = _start_next(self.walk, hedge=as_hedge)
        if prepared is None:
            return None
        run, coroutine = prepared
        self.running[asyncio.ensure_future(coroutine)] = run
        return run

    def launch_saturated(self) -> _Run | None:
        """Everything after a saturated provider failed or was skipped: queue there."""
        walk = self.walk
        if not walk.saturated:
            return None
        index = walk.saturated.pop(0)
        _consider(walk, walk.providers[index], hedge=False)
        run, coroutine = _prepare(walk, index, hedge=False)
        self.running[asyncio.ensure_future(coroutine)] = run
        return run

    def next(self) -> bool:
        """Start the walk's next provider, or a saturated one it passed; False if none."""
        return self.launch(as_hedge=False) is not None or self.launch_saturated() is not None


async def _race(walk: _Walk, hedge: HedgeSpec | None, started: float) -> ExecutionResult:
    """Run providers one after another, plus hedges racing a slow one; first answer wins."""
    loop = asyncio.get_running_loop()
    runs = _Runs(walk)
    running = runs.running
    extras = 0
    try:
        if not runs.next():
            return _exhausted(walk)
        while running:
            timer = _hedge_timer(walk, hedge, running, extras, loop.time())
            done, _ = await asyncio.wait(
                running, timeout=timer, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                latest = max(running.values(), key=lambda r: r.started)
                hedged = runs.launch(as_hedge=True)
                extras += 1  # counted even when nothing could start: no second try
                if hedged is not None:
                    waited = loop.time() - latest.started
                    walk.observer.on_hedge(latest.provider, hedged.provider, waited)
                continue
            result = await _settle(walk, done, runs, started)
            if result is not None:
                return result
            if not running and not runs.next():
                break
    finally:
        await _cancel_all(walk, running, "")
    return _exhausted(walk)


async def _settle(
    walk: _Walk, done: set[asyncio.Task[_RunEnd]], runs: _Runs, started: float
) -> ExecutionResult | None:
    """What the runs that just ended mean for the task: its result, or None to go on.

    An answer wins and cancels the rest. A failure (bad request, content policy) ends the
    task only when nothing else is racing, or at once for the task's own deadline;
    while a hedge races it is kept, and returned if nothing answers.
    """
    ends = [task.result() for task in done]
    for task in done:
        runs.running.pop(task, None)
    still = runs.running
    ends.sort(key=lambda end: end.end is not _End.SUCCESS)
    if ends[0].end is _End.SUCCESS:
        await _cancel_all(walk, still, f"cancelled: {ends[0].provider.name} answered first")
        return _success(walk, ends[0], started)
    failed = next((end for end in ends if end.end is _End.FAIL), None)
    if failed is not None and (failed.failure_reason == "DeadlineExceeded" or not still):
        await _cancel_all(walk, still, f"cancelled: the task failed ({failed.failure_reason})")
        return walk.failed(failed.failure_reason, failed.failure_message)
    if failed is not None:
        walk.pending_failure = walk.pending_failure or failed
        return None
    if not still and walk.pending_failure is not None:
        pending = walk.pending_failure
        return walk.failed(pending.failure_reason, pending.failure_message)
    return None


def _hedge_timer(
    walk: _Walk,
    hedge: HedgeSpec | None,
    running: dict[asyncio.Task[_RunEnd], _Run],
    extras: int,
    now: float,
) -> float | None:
    """Seconds until the next hedge may start, or None when no hedge will."""
    if hedge is None or extras >= hedge.max_extra or walk.cursor >= len(walk.providers):
        return None
    latest = max(running.values(), key=lambda r: r.started)
    if not rules.may_hedge_to(latest.provider):
        return None  # a job is not raced: the winner could not cancel it
    delay = rules.hedge_delay(hedge, walk.board.latency.get(latest.provider.name))
    if delay is None:
        return None
    return max(latest.started + delay - now, 0.0)


def _exhausted(walk: _Walk) -> ExecutionResult:
    return walk.failed("AllProvidersFailed", str(ChainExhaustedError(walk.reasons)))
