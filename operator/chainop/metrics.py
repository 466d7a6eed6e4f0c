"""Every Prometheus metric chainop exports, in one place (documented in docs/operations.md).

Labels never carry secrets: provider and chain names, namespaces, outcomes and states
only — never endpoints with credentials, never API keys. Metrics live in their own
``CollectorRegistry`` so tests and benchmarks can start fresh ones.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from chainop.core.models import ProviderState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metric families; one instance per operator process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.provider_requests = Counter(
            "chainop_provider_requests_total",
            "Calls to providers made for DelegatedTasks, by outcome "
            "(Succeeded, TransientError, RateLimited, IncompleteReply, ModelNotFound, "
            "Unsupported, QuotaExhausted, ContentPolicy, AuthError, PermanentError, "
            "DeadlineExceeded, Skipped).",
            ["namespace", "chain", "provider", "outcome"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "chainop_provider_request_duration_seconds",
            "Duration of calls to providers, by outcome.",
            ["namespace", "chain", "provider", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "chainop_failovers_total",
            "Times a task moved on from one provider to the next.",
            ["namespace", "chain", "from_provider", "to_provider"],
            registry=r,
        )
        self.spillovers = Counter(
            "chainop_spillovers_total",
            "Failovers from a Sovereign provider to a non-Sovereign one.",
            ["namespace", "chain", "from_provider", "to_provider"],
            registry=r,
        )
        self.benchings = Counter(
            "chainop_benchings_total",
            "Times a provider was benched (put in cooldown).",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.provider_state = Gauge(
            "chainop_provider_state",
            "1 for the provider's current state, 0 for the others.",
            ["namespace", "chain", "provider", "state"],
            registry=r,
        )
        # Load signals (the last reading of a provider with loadSignal; see providers/loadsignal)
        self.provider_load_waiting = Gauge(
            "chainop_provider_load_waiting",
            "Requests waiting in the provider's server queue, at the last load-signal read.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.provider_load_running = Gauge(
            "chainop_provider_load_running",
            "Requests the provider's server was serving, at the last load-signal read.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.provider_kv_cache_usage = Gauge(
            "chainop_provider_kv_cache_usage",
            "KV cache in use (0-1) on the provider's server, at the last load-signal read "
            "(absent when the server does not publish it).",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.exclusions = Counter(
            "chainop_exclusions_total",
            "Times self-healing excluded a provider from its chain's active order.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.restores = Counter(
            "chainop_restores_total",
            "Times an excluded provider recovered and was restored.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.restarts = Counter(
            "chainop_backend_restarts_total",
            "Backend Deployment restarts chainop ordered.",
            ["namespace", "deployment"],
            registry=r,
        )
        self.probes = Counter(
            "chainop_probes_total",
            "Active health probes, by kind (List, Health, Generate) and result (ok, "
            "failed, loading, model_not_served); one per distinct endpoint+model+kind.",
            ["kind", "result"],
            registry=r,
        )
        self.unhealthy = Counter(
            "chainop_provider_unhealthy_total",
            "Times a provider turned Unhealthy, by reason (ProbeFailed, Wedged: real calls "
            "failing while nothing succeeds, ModelNotServed: the listing lacks the model).",
            ["namespace", "chain", "provider", "reason"],
            registry=r,
        )
        self.quota_exhausted = Counter(
            "chainop_quota_exhausted_total",
            "Times a provider said its quota, credit or spend limit ran out.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.tasks = Counter(
            "chainop_tasks_total",
            "DelegatedTasks that reached a final phase (Succeeded or Failed).",
            ["namespace", "phase"],
            registry=r,
        )
        self.tasks_in_flight = Gauge(
            "chainop_tasks_in_flight",
            "DelegatedTasks being executed right now.",
            registry=r,
        )
        self.task_duration = Histogram(
            "chainop_task_duration_seconds",
            "From the start of execution to the final phase, all attempts included.",
            ["namespace", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.saturated_skips = Counter(
            "chainop_saturated_skips_total",
            "Times a task skipped a provider whose load signal said it was saturated.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.hedges = Counter(
            "chainop_hedged_attempts_total",
            "Extra attempts started by spec.hedge, by how they ended (won, lost, failed).",
            ["namespace", "chain", "provider", "result"],
            registry=r,
        )
        self.task_waits = Counter(
            "chainop_task_waits_total",
            "Times a task waited for a benched provider's cooldown to end instead of failing.",
            ["namespace", "chain"],
            registry=r,
        )
        self.first_token = Histogram(
            "chainop_first_token_seconds",
            "Time from sending a streamed request to its first token, by provider.",
            ["namespace", "chain", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_drift = Counter(
            "chainop_model_drift_total",
            "Times a provider's replies started naming another model than the configured one.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.guard_trips = Counter(
            "chainop_guard_trips_total",
            "Agent guards tripped by a task's conversation (ToolCountExceeded, ToolLoop).",
            ["namespace", "chain", "reason", "action"],
            registry=r,
        )
        self.drain_changes = Counter(
            "chainop_drain_transitions_total",
            "Providers drained or undrained by hand (spec.drains), by transition (Drained, "
            "Undrained: lifted by hand, Expired: its until passed).",
            ["namespace", "chain", "provider", "transition"],
            registry=r,
        )
        self.spend = Counter(
            "chainop_spend_usd_total",
            "USD that finished DelegatedTasks cost (usage x price, or the provider's own "
            "cost), by the provider that was paid.",
            ["namespace", "chain", "provider"],
            registry=r,
        )
        self.budget_used_ratio = Gauge(
            "chainop_budget_used_ratio",
            "Spend / spec.budget.maxUSD in the chain's current budget window (1 = spent; "
            "absent for chains without a budget).",
            ["namespace", "chain"],
            registry=r,
        )
        self.spend_write_errors = Counter(
            "chainop_spend_write_errors_total",
            "Failed writes of a chain's status.spend (not conflicts, which are retried at "
            "once): RBAC, validation, an unreachable API server.",
            ["namespace", "chain"],
            registry=r,
        )
        self.status_writes = Counter(
            "chainop_status_writes_total",
            "Status patches chainop sent to the API server, by resource kind.",
            ["kind"],
            registry=r,
        )
        # Failover drills (spec.drills; see operator/drills.py) and the gauges alerts need.
        self.drills = Counter(
            "chainop_drills_total",
            "Failover drills run, by result (passed, failed).",
            ["namespace", "chain", "result"],
            registry=r,
        )
        self.drill_last_passed = Gauge(
            "chainop_drill_last_passed",
            "1 when the chain's last failover drill passed, 0 when it failed.",
            ["namespace", "chain"],
            registry=r,
        )
        self.drill_last_time = Gauge(
            "chainop_drill_last_run_timestamp_seconds",
            "When the chain's last failover drill started (Unix seconds).",
            ["namespace", "chain"],
            registry=r,
        )
        self.chain_ready = Gauge(
            "chainop_chain_ready",
            "1 when the chain's Ready condition is True, 0 otherwise.",
            ["namespace", "chain"],
            registry=r,
        )
        self.restarts_remaining = Gauge(
            "chainop_backend_restarts_remaining",
            "Restarts of the provider's backend Deployment still allowed within the last "
            "hour (maxRestartsPerHour minus restarts chainop ordered); known once chainop "
            "has read the Deployment's restart ledger.",
            ["namespace", "chain", "provider", "deployment"],
            registry=r,
        )

    def set_provider_state(
        self, *, namespace: str, chain: str, provider: str, state: ProviderState
    ) -> None:
        """Set the state gauge: 1 for ``state``, 0 for every other state."""
        for candidate in ProviderState:
            self.provider_state.labels(namespace, chain, provider, candidate.value).set(
                1.0 if candidate is state else 0.0
            )

    def set_provider_load(
        self,
        *,
        namespace: str,
        chain: str,
        provider: str,
        waiting: float,
        running: float,
        kv_cache_usage: float | None,
    ) -> None:
        """Set the load gauges from one reading (KV usage dropped when not published)."""
        self.provider_load_waiting.labels(namespace, chain, provider).set(waiting)
        self.provider_load_running.labels(namespace, chain, provider).set(running)
        if kv_cache_usage is None:
            with contextlib.suppress(KeyError):
                self.provider_kv_cache_usage.remove(namespace, chain, provider)
        else:
            self.provider_kv_cache_usage.labels(namespace, chain, provider).set(kv_cache_usage)

    def forget_provider(self, *, namespace: str, chain: str, provider: str) -> None:
        """Drop the state and load series of a provider that left its chain."""
        for candidate in ProviderState:
            with contextlib.suppress(KeyError):
                self.provider_state.remove(namespace, chain, provider, candidate.value)
        for gauge in (
            self.provider_load_waiting,
            self.provider_load_running,
            self.provider_kv_cache_usage,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, chain, provider)

    def serve(self, port: int, *, address: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=address, registry=self.registry)
