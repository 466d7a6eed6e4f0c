"""Failover drills (``spec.drills``) and the per-chain gauges the chart's alerts read.

``DrillRunner`` hooks into the Runtime's loop (``Runtime.tick_hooks``): on every pass of
the *active* replica it starts the drills that are due (``chainop.core.drills``: the
next one ``intervalMinutes`` after ``status.lastDrill.time``), at most one per chain at
a time, each in the background. A standby replica runs none and drops its gauges, so
only the leader's values are scraped.

A drill runs the real executor over the drill's plan with a wrapped provider call: the
head raises ``DrillForcedError`` (a capability miss: no penalty, nothing sent) and any
provider after the first really called one raises ``DrillStoppedError``. The one real
call is an ordinary call: its success resets that provider's failures, its failure
counts (and may bench it) exactly like a task's. Drill calls are not DelegatedTask
traffic, so they stay out of the request, failover and spillover metrics; they have
their own (``chainop_drills_total``, ``chainop_drill_last_passed``).

The result goes to ``ChainRuntime.last_drill``; the Runtime's next status flush writes
it as ``status.lastDrill``. A failing drill posts a ``DrillFailed`` Warning on the
chain, the first pass after failures a ``DrillRecovered`` Normal Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from chainop.core import drills
from chainop.core.chain import ChainObserver, ExecutionResult
from chainop.core.chain import execute as execute_chain
from chainop.core.models import (
    DrillStatus,
    ProviderSpec,
    Strategy,
)
from chainop.core.routing import RoutingDecision
from chainop.operator import audit
from chainop.operator.runtime import ChainRuntime, Runtime

if TYPE_CHECKING:
    from chainop.operator.spend import BudgetKeeper

log = logging.getLogger(__name__)

#: Upper bound of one drill (seconds): a hung hop must not hold a drill slot forever.
DRILL_TIMEOUT_SECONDS = 120.0


class _DrillObserver(ChainObserver):
    """A real hop's own failure benches it like any call: metric and Event on the chain."""

    def __init__(self, runtime: Runtime, chain: ChainRuntime) -> None:
        self.runtime = runtime
        self.chain = chain

    def on_benched(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self.runtime.metrics.benchings.labels(
            self.chain.namespace, self.chain.name, provider.name
        ).inc()
        # Every benching is an audit line (issue 17), a drill's too: no task, reason says so.
        audit.chain_event(
            "benching",
            namespace=self.chain.namespace,
            chain=self.chain.name,
            provider=provider,
            outcome=f"Benched {seconds:.0f}s",
            reason=f"(drill) {reason}",
        )
        self.runtime.event(
            self.chain.ref,
            type="Warning",
            reason="ProviderBenched",
            message=f"{provider.name} benched for {seconds:.0f}s after (drill): {reason}",
        )

    def on_quota_exhausted(self, provider: ProviderSpec, seconds: float, reason: str) -> None:
        self.runtime.metrics.quota_exhausted.labels(
            self.chain.namespace, self.chain.name, provider.name
        ).inc()


class DrillRunner:
    """Schedules and runs failover drills for one operator process.

    ``budgets`` (the TaskRunner's keeper): a drill leaves out the hops the chain's spend
    budget leaves out of new tasks, so a drill with ``allowPaid`` never calls a paid
    provider whose cap, or whose chain's budget, is spent.
    """

    def __init__(self, runtime: Runtime, budgets: BudgetKeeper | None = None) -> None:
        self.runtime = runtime
        self.budgets = budgets
        #: Chains with a drill in flight.
        self.running: set[tuple[str, str]] = set()
        #: Chains whose gauges this replica exports (dropped when they go away).
        self.exported: set[tuple[str, str]] = set()
        #: Label values of the restarts-remaining series this replica exports.
        self.restart_series: set[tuple[str, str, str, str]] = set()
        runtime.tick_hooks.append(self.on_tick)

    # ----------------------------------------------------------------- the hook

    def on_tick(self, now: float, active: bool) -> None:
        """Start due drills and refresh the gauges (active); drop the gauges (standby)."""
        if not active:
            self._drop_gauges(set(self.exported))
            return
        present = set(self.runtime.chains)
        self._drop_gauges(self.exported - present)
        for key, chain in list(self.runtime.chains.items()):
            self._export(chain)
            self.exported.add(key)
            if self._due(chain, now=now):
                self.running.add(key)
                self.runtime.spawn(self._drill(chain, now=now), name=f"drill-{key[0]}-{key[1]}")

    def _due(self, chain: ChainRuntime, *, now: float) -> bool:
        spec = chain.spec
        if spec is None or spec.drills is None or not chain.ready or chain.resync:
            return False  # resync: status (and its lastDrill) is about to be read again
        if (chain.namespace, chain.name) in self.running:
            return False
        last = chain.last_drill.time if chain.last_drill is not None else None
        return drills.is_due(
            last=last.timestamp() if last is not None else None,
            interval_minutes=spec.drills.interval_minutes,
            now=now,
        )

    # ----------------------------------------------------------------- one drill

    async def _drill(self, chain: ChainRuntime, *, now: float) -> None:
        key = (chain.namespace, chain.name)
        try:
            result = await self.run_drill(chain, now=now)
        finally:
            self.running.discard(key)
        self._record(chain, result)

    async def run_drill(self, chain: ChainRuntime, *, now: float) -> DrillStatus:
        """Run one drill of ``chain`` now and say how it went (no status write here)."""
        spec, board = chain.spec, chain.board
        assert spec is not None
        assert spec.drills is not None
        assert board is not None
        started = datetime.fromtimestamp(now, tz=UTC)
        plan = drills.plan(
            spec,
            chain.active_order(),
            allow_paid=spec.drills.allow_paid,
            now=started,
            spent=self.spent(chain),
        )
        if not plan.runnable:
            return DrillStatus(time=started, forced=plan.head, passed=False, reason=plan.reason)
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await self._execute(chain, plan, now=now)
        verdict = drills.judge(
            plan,
            result.attempts,
            answered_by=result.provider if result.succeeded else "",
            failure=result.failure_message,
        )
        return DrillStatus(
            time=started,
            forced=plan.head,
            path=list(verdict.path),
            latency_ms=int((loop.time() - began) * 1000),
            passed=verdict.passed,
            reason=verdict.reason,
        )

    def spent(self, chain: ChainRuntime) -> frozenset[str]:
        """Providers the chain's budget leaves out of a new task now: those its gate drops
        from a route over every provider; with ``onExceeded: Fail`` spent, every paid one."""
        spec = chain.spec
        if self.budgets is None or spec is None or spec.budget is None:
            return frozenset()
        names = tuple(p.name for p in spec.providers)
        every = RoutingDecision(providers=names, reason="drill", rule=5, local_only=False)
        gated = self.budgets.gate(chain, every, running=False)
        if gated.failure is not None:
            return frozenset(p.name for p in spec.providers if drills.is_paid(p))
        return frozenset(names) - set(gated.decision.providers)

    async def _execute(
        self, chain: ChainRuntime, plan: drills.DrillPlan, *, now: float
    ) -> ExecutionResult:
        spec, board = chain.spec, chain.board
        assert spec is not None
        assert board is not None
        # Fallback over the plan's order: the plan already applied the chain's strategy.
        as_fallback = spec.model_copy(update={"strategy": Strategy.FALLBACK})
        return await execute_chain(
            chain=as_fallback,
            eligible=plan.eligible,
            request=drills.DRILL_REQUEST,
            call=drills.DrillCall(self.runtime.clients, plan.head),
            board=board,
            now=self.runtime.clock,
            timeout_seconds=DRILL_TIMEOUT_SECONDS,
            api_keys=chain.api_keys,
            task_key=f"drill-{chain.uid}-{int(now)}",
            observer=_DrillObserver(self.runtime, chain),
        )

    def _record(self, chain: ChainRuntime, result: DrillStatus) -> None:
        """Keep the result for the status flush; metrics; Events on failure and recovery."""
        previous = chain.last_drill
        chain.last_drill = result
        outcome = "passed" if result.passed else "failed"
        self.runtime.metrics.drills.labels(chain.namespace, chain.name, outcome).inc()
        self._export(chain)
        # Exported, so owned: a drill can end after its chain was deleted or this replica
        # turned standby (it takes up to DRILL_TIMEOUT_SECONDS), and the next tick must
        # drop these gauges then — else a stale failure keeps ChainopDrillFailing firing.
        self.exported.add((chain.namespace, chain.name))
        log.info("drill of chain %s/%s %s: %s", chain.namespace, chain.name, outcome, result.reason)
        # The provider that answered (or failed) the drill, so the trail shows where the
        # synthetic request went; the forced head is in the reason, never "reached".
        reached = result.path[-1] if result.path else None
        known = chain.spec.provider(reached) if chain.spec is not None and reached else None
        audit.record(
            "drill",
            namespace=chain.namespace,
            chain=chain.name,
            provider=reached,
            provider_tier=known.privacy_tier.value if known is not None else None,
            from_provider=result.forced or None,
            outcome=outcome,
            reason=result.reason,
        )
        if not result.passed:
            self.runtime.event(
                chain.ref, type="Warning", reason="DrillFailed", message=result.reason
            )
        elif previous is not None and not previous.passed:
            self.runtime.event(
                chain.ref, type="Normal", reason="DrillRecovered", message=result.reason
            )

    # ----------------------------------------------------------------- gauges

    def _export(self, chain: ChainRuntime) -> None:
        """Set the chain's gauges: readiness, last drill, backend restarts remaining."""
        m, ns, name = self.runtime.metrics, chain.namespace, chain.name
        ready = any(c.type == "Ready" and c.status == "True" for c in chain.conditions)
        m.chain_ready.labels(ns, name).set(1.0 if ready else 0.0)
        drill, spec = chain.last_drill, chain.spec
        if drill is not None and drill.time is not None and spec is not None and spec.drills:
            m.drill_last_passed.labels(ns, name).set(1.0 if drill.passed else 0.0)
            m.drill_last_time.labels(ns, name).set(drill.time.timestamp())
        else:  # drills turned off: an old failure must not keep ChainopDrillFailing firing
            for gauge in (m.drill_last_passed, m.drill_last_time):
                with contextlib.suppress(KeyError):
                    gauge.remove(ns, name)
        if spec is None:
            return
        now = self.runtime.clock()
        for provider in spec.providers:
            if provider.backend is None:
                continue
            ledger = self.runtime.restarts.ledgers.get((ns, provider.backend.deployment))
            if ledger is None:
                continue
            used = len(ledger.recent(now=now))
            left = max(spec.self_healing.max_restarts_per_hour - used, 0)
            labels = (ns, name, provider.name, provider.backend.deployment)
            m.restarts_remaining.labels(*labels).set(float(left))
            self.restart_series.add(labels)

    def _drop_gauges(self, keys: set[tuple[str, str]]) -> None:
        """Remove the chain-level gauges of chains gone (or of every chain, on standby)."""
        m = self.runtime.metrics
        for ns, name in keys:
            for gauge in (m.chain_ready, m.drill_last_passed, m.drill_last_time):
                with contextlib.suppress(KeyError):
                    gauge.remove(ns, name)
            self.exported.discard((ns, name))
        for labels in [s for s in self.restart_series if (s[0], s[1]) in keys]:
            with contextlib.suppress(KeyError):
                m.restarts_remaining.remove(*labels)
            self.restart_series.discard(labels)
