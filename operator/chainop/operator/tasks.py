"""DelegatedTasks: decide, execute through the chain, write the outcome, clean up.

kopf hands every watch event of a task to ``TaskRunner.on_event``; a task that is not
finished and not already running here is executed in its own asyncio task, so one slow
provider never holds up the others (bounded by ``max_concurrent_tasks``).

Status writes are few on purpose: a task that finishes within
``running_status_delay`` gets one write (its final status); a slower one gets a
``Running`` write first; a ``jobs`` attempt writes the job id *before* waiting on it, so
an operator restart resumes polling instead of submitting twice. Everything needed to
resume (start time, attempts, pending job) is in status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from chainop.core import chain as executor
from chainop.core import conditions, guards, routing
from chainop.core.chain import ChainObserver, ExecutionResult, Resume
from chainop.core.models import (
    API_VERSION,
    Attempt,
    AttemptOutcome,
    Condition,
    Decision,
    DelegatedTaskSpec,
    DelegatedTaskStatus,
    GuardAction,
    PendingJob,
    PrivacyTier,
    ProviderSpec,
    ResultPart,
    TaskPhase,
    TaskResult,
)
from chainop.core.status import PROGRESSING, SUCCEEDED
from chainop.kube.client import TASKS, KubeError, ObjectRef
from chainop.operator import audit, spend
from chainop.operator.runtime import ChainRuntime, Runtime, validation_message
from chainop.redact import REDACTOR

log = logging.getLogger(__name__)

TERMINAL = (TaskPhase.SUCCEEDED, TaskPhase.FAILED)
#: Seconds a final status write keeps retrying while the API server is unavailable.
FINAL_WRITE_PATIENCE = 600.0
#: Pause before a task whose execution crashed is tried again.
CRASH_RETRY_SECONDS = 5.0
#: Seconds a stopping operator lets tasks in flight finish before it abandons them.
SHUTDOWN_DRAIN_SECONDS = 5.0
#: How many finished task uids to remember (stale-event guard).
FINISHED_MEMORY = 100_000


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _task_conditions(
    previous: DelegatedTaskStatus,
    *,
    progressing: tuple[conditions.Status, str, str],
    succeeded: tuple[conditions.Status, str, str],
    now: float,
    generation: int | None,
) -> list[Condition]:
    """Both task conditions, each given as (status, reason, message)."""
    conds = previous.conditions
    for type_, (status, reason, message) in ((PROGRESSING, progressing), (SUCCEEDED, succeeded)):
        conds = conditions.set_condition(
            conds,
            type=type_,
            status=status,
            reason=reason,
            message=message,
            now=_time(now),
            observed_generation=generation,
        )
    return list(conds)


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Identity of one task."""

    namespace: str
    name: str
    uid: str
    generation: int | None

    @property
    def object_ref(self) -> ObjectRef:
        return ObjectRef(API_VERSION, "DelegatedTask", self.namespace, self.name, self.uid)

    @property
    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "DelegatedTask",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }


class TaskObserver(ChainObserver):
    """Turns executor hooks into metrics and Events."""

    def __init__(
        self,
        runtime: Runtime,
        chain: ChainRuntime,
        task: TaskRef,
        *,
        trail: audit.TaskTrail,
    ) -> None:
        self.runtime = runtime
        self.chain = chain
        self.task = task
        self.trail = trail  # the run's, which already wrote its decision line
        self.last_move = ""

    def on_attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        self.trail.attempt(provider, attempt)
        m = self.runtime.metrics
        labels = (self.chain.namespace, self.chain.name, provider.name, attempt.outcome)
        m.provider_requests.labels(*labels).inc()
        if attempt.outcome != executor.SKIPPED:
            m.provider_latency.labels(*labels).observe(attempt.latency_ms / 1000)
        if attempt.first_token_ms is not None:
            m.first_token.labels(self.chain.namespace, self.chain.name, provider.name).observe(
                attempt.first_token_ms / 1000
            )
        if attempt.hedged and attempt.outcome != executor.SKIPPED:
            result = {
                AttemptOutcome.SUCCEEDED: "won",
                AttemptOutcome.CANCELLED: "lost",
            }.get(attempt.outcome, "failed")
            m.hedges.labels(self.chain.namespace, self.chain.name, provider.name, result).inc()

    def on_saturated(self, provider: ProviderSpec, reason: str) -> None:
        # A spillover that follows says why in the audit trail: the skip, not a failure.
        self.last_move = f"{provider.name} skipped, {reason}"
        self.runtime.metrics.saturated_skips.labels(
            self.chain.namespace, self.chain.name, provider.name
        ).inc()
        # On the chain, in words without the changing figures, so the 30 s de-duplication
        # of Events keeps a burst of spilled tasks to one Event per provider.
        self.runtime.event(
            self.chain.ref,
            type="Normal",
            reason="Saturated",
            message=(
                f"{provider.name} is saturated by its load signal; tasks allowed to go "
                "further skip it (see the tasks' attempts for the figures)"
            ),
        )

    def on_model_drift(self, provider: ProviderSpec, served: str) -> None:
        if served:
            self.runtime.metrics.model_drift.labels(
                self.chain.namespace, self.chain.name, provider.name
            ).inc()
            message = (
                f"{provider.name} answered as model {served!r}, not the configured "
                f"{provider.model!r} (redeployed with another model, or rerouted)"
            )
        else:
            message = f"{provider.name} answers as the configured model {provider.model!r} again"
        self.runtime.event(
            self.chain.ref,
            type="Warning" if served else "Normal",
            reason="ModelDrift",
            message=message,
        )

    def on_hedge(self, primary: ProviderSpec, hedge: ProviderSpec, after_seconds: float) -> None:
        self.last_move = (
            f"hedge: {primary.name} had not answered after {after_seconds * 1000:.0f}ms"
        )
        self.runtime.event(
            self.task.object_ref,
            type="Normal",
            reason="Hedged",
            message=(
                f"{primary.name} had not answered after {after_seconds * 1000:.0f}ms; "
                f"an extra attempt started on {hedge.name}"
            ),
        )

    def on_failover(
        self, from_provider: ProviderSpec, to_provider: ProviderSpec, reason: str
    ) -> None:
        self.last_move = reason
        self.trail.move("failover", from_provider, to_provider, reason)
        self.runtime.metrics.failovers.labels(
            self.chain.namespace, self.chain.name, from_provider.name, to_provider.name
        ).inc()
        self.runtime.event(
            self.task.object_ref,
            type="Warning",
            reason="Failover",
            message=f"{from_provider.name} → {to_provider.name}: {reason}",
        )

    def on_benched(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self.trail.benching(provider, seconds, reason)
        self.runtime.metrics.benchings.labels(
            self.chain.namespace, self.chain.name, provider.name
        ).inc()
        self.runtime.event(
            self.chain.ref,
            type="Warning",
            reason="ProviderBenched",
            message=f"{provider.name} benched for {seconds:.0f}s after: {reason}",
        )

    def on_quota_exhausted(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self.runtime.metrics.quota_exhausted.labels(
            self.chain.namespace, self.chain.name, provider.name
        ).inc()
        self.runtime.event(
            self.chain.ref,
            type="Warning",
            reason="QuotaExhausted",
            message=(
                f"{provider.name} says its quota or credit is exhausted; skipped for "
                f"{seconds:.0f}s: {reason}"
            ),
        )

    def on_spillover(self, from_provider: ProviderSpec, to_provider: ProviderSpec) -> None:
        self.trail.move("spillover", from_provider, to_provider, self.last_move)
        self.runtime.metrics.spillovers.labels(
            self.chain.namespace, self.chain.name, from_provider.name, to_provider.name
        ).inc()
        if to_provider.privacy_tier is not PrivacyTier.SOVEREIGN:
            self.runtime.event(
                self.task.object_ref,
                type="Normal",
                reason="Spillover",
                message=(
                    f"work left Sovereign provider {from_provider.name} for "
                    f"{to_provider.privacy_tier.value} provider {to_provider.name}"
                ),
            )


class ProgressObserver(TaskObserver):
    """A ``TaskObserver`` that also keeps each attempt in ``progress`` (for a Running
    status). At module level: a class made per task is cyclic garbage (9 objects) that
    only the collector frees."""

    def __init__(
        self,
        runtime: Runtime,
        chain: ChainRuntime,
        task: TaskRef,
        progress: list[Attempt],
        *,
        trail: audit.TaskTrail,
    ) -> None:
        super().__init__(runtime, chain, task, trail=trail)
        self.progress = progress

    def on_attempt(self, provider: ProviderSpec, attempt: Attempt) -> None:
        self.progress.append(attempt)
        super().on_attempt(provider, attempt)


class TaskRunner:
    """Executes DelegatedTasks for one operator process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.waiting: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.ttl_timers: dict[str, asyncio.TimerHandle] = {}
        self.deadline_timers: dict[str, asyncio.TimerHandle] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.rerun: dict[str, dict[str, Any]] = {}
        self.slots = asyncio.Semaphore(self.config.max_concurrent_tasks)
        #: Set when the operator stops: no new executions, no final writes of abandoned ones.
        self.stopping = False
        runtime.on_chain_ready = self.chain_ready
        #: Spend budgets: charges finished tasks, gates new ones (chainop.operator.spend).
        self.budgets = spend.BudgetKeeper(runtime)

    async def close(self, *, drain: float = SHUTDOWN_DRAIN_SECONDS) -> None:
        """Stop taking tasks; let those in flight finish for ``drain`` seconds, then
        abandon the rest without writing anything.

        Must run before the HTTP client and the API thread pool close: a call cut by our
        own shutdown is not the provider's failure, and writing it as one would fail the
        task (seen on a real node: a task lost to every ``helm upgrade``). An abandoned
        task keeps its Pending/Running status, which is what the next operator process
        resumes from (jobs with the same idempotency key, so nothing is submitted twice).
        """
        self.stopping = True
        for timers in (self.ttl_timers, self.deadline_timers):
            for handle in timers.values():
                handle.cancel()
            timers.clear()
        running = list(self.in_flight.values())
        if not running:
            return
        done, pending = await asyncio.wait(running, timeout=drain)
        log.info(
            "stopping: %d task(s) finished during the drain, %d left for the next operator",
            len(done),
            len(pending),
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ----------------------------------------------------------------- events

    def on_event(self, body: dict[str, Any], *, deleted: bool) -> None:
        """A watch event of a DelegatedTask (from kopf). Never blocks."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if deleted:
            self.forget(uid, body)
            return
        phase = (body.get("status") or {}).get("phase")
        if phase in (TaskPhase.SUCCEEDED.value, TaskPhase.FAILED.value):
            self.budgets.recover(body)
            self.schedule_ttl(body)
            return
        if uid in self.in_flight or uid in self.finished:
            return  # running here, or a stale event from before our final write
        self.start(body)

    def start(self, body: dict[str, Any]) -> None:
        """Execute a task in the background (not once the operator is stopping)."""
        if self.stopping:
            return
        uid = str(body["metadata"].get("uid", ""))
        task = asyncio.ensure_future(self.run(body))
        self.in_flight[uid] = task
        task.add_done_callback(functools.partial(self._done, uid, body))

    def _done(self, uid: str, body: dict[str, Any], task: asyncio.Task[None]) -> None:
        if self.in_flight.get(uid) is task:
            del self.in_flight[uid]
        if self.stopping:
            return
        if not task.cancelled() and task.exception() is not None:
            # A bug or an unforeseen error: never leave the task stuck; try it again from
            # its status (resumable by design) after a pause.
            log.error(
                "task %s failed in the operator: %r; retrying in %gs",
                uid,
                task.exception(),
                CRASH_RETRY_SECONDS,
            )
            self._cancel_deadline(uid)
            handle = asyncio.get_running_loop().call_later(CRASH_RETRY_SECONDS, self._wake, body)
            self.deadline_timers[uid] = handle
            return
        again = self.rerun.pop(uid, None)
        if again is not None and uid not in self.finished:
            self.start(again)

    def forget(self, uid: str, body: dict[str, Any]) -> None:
        """The task was deleted: stop its work and timers."""
        running = self.in_flight.pop(uid, None)
        if running is not None:
            running.cancel()
        for timers in (self.ttl_timers, self.deadline_timers):
            handle = timers.pop(uid, None)
            if handle is not None:
                handle.cancel()
        for waiting in self.waiting.values():
            waiting.pop(uid, None)
        self.rerun.pop(uid, None)

    def chain_ready(self, namespace: str, chain: str) -> None:
        """A chain became usable: start the tasks that were waiting for it.

        A task still finishing its own "waiting" write is started again when it ends.
        """
        for uid, body in list(self.waiting.pop((namespace, chain), {}).items()):
            if uid in self.in_flight:
                self.rerun[uid] = body
            else:
                self.start(body)

    # ----------------------------------------------------------------- TTL

    def schedule_ttl(self, body: dict[str, Any]) -> None:
        """Delete a finished task ``ttlSecondsAfterFinished`` after it ended."""
        meta = body["metadata"]
        uid = str(meta.get("uid", ""))
        ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or uid in self.ttl_timers:
            return
        finished = _epoch(
            DelegatedTaskStatus.model_validate(body.get("status") or {}).completion_time
        )
        now = self.runtime.clock()
        delay = max(0.0, (finished or now) + float(ttl) - now)
        loop = asyncio.get_running_loop()
        namespace, name = str(meta["namespace"]), str(meta["name"])
        self.ttl_timers[uid] = loop.call_later(
            delay,
            lambda: self.runtime.spawn(self._expire(namespace, name, uid), name="ttl"),
        )

    async def _expire(self, namespace: str, name: str, uid: str) -> None:
        self.ttl_timers.pop(uid, None)
        try:
            if await self.runtime.kube.delete_task(namespace, name, uid=uid):
                log.info("deleted finished task %s/%s (ttlSecondsAfterFinished)", namespace, name)
        except KubeError as error:
            log.warning("could not delete finished task %s/%s: %s", namespace, name, error)

    # ----------------------------------------------------------------- execution

    async def run(self, body: dict[str, Any]) -> None:
        """Take one task from wherever its status says to its end (or to waiting)."""
        meta = body["metadata"]
        ref = TaskRef(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            uid=str(meta.get("uid", "")),
            generation=meta.get("generation"),
        )
        try:
            previous = DelegatedTaskStatus.model_validate(body.get("status") or {})
        except ValidationError:
            previous = DelegatedTaskStatus()
        now = self.runtime.clock()
        start = _epoch(previous.start_time) or now
        try:
            spec = DelegatedTaskSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason="InvalidSpec",
                message=validation_message(error),
            )
            return
        remaining = spec.timeout_seconds - (now - start)
        chain = self.runtime.chains.get((ref.namespace, spec.chain))
        if remaining <= 0:
            why = "" if chain is None or chain.ready else " while waiting for its chain"
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason="DeadlineExceeded",
                message=f"timeoutSeconds={spec.timeout_seconds:g} ran out{why}",
            )
            return
        if chain is None or not chain.ready or chain.spec is None or chain.board is None:
            await self.wait_for_chain(
                ref, body, previous, spec, chain, start=start, remaining=remaining
            )
            return
        self._cancel_deadline(ref.uid)
        previous, stop = self.apply_guards(ref, previous, spec, chain)
        if stop is not None:
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason=stop.reason,
                message=REDACTOR.scrub(stop.message),
            )
            return
        decision = routing.route(
            chain.spec,
            spec,
            active_order=chain.active_order(),
            latency=chain.board.latency,
            now=_time(self.runtime.clock()),
        )
        started = previous.phase is TaskPhase.RUNNING or bool(previous.attempts)
        if not started:
            await self.budgets.refresh(chain)
        gated = self.budgets.gate(chain, decision, running=started)
        decision = gated.decision
        decided = Decision(
            provider=decision.provider, reason=decision.reason, providers=list(decision.providers)
        )
        trail = audit.TaskTrail.of(
            namespace=ref.namespace,
            chain=chain.name,
            task=ref.name,
            uid=ref.uid,
            spec=chain.spec,
            decision=decided,
        )
        if gated.failure is not None:
            trail.decision(chain.spec, decided, outcome="BudgetExceeded", reason=gated.failure)
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason="BudgetExceeded",
                message=gated.failure,
                decision=decided,
            )
            return
        if not decision.providers:
            parked = self.drain_wait(chain, spec, now=now, remaining=remaining)
            if parked is not None:
                await self.wait_for_provider(
                    ref, body, previous, chain, decided, wait=parked, start=start
                )
                return
        trail.decision(
            chain.spec, decided, outcome="Routed" if decision.providers else "NoEligibleProvider"
        )
        if not decision.providers:
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason="NoEligibleProvider",
                message=f"no provider may take this task: {decision.reason}",
                decision=decided,
            )
            return
        async with self.slots:
            await self.execute(
                ref,
                body,
                previous,
                spec,
                chain,
                decided,
                trail=trail,
                start=start,
                remaining=remaining,
            )

    def apply_guards(
        self,
        ref: TaskRef,
        previous: DelegatedTaskStatus,
        spec: DelegatedTaskSpec,
        chain: ChainRuntime,
    ) -> tuple[DelegatedTaskStatus, guards.Trip | None]:
        """Check the chain's agent guards before any provider is called.

        Returns the guard that fails the task, if any, and the status to build on: Warn
        guards add a ``GuardWarning`` condition (kept by every later write) and an Event.
        """
        assert chain.spec is not None
        trips = guards.check(chain.spec.guards, spec.request)
        counter = self.runtime.metrics.guard_trips
        for trip in trips:
            if trip.action is GuardAction.FAIL:
                counter.labels(ref.namespace, chain.name, trip.reason, trip.action.value).inc()
                return previous, trip
        for trip in trips:
            said = conditions.get_condition(previous.conditions, "GuardWarning")
            if said is not None and (said.reason, said.message) == (
                trip.reason,
                REDACTOR.scrub(trip.message),
            ):
                continue  # a later run of the same task: already said
            counter.labels(ref.namespace, chain.name, trip.reason, trip.action.value).inc()
            self.runtime.event(
                ref.object_ref, type="Warning", reason=trip.reason, message=trip.message
            )
            conds = conditions.set_condition(
                previous.conditions,
                type="GuardWarning",
                status="True",
                reason=trip.reason,
                message=REDACTOR.scrub(trip.message),
                now=_time(self.runtime.clock()),
                observed_generation=ref.generation,
            )
            previous = previous.model_copy(update={"conditions": list(conds)})
        return previous, None

    async def wait_for_chain(
        self,
        ref: TaskRef,
        body: dict[str, Any],
        previous: DelegatedTaskStatus,
        spec: DelegatedTaskSpec,
        chain: ChainRuntime | None,
        *,
        start: float,
        remaining: float,
    ) -> None:
        """Park a task until its chain is usable, or until its deadline fails it."""
        if chain is None:
            reason = "ChainNotFound"
            message = f"ProviderChain {spec.chain!r} not found in namespace {ref.namespace!r}"
        else:
            reason = "ChainNotReady"
            detail = chain.invalid[1] if chain.invalid else "not validated yet"
            message = f"ProviderChain {spec.chain!r} is not ready: {detail}"
        self.waiting.setdefault((ref.namespace, spec.chain), {})[ref.uid] = body
        loop = asyncio.get_running_loop()
        self._cancel_deadline(ref.uid)
        self.deadline_timers[ref.uid] = loop.call_later(remaining + 0.05, self._wake, body)
        if (
            chain is not None
            and chain.validated_at == 0.0
            and (chain.invalid is None or chain.invalid[0] == "Pending")
        ):
            # The chain is being validated right now (operator start): no news to write.
            # A chain whose spec was rejected (InvalidSpec) is never validated, so its
            # tasks must say why they wait rather than stay silent.
            return
        existing = conditions.get_condition(previous.conditions, PROGRESSING)
        if existing is not None and existing.reason == reason and existing.message == message:
            return  # already said so; no write
        now = self.runtime.clock()
        conds = _task_conditions(
            previous,
            progressing=("False", reason, message),
            succeeded=("Unknown", reason, message),
            now=now,
            generation=ref.generation,
        )
        waiting = previous.model_copy(
            update={
                "phase": TaskPhase.PENDING,
                "conditions": conds,
                "start_time": _time(start),
                "observed_generation": ref.generation,
            }
        )
        await self.write(ref, waiting)

    def _wake(self, body: dict[str, Any]) -> None:
        uid = str(body["metadata"].get("uid", ""))
        self.deadline_timers.pop(uid, None)
        for waiting in self.waiting.values():
            waiting.pop(uid, None)
        if uid not in self.in_flight:
            self.start(body)

    def _cancel_deadline(self, uid: str) -> None:
        handle = self.deadline_timers.pop(uid, None)
        if handle is not None:
            handle.cancel()

    async def execute(
        self,
        ref: TaskRef,
        body: dict[str, Any],
        previous: DelegatedTaskStatus,
        spec: DelegatedTaskSpec,
        chain: ChainRuntime,
        decided: Decision,
        *,
        trail: audit.TaskTrail,
        start: float,
        remaining: float,
    ) -> None:
        """Run the chain executor, writing Running/pending-job status as needed."""
        assert chain.spec is not None
        assert chain.board is not None
        metrics = self.runtime.metrics
        metrics.tasks_in_flight.inc()
        running_written = previous.phase is TaskPhase.RUNNING
        progress: list[Attempt] = list(previous.attempts)

        def running_status(pending: PendingJob | None) -> DelegatedTaskStatus:
            now = self.runtime.clock()
            conds = _task_conditions(
                previous,
                progressing=(
                    "True",
                    "Executing",
                    f"trying {decided.provider} first ({decided.reason})",
                ),
                succeeded=("Unknown", "Executing", ""),
                now=now,
                generation=ref.generation,
            )
            return previous.model_copy(
                update={
                    "phase": TaskPhase.RUNNING,
                    "provider": decided.provider,
                    "decision": decided,
                    "conditions": conds,
                    "start_time": _time(start),
                    "attempts": list(progress),
                    "attempt_count": len(progress),
                    "pending_job": pending,
                    "observed_generation": ref.generation,
                }
            )

        async def job_submitted(provider: str, job_id: str, key: str, attempt: int) -> None:
            nonlocal running_written
            pending = PendingJob(
                provider=provider,
                job_id=job_id,
                idempotency_key=key,
                attempt=attempt,
                submitted_at=_time(self.runtime.clock()),
            )
            await self.write(ref, running_status(pending))
            running_written = True

        resume = None
        if previous.pending_job is not None:
            resume = Resume(
                attempts=tuple(previous.attempts),
                provider=previous.pending_job.provider,
                job_id=previous.pending_job.job_id,
            )
        elif previous.attempts:
            resume = Resume(attempts=tuple(previous.attempts))
        chain.rotation += 1
        observer = ProgressObserver(self.runtime, chain, ref, progress, trail=trail)
        work = asyncio.ensure_future(
            executor.execute(
                chain=chain.spec,
                eligible=decided.providers,
                request=spec.request,
                call=self.runtime.clients,
                board=chain.board,
                now=self.runtime.clock,
                timeout_seconds=remaining,
                api_keys=chain.api_keys,
                task_key=ref.uid,
                rotation=chain.rotation - 1,
                observer=observer,
                resume=resume,
                on_job_submitted=job_submitted,
                hedge=spec.hedge,
            )
        )
        try:
            if not running_written:
                done, _ = await asyncio.wait({work}, timeout=self.config.running_status_delay)
                if not done and not running_written:
                    running_written = True
                    await self.write(ref, running_status(None))
            result = await work
        finally:
            if not work.done():
                work.cancel()
            metrics.tasks_in_flight.dec()
        if result.wait is not None:
            wait = (result.wait.until, result.failure_message)
            await self.wait_for_provider(
                ref, body, previous, chain, decided, wait=wait, start=start
            )
            return
        await self.conclude(ref, previous, chain, decided, result, start=start)
        observer.trail.result(chain.spec, result)
        self.budgets.finished(chain=chain, task=ref.name, uid=ref.uid, result=result)

    def drain_wait(
        self, chain: ChainRuntime, spec: DelegatedTaskSpec, *, now: float, remaining: float
    ) -> tuple[float, str] | None:
        """Nothing may take the task, and drains with an end are why: (when the earliest
        of them ends, the waiting message), if that is before the task's deadline."""
        assert chain.spec is not None
        assert chain.board is not None
        parked = routing.drain_wait(
            chain.spec,
            spec,
            active_order=chain.active_order(),
            latency=chain.board.latency,
            now=_time(now),
            deadline=_time(now + remaining),
        )
        if parked is None:
            return None
        ends = parked.until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return parked.until.timestamp(), (
            f"every provider this task may use is drained by hand; waiting for the drain "
            f"of {parked.provider} to end at {ends}"
        )

    async def wait_for_provider(
        self,
        ref: TaskRef,
        body: dict[str, Any],
        previous: DelegatedTaskStatus,
        chain: ChainRuntime,
        decided: Decision,
        *,
        wait: tuple[float, str],
        start: float,
    ) -> None:
        """Every eligible provider is benched (or drained until a set time): park the task
        until the earliest comes back; ``wait`` is (that time in epoch seconds, why).

        The executor, and :meth:`drain_wait`, only wait when that comes before the task's
        deadline. The status says whom it waits for and until when (Progressing=False,
        WaitingForProvider), written once per distinct wait; a timer runs the task again
        at that time, from status, like any other run (so an operator restart meanwhile
        loses nothing: the next operator decides again).
        """
        until, message = wait
        now = self.runtime.clock()
        # The timer first: a write that fails (API unavailable) must not leave the task
        # parked with nothing to wake it (its deadline timer was cancelled when it ran).
        self._cancel_deadline(ref.uid)
        self.deadline_timers[ref.uid] = asyncio.get_running_loop().call_later(
            max(until - now, 0.0) + 0.05, self._wake, body
        )
        existing = conditions.get_condition(previous.conditions, PROGRESSING)
        waiting = previous
        if (
            existing is None
            or existing.reason != "WaitingForProvider"
            or existing.message != message
        ):
            conds = _task_conditions(
                previous,
                progressing=("False", "WaitingForProvider", message),
                succeeded=("Unknown", "WaitingForProvider", message),
                now=now,
                generation=ref.generation,
            )
            waiting = previous.model_copy(
                update={
                    "phase": (
                        TaskPhase.RUNNING
                        if previous.phase is TaskPhase.RUNNING
                        else TaskPhase.PENDING
                    ),
                    "decision": decided,
                    "provider": decided.provider,
                    "conditions": conds,
                    "start_time": _time(start),
                    "observed_generation": ref.generation,
                }
            )
            if not await self.write(ref, waiting):
                return  # gone (the timer finds nothing to do), or retried at the wake
            self.runtime.metrics.task_waits.labels(ref.namespace, chain.name).inc()
            self.runtime.event(
                ref.object_ref, type="Normal", reason="WaitingForProvider", message=message
            )
            # Run again when the cooldown ends, from the status just written.
            again = {**body, "status": waiting.model_dump(by_alias=True, mode="json")}
            self._cancel_deadline(ref.uid)
            self.deadline_timers[ref.uid] = asyncio.get_running_loop().call_later(
                max(until - now, 0.0) + 0.05, self._wake, again
            )

    async def conclude(
        self,
        ref: TaskRef,
        previous: DelegatedTaskStatus,
        chain: ChainRuntime,
        decided: Decision,
        result: ExecutionResult,
        *,
        start: float,
    ) -> None:
        """Write the final status (and the result ConfigMap if the answer is large)."""

        async def fail(reason: str, message: str) -> None:
            await self.finish(
                ref,
                previous,
                start=start,
                phase=TaskPhase.FAILED,
                reason=reason,
                message=message,
                decision=decided,
                attempts=list(result.attempts),
            )

        if result.completion is None:
            await fail(result.failure_reason, REDACTOR.scrub(result.failure_message))
            return
        completion = result.completion
        text = completion.text
        size = len(text.encode("utf-8"))
        config_map = None
        if size > self.config.max_result_bytes:
            await fail(
                "ResultTooLarge",
                f"{result.provider} answered {size} bytes; at most "
                f"{self.config.max_result_bytes} can be stored",
            )
            return
        if size > self.config.max_status_text_bytes:
            config_map = f"{ref.name}-result"[:253]
            try:
                await self.runtime.kube.apply_configmap(
                    ref.namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": config_map,
                            "namespace": ref.namespace,
                            "ownerReferences": [ref.owner_reference],
                            "labels": {"chainop.dev/task": ref.name[:63]},
                        },
                        "data": {"text": text},
                    },
                )
            except KubeError as error:
                await fail(
                    "ResultNotStored",
                    f"could not store the answer in ConfigMap {config_map}: {error}",
                )
                return
            text = ""
        task_result = TaskResult(
            provider=result.provider,
            text=text,
            finish_reason=completion.finish_reason,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=result.cost_usd,
            latency_ms=result.latency_ms,
            attempt=result.attempt,
            was_terminus=result.was_terminus,
            hedged=result.hedged,
            extra_cost_usd=result.extra_cost_usd,
            first_token_ms=completion.first_token_ms,
            tool_calls=list(completion.tool_calls),
            stitched=bool(result.parts),
            parts=[
                ResultPart(provider=name, chars=chars, complete=index == len(result.parts) - 1)
                for index, (name, chars) in enumerate(result.parts)
            ],
            output_config_map=config_map,
        )
        where = f" (answer in ConfigMap {config_map})" if config_map else ""
        await self.finish(
            ref,
            previous,
            start=start,
            phase=TaskPhase.SUCCEEDED,
            reason="Answered",
            message=f"{result.provider} answered on attempt {result.attempt}{where}",
            decision=decided,
            attempts=list(result.attempts),
            result=task_result,
        )

    async def finish(
        self,
        ref: TaskRef,
        previous: DelegatedTaskStatus,
        *,
        start: float,
        phase: TaskPhase,
        reason: str,
        message: str,
        decision: Decision | None = None,
        attempts: list[Attempt] | None = None,
        result: TaskResult | None = None,
    ) -> None:
        """Write a final status: Succeeded or Failed, with conditions saying why."""
        now = self.runtime.clock()
        ok = phase is TaskPhase.SUCCEEDED
        conds = _task_conditions(
            previous,
            progressing=("False", "Finished" if ok else reason, "" if ok else message),
            succeeded=("True" if ok else "False", reason, message),
            now=now,
            generation=ref.generation,
        )
        final_attempts = attempts if attempts is not None else list(previous.attempts)
        chosen = decision or previous.decision
        final = previous.model_copy(
            update={
                "phase": phase,
                "provider": result.provider if result else (chosen.provider if chosen else ""),
                "latency": f"{result.latency_ms}ms" if result else "",
                "cost": f"${result.cost_usd:.6f}" if result else "",
                "decision": chosen,
                "attempts": final_attempts,
                "attempt_count": len(final_attempts),
                "pending_job": None,
                "result": result,
                "conditions": conds,
                "start_time": _time(start),
                "completion_time": _time(now),
                "observed_generation": ref.generation,
            }
        )
        if await self.write(ref, final, final=True):
            metrics = self.runtime.metrics
            metrics.tasks.labels(ref.namespace, phase.value).inc()
            metrics.task_duration.labels(ref.namespace, phase.value).observe(max(now - start, 0.0))
            if not ok:
                self.runtime.event(ref.object_ref, type="Warning", reason=reason, message=message)

    async def write(self, ref: TaskRef, new: DelegatedTaskStatus, *, final: bool = False) -> bool:
        """Patch a task's status; False if the task is gone.

        A final status is the only copy of the answer, so it is retried with backoff
        (the API server may be restarting) for up to ``FINAL_WRITE_PATIENCE`` seconds.
        """
        wire = new.model_dump(by_alias=True, mode="json")
        delay = 0.2
        waited = 0.0
        while True:
            try:
                await self.runtime.kube.patch_status(TASKS, ref.namespace, ref.name, wire)
            except KubeError as error:
                if error.not_found:
                    return False
                if not final or waited >= FINAL_WRITE_PATIENCE:
                    log.warning(
                        "status of task %s/%s not written: %s", ref.namespace, ref.name, error
                    )
                    return False
                log.info("API unavailable (%s); retrying the final status of %s", error, ref.name)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
                continue
            self.runtime.metrics.status_writes.labels("DelegatedTask").inc()
            if final:
                self.remember_finished(ref.uid)
            return True

    def remember_finished(self, uid: str) -> None:
        """Remember a task we finished, so stale watch events of it never restart it."""
        self.finished[uid] = None
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
