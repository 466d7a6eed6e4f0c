"""The operator's own settings, built once from the command line (``chainop run``)."""

from __future__ import annotations

from dataclasses import dataclass

from chainop.providers.http import TransportName

#: The shortest kopf peering lifetime allowed. kopf renews a keep-alive after
#: ``max(1, lifetime - randint(5, 10))`` seconds, so from 6 s up a renewal always lands at
#: least 5 s before the record expires (kopf's own margin); below, that margin shrinks.
MIN_PEERING_LIFETIME = 6


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """Knobs of one operator process. Defaults suit production; tests shorten the loops."""

    #: Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    #: Port of the Prometheus ``/metrics`` endpoint; None disables it.
    metrics_port: int | None = 9090
    metrics_address: str = "0.0.0.0"
    #: kopf liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz``; None disables it.
    liveness_endpoint: str | None = None
    #: kopf peering name; None runs standalone (one replica).
    peering: str | None = None
    #: kopf peering priority: the live replica with the highest one is active.
    priority: int = 0
    #: kopf peering lifetime (seconds): how long a replica's keep-alive counts as alive.
    #: A SIGKILLed active replica is replaced this long after its last renewal at worst
    #: (kopf's own default is 60 s; docs/reliability.md has the arithmetic).
    peering_lifetime: int = 10
    #: This replica's peering identity (what kopf writes into the peering object).
    identity: str = ""
    #: Cadence of the health loop (probes due, self-healing, status flushes).
    tick_seconds: float = 0.25
    #: When only probe times changed, refresh a chain's status about this often (spread
    #: ±25 % per chain): 1,000 chains cost ~100 writes a minute, not 1,000.
    status_refresh_seconds: float = 600.0
    #: Re-check Secrets and Deployments of Ready chains this often (NotReady: 5 s).
    revalidate_seconds: float = 60.0
    revalidate_not_ready_seconds: float = 5.0
    #: A task still running after this long gets a ``Running`` status write; faster
    #: tasks go straight to their final status (one write instead of two).
    running_status_delay: float = 0.25
    #: Answers longer than this (UTF-8 bytes) go to an owned ConfigMap.
    max_status_text_bytes: int = 16 * 1024
    #: Answers longer than this cannot be stored at all (a ConfigMap holds < 1 MiB).
    max_result_bytes: int = 900 * 1024
    #: DelegatedTasks executed at the same time by this process.
    max_concurrent_tasks: int = 512
    #: Garbage-collector thresholds set once the operator has started (after freezing
    #: what startup built: modules, kopf's registry, the runtime), or None to leave
    #: Python's (700, 10, 10). With those, a burst of 500 tasks paused the event loop for
    #: ~200 young and two full collections, the full ones 0.1-0.24 s each
    #: (docs/benchmarks.md, 4.1); cyclic garbage is still collected, only less often.
    gc_thresholds: tuple[int, int, int] | None = (10_000, 20, 20)
    #: httpx transport for provider calls: "aiohttp" (faster under load) or "httpx".
    transport: TransportName = "aiohttp"
    #: A probe slower than this fraction of its timeout marks the provider Degraded.
    slow_probe_fraction: float = 0.5
    #: Endpoint allow-list (hosts, ``*.suffix`` or CIDRs). Empty: any endpoint except
    #: link-local and cloud-metadata addresses, which are always refused unless listed.
    endpoint_allow: tuple[str, ...] = ()
    #: Let kopf list/watch CRDs and namespaces cluster-wide (off for namespaced RBAC).
    cluster_scan: bool = True
    #: Log format: "plain" or "json".
    log_format: str = "plain"
    verbose: bool = False
