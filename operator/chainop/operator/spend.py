"""Spend budgets in the operator: the chain's ``status.spend`` as the store of record.

The arithmetic is ``chainop.core.budget``'s; this module moves it to and from the API.

**Store and concurrency.** A chain's spend lives in its ``status.spend``, so it survives
operator restarts and every replica reads the same figure. It is written with optimistic
concurrency: read the chain, add the pending charges to what it says, and patch
``status.spend`` with the ``resourceVersion`` that was read as a precondition; a 409
means another writer (the health loop, another replica) got in between, so read again and
retry. A merge patch alone could not do it: it has no "add", so two writers each adding a
charge to the same figure would lose one, and the list of charged uids would be replaced,
not merged. The health loop's own status writes leave ``spend`` out, so they never undo
a charge (they only cost this module a retry).

**Exactly once.** A finished task's cost is charged after its final status is written;
the charge carries the task's uid, and the spend keeps the uids charged recently, so
charging a task twice counts it once. Only after the chain's write is the task marked
``status.charged: true``. An operator that dies in between finds, on restart, the task
finished and not marked (kopf lists every task again) and charges it again: a no-op on
the chain, then the mark. A task already running when the budget is spent finishes; only
new tasks are routed LocalOnly or failed (``gate``).

Charges are batched per chain (one conditional write for all tasks finished meanwhile),
so a burst of tasks costs a handful of chain writes, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from chainop.core import budget
from chainop.core.chain import ExecutionResult
from chainop.core.models import (
    API_VERSION,
    BudgetAction,
    BudgetSpec,
    DelegatedTaskStatus,
    ProviderChainSpec,
    SpendStatus,
    TaskPhase,
)
from chainop.core.routing import RoutingDecision
from chainop.kube.client import CHAINS, TASKS, KubeError, ObjectRef
from chainop.operator import audit

if TYPE_CHECKING:
    from chainop.operator.runtime import ChainRuntime, Runtime

log = logging.getLogger(__name__)

#: Seconds between rounds of the keeper's loop (pending charges, window resets, gauges).
ROUND_SECONDS = 1.0
#: Conditional writes tried per round before the charges wait for the next round.
MAX_TRIES = 8
#: Charges written in one chain write (a longer queue is written in several).
BATCH = 64
#: Finished tasks remembered as handled (so their watch events cost nothing).
HANDLED_MEMORY = 100_000

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Pending:
    """A charge waiting to be written, and the task to mark afterwards."""

    task: str
    charge: budget.Charge


class BudgetKeeper:
    """Charges finished tasks to their chains' budgets and routes new tasks by them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        #: The latest spend seen per chain (our writes and watch events).
        self.known: dict[Key, budget.Spend | None] = {}
        self.pending: dict[Key, dict[str, Pending]] = {}
        self.handled: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        #: When each chain's failed spend write was last logged (a warning a minute).
        self.warned: dict[Key, float] = {}

    # ----------------------------------------------------------------- reading

    def observe_chain(self, body: dict[str, Any], *, deleted: bool) -> None:
        """A chain's watch event: remember the spend its status shows (the later reading
        wins: our own write's answer may come before an older event)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if deleted:
            self.known.pop(key, None)
            with contextlib.suppress(KeyError):
                self.runtime.metrics.budget_used_ratio.remove(*key)
            return
        raw = (body.get("status") or {}).get("spend")
        try:
            seen = budget.from_status(SpendStatus.model_validate(raw) if raw else None)
        except ValidationError:
            return  # a status we cannot read is no reading; our next write replaces it
        self.known[key] = budget.newer(self.known.get(key), seen)

    async def refresh(self, chain: ChainRuntime) -> None:
        """Read a chain's spend from the API server before gating a new task on it, while
        this replica's picture of the chain may be stale.

        A replica taking over (``chain.resync``) may still hold the spend it saw in its
        last term as leader; kopf re-lists the chains on resume, but a task's event may be
        handled before its chain's. Gated on the old, lower spend, a task could reach a paid
        provider after the budget is spent. One read per new task, only in that window and
        only for budgeted chains; a refused read leaves the last known spend (and is logged).
        """
        if chain.spec is None or chain.spec.budget is None or not chain.resync:
            return
        try:
            obj = await self.runtime.kube.read_chain(chain.namespace, chain.name)
        except KubeError as error:
            log.warning(
                "spend of chain %s/%s not re-read after a takeover: %s",
                chain.namespace,
                chain.name,
                error,
            )
            return
        if obj is not None:
            self.observe_chain(obj, deleted=False)

    def gate(self, chain: ChainRuntime, decision: RoutingDecision, *, running: bool) -> budget.Gate:
        """The budget's say on a task's routing; a task already running is let through."""
        if running or chain.spec is None or chain.spec.budget is None:
            return budget.Gate(decision)
        key = (chain.namespace, chain.name)
        return budget.gate(chain.spec, decision, self.known.get(key), now=self.runtime.clock())

    # ----------------------------------------------------------------- charging

    def finished(
        self, *, chain: ChainRuntime, task: str, uid: str, result: ExecutionResult
    ) -> None:
        """A task this process executed has ended: count its cost (metric) and, when the
        chain has a budget, queue the charge."""
        charge = budget.task_charge(uid, result.attempts, None, finished_at=self.runtime.clock())
        for provider, usd in charge.by_provider.items():
            self.runtime.metrics.spend.labels(chain.namespace, chain.name, provider).inc(usd)
        if charge.usd > 0 and chain.spec is not None and chain.spec.budget is not None:
            self._queue((chain.namespace, chain.name), Pending(task, charge))

    def recover(self, body: dict[str, Any]) -> None:
        """A finished task's watch event: charge it if it cost something and is not
        marked yet (its operator stopped between the final write and the charge)."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        status = body.get("status") or {}
        if status.get("charged") or uid in self.handled:
            return
        namespace = str(meta.get("namespace", ""))
        chain = str((body.get("spec") or {}).get("chain", ""))
        key = (namespace, chain)
        if uid in self.pending.get(key, {}):
            return
        known = self.runtime.chains.get(key)
        if known is not None and known.spec is not None and known.spec.budget is None:
            self._remember(uid)  # no budget: nothing to charge
            return
        try:
            parsed = DelegatedTaskStatus.model_validate(status)
        except ValidationError:
            return
        if parsed.phase not in (TaskPhase.SUCCEEDED, TaskPhase.FAILED):
            return
        ended = parsed.completion_time
        if ended is not None and ended.tzinfo is None:
            ended = ended.replace(tzinfo=UTC)
        charge = budget.task_charge(
            uid,
            parsed.attempts,
            parsed.result,
            finished_at=ended.timestamp() if ended is not None else None,
        )
        if charge.usd <= 0:
            self._remember(uid)
            return
        self._queue(key, Pending(str(meta.get("name", "")), charge))

    def _queue(self, key: Key, pending: Pending) -> None:
        self.pending.setdefault(key, {})[pending.charge.uid] = pending
        self._wake.set()

    def _remember(self, uid: str) -> None:
        self.handled[uid] = None
        while len(self.handled) > HANDLED_MEMORY:
            self.handled.popitem(last=False)

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Write pending charges, start new windows in status, keep the gauge current."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=ROUND_SECONDS)
            self._wake.clear()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive anything one round does
                log.exception("budget round failed")

    async def round(self) -> None:
        """One pass: every chain with pending charges, then window resets and gauges."""
        for key in list(self.pending):
            await self.flush(key)
        now = self.runtime.clock()
        for key, chain in list(self.runtime.chains.items()):
            spec = chain.spec
            if spec is None or spec.budget is None:
                with contextlib.suppress(KeyError):
                    self.runtime.metrics.budget_used_ratio.remove(*key)
                continue
            known = self.known.get(key)
            fresh = budget.current(known, spec.budget, now=now)
            if known is not None and fresh != known and self.runtime.leadership.active:
                await self.write(key, [])  # a new window: show zero in status
            self.runtime.metrics.budget_used_ratio.labels(*key).set(
                budget.ratio(self.known.get(key), spec.budget, now=now)
            )

    async def flush(self, key: Key) -> None:
        """Write a chain's pending charges (in batches), then mark their tasks."""
        queue = self.pending.get(key, {})
        while queue:
            batch = list(queue.values())[:BATCH]
            if not await self.write(key, [p.charge for p in batch]):
                return  # the API is unavailable or busy: the next round tries again
            for pending in batch:
                queue.pop(pending.charge.uid, None)
                self._remember(pending.charge.uid)
            await asyncio.gather(*(self.mark(key[0], p) for p in batch))
        self.pending.pop(key, None)

    async def write(self, key: Key, charges: Sequence[budget.Charge]) -> bool:
        """Add ``charges`` to the chain's ``status.spend`` under a resourceVersion
        precondition, retrying on conflicts. True when done (or nothing to do: the chain
        is gone or has no budget), False to try again later."""
        namespace, name = key
        kube = self.runtime.kube
        for _ in range(MAX_TRIES):
            try:
                obj = await kube.read_chain(namespace, name)
            except KubeError as error:
                self.write_failed(key, error)  # a refused read stops the write as surely
                return False
            spec = _budget_of(obj)
            if obj is None or spec is None:
                return True  # gone, or no budget (any more): nothing to charge
            raw = (obj.get("status") or {}).get("spend")
            try:
                stored = budget.from_status(SpendStatus.model_validate(raw) if raw else None)
            except ValidationError:
                stored = None  # unreadable: start the window again rather than wedge
            applied = budget.apply(stored, charges, spec, now=self.runtime.clock())
            if applied.spend == stored:
                self.known[key] = budget.newer(self.known.get(key), stored)
                return True  # every charge was counted already
            wire = budget.to_status(applied.spend).model_dump(by_alias=True, mode="json")
            meta = obj.get("metadata") or {}
            try:
                await kube.patch_status(
                    CHAINS,
                    namespace,
                    name,
                    {"spend": wire},
                    resource_version=str(meta.get("resourceVersion", "")) or None,
                )
            except KubeError as error:
                if error.conflict:
                    continue
                if error.not_found:
                    return True
                self.write_failed(key, error)
                return False
            self.runtime.metrics.status_writes.labels("ProviderChain").inc()
            self.known[key] = budget.newer(self.known.get(key), applied.spend)
            self.announce(key, str(meta.get("uid", "")), spec, applied, stored)
            return True
        return False

    def write_failed(self, key: Key, error: KubeError) -> None:
        """A spend write (or its read) the API server refused, not a conflict: counted,
        and a warning at most once a minute per chain. It is retried every pass, and while
        it fails the budget cannot gate (charges wait in memory, lost if chainop stops)."""
        namespace, name = key
        self.runtime.metrics.spend_write_errors.labels(namespace, name).inc()
        now = self.runtime.clock()
        if now - self.warned.get(key, float("-inf")) >= 60.0:
            self.warned[key] = now
            log.warning(
                "spend of chain %s/%s not written (retried; the budget cannot gate until it "
                "is): %s",
                namespace,
                name,
                error,
            )

    async def mark(self, namespace: str, pending: Pending) -> None:
        """Mark a task charged (only the task with that uid; gone is fine)."""
        try:
            await self.runtime.kube.patch_status(
                TASKS, namespace, pending.task, {"charged": True}, uid=pending.charge.uid
            )
        except KubeError as error:
            if not (error.not_found or error.conflict):
                log.info("task %s/%s not marked charged: %s", namespace, pending.task, error)
            return
        self.runtime.metrics.status_writes.labels("DelegatedTask").inc()

    def announce(
        self,
        key: Key,
        uid: str,
        spec: BudgetSpec,
        applied: budget.Applied,
        stored: budget.Spend | None,
    ) -> None:
        """Events and audit lines for thresholds crossed (the write that crossed them is
        the only one that sees it: once per window) and for a new window."""
        namespace, name = key
        ref = ObjectRef(API_VERSION, "ProviderChain", namespace, name, uid)
        spent = applied.spend
        if stored is None or stored.window_start != spent.window_start:
            audit.chain_event(
                "budget",
                namespace=namespace,
                chain=name,
                provider=None,
                outcome="WindowStarted",
                reason=f"{spec.window} window from {budget.to_status(spent).window_start}",
                cost_usd=spent.usd,
            )
        for crossing in applied.crossings:
            full = crossing.threshold >= 1.0
            whose = f"provider {crossing.provider}: " if crossing.provider else ""
            if crossing.provider:
                action = f"{crossing.provider} is left out of new tasks"
            elif spec.on_exceeded is BudgetAction.FAIL:
                action = "new tasks fail (BudgetExceeded)"
            else:
                action = "new tasks run on Sovereign providers only"
            message = (
                f"{whose}{crossing.usd:.2f} of {crossing.max_usd:.2f} USD spent in the "
                f"{spec.window} window ({crossing.threshold:.0%})" + (f"; {action}" if full else "")
            )
            reason = "BudgetExceeded" if full else "BudgetWarning"
            self.runtime.event(ref, type="Warning", reason=reason, message=message)
            chain = self.runtime.chains.get(key)
            provider = (
                chain.spec.provider(crossing.provider)
                if chain is not None and chain.spec is not None and crossing.provider
                else None
            )
            audit.chain_event(
                "budget",
                namespace=namespace,
                chain=name,
                provider=provider,
                outcome=reason,
                reason=message,
                cost_usd=crossing.usd,
            )


def _budget_of(obj: dict[str, Any] | None) -> BudgetSpec | None:
    """The budget of a chain as read from the API (None: no chain, no budget, or a spec
    the operator rejects — such a chain runs no tasks)."""
    if obj is None:
        return None
    try:
        return ProviderChainSpec.model_validate(obj.get("spec") or {}).budget
    except ValidationError:
        return None
