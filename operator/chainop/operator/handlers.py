"""kopf wiring: startup builds the Runtime; watch events go to it. Nothing else here.

chainop reacts to raw watch events (``kopf.on.event``) rather than kopf's change
handlers: its state lives in ``.status`` (decided and written by chainop itself), so it
needs none of kopf's per-object progress annotations, finalizers or diff-base — each of
which would cost an extra API write per object. kopf still gives us watching with
reconnects, per-object serial delivery, peering and the liveness endpoint.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import kopf

from chainop.core.models import GROUP, VERSION
from chainop.kube.client import CHAINS, TASKS, KubeClient, load_api_client
from chainop.metrics import Metrics
from chainop.operator.config import OperatorConfig
from chainop.operator.drills import DrillRunner
from chainop.operator.runtime import Runtime
from chainop.operator.tasks import TaskRunner
from chainop.providers.registry import ProviderClients
from chainop.redact import install_log_filter

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff-base that keeps nothing: chainop has no change handlers to feed.

    kopf builds an object's "essence" (a deep copy) on every event to diff it for change
    handlers; with only ``on.event`` handlers that copy is pure cost (~11 % of the CPU in
    a 500-task burst, bench/results/profile-operator-burst500.txt).
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Keep the garbage collector from pausing the event loop under a burst.

    Everything alive now (modules, kopf, the runtime) lives as long as the process:
    ``gc.freeze`` moves it out of the collector's sight, so a full collection walks only
    what was allocated since; higher thresholds make young collections rarer (most of a
    task's objects die by reference counting anyway) and full ones rarer still.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


#: kopf's retries of a failed API call, watches included (seconds; 29.5 in all). A watch
#: whose retries end on a connection error reconnects; one whose last retry gets an HTTP
#: error escalates, and the whole process stops. A restarting kube-apiserver answers 503
#: "before all known HTTP paths have been installed" for a second or two: with the 11.5 s
#: these once summed to, a 10 s outage put the last retry right there (it happened in CI:
#: the operator exited in the middle of a batch). 29.5 s puts it past any restart an
#: outage of up to ~25 s ends in. Not unbounded: a peered replica cut off from the API
#: server still gives up its place within half a minute (docs/reliability.md).
API_ERROR_BACKOFFS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 5, 5, 8)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Build the Runtime from the config the CLI put in ``memo`` and start its loop."""
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    install_log_filter()
    settings.posting.enabled = False  # our Events are posted by Runtime.event
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    if not config.cluster_scan:
        settings.scanning.disabled = True
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        settings.peering.lifetime = config.peering_lifetime
    metrics = Metrics()
    if config.metrics_port is not None:
        metrics.serve(config.metrics_port, address=config.metrics_address)
    kube = KubeClient(load_api_client())
    clients = ProviderClients(transport=config.transport)
    runtime = Runtime(config=config, kube=kube, clients=clients, metrics=metrics)
    runtime.leadership.export_metrics(metrics.registry)
    memo["runtime"] = runtime
    memo["tasks"] = TaskRunner(runtime)
    memo["drills"] = DrillRunner(runtime, memo["tasks"].budgets)
    runtime.spawn(runtime.run(), name="health-loop")
    runtime.spawn(memo["tasks"].budgets.run(), name="budget-loop")
    if config.gc_thresholds is not None:
        tune_gc(config.gc_thresholds)
    log.info(
        "chainop started: namespaces=%s metrics=%s transport=%s",
        ",".join(config.namespaces) or "*",
        config.metrics_port,
        config.transport,
    )


@kopf.on.probe(id="leadership")
async def leadership_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any] | None:
    """``/healthz`` shows whether this replica acts and what keeps it from it (a 403...).

    Informational only: /healthz stays 200, because restarting the pod (liveness) cannot
    grant a missing RBAC verb, and an unready pod would drop out of the metrics Service.
    """
    runtime: Runtime | None = memo.get("runtime")
    return runtime.leadership.report() if runtime is not None else None


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop background work and close the shared HTTP client — tasks first: a provider
    call cut by closing the client must never be written as the provider's failure."""
    runner: TaskRunner | None = memo.get("tasks")
    if runner is not None:
        await runner.close()
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()
        await runtime.clients.aclose()
        await runtime.kube.aclose()


@kopf.on.event(GROUP, VERSION, CHAINS)
async def chain_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a ProviderChain."""
    runtime: Runtime = memo["runtime"]
    body: dict[str, Any] = dict(event["object"])
    memo["tasks"].budgets.observe_chain(body, deleted=event.get("type") == "DELETED")
    await runtime.chain_event(body, deleted=event.get("type") == "DELETED")


@kopf.on.event(GROUP, VERSION, TASKS)
async def task_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a DelegatedTask (execution runs in the background)."""
    tasks: TaskRunner = memo["tasks"]
    body: dict[str, Any] = dict(event["object"])
    tasks.on_event(body, deleted=event.get("type") == "DELETED")
