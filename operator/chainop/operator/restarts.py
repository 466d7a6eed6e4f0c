"""Restarting backend Deployments: once in flight, within the hourly budget, persisted.

Several chains may name the same Deployment, and an operator may be restarted at any
moment, so the restart ledger (``chainop.core.healing.RestartLedger``) lives on the
Deployment itself, in two annotations, and every restart is a *conditional* patch
(``metadata.resourceVersion``): if anything changed the Deployment since we read it,
the API server answers 409 and we decide again from the fresh copy. Within one process
a lock per Deployment serialises the chains that share it.

The patch is what ``kubectl rollout restart`` does, with our own annotation:
``spec.template.metadata.annotations["chainop.dev/restartedAt"]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chainop.core import healing
from chainop.core.healing import RestartLedger, RestartVerdict
from chainop.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)

RESTARTED_AT = "chainop.dev/restartedAt"
HISTORY = "chainop.dev/restart-history"
IN_FLIGHT = "chainop.dev/restart-in-flight-since"


def ledger_from(deployment: dict[str, Any]) -> RestartLedger:
    """Read the ledger from a Deployment's annotations (tolerating garbage)."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    history: list[float] = []
    for part in str(annotations.get(HISTORY, "")).split(","):
        try:
            history.append(float(part))
        except ValueError:
            continue
    in_flight: float | None
    try:
        in_flight = float(annotations[IN_FLIGHT]) if IN_FLIGHT in annotations else None
    except ValueError:
        in_flight = None
    return RestartLedger(history=tuple(history), in_flight_since=in_flight)


def _history_text(ledger: RestartLedger) -> str:
    return ",".join(f"{t:.3f}" for t in ledger.history)


@dataclass(frozen=True, slots=True)
class RestartOutcome:
    """What happened to a restart request."""

    verdict: RestartVerdict
    performed: bool


class RestartManager:
    """Orders Deployment restarts for every chain of this process."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        #: The restart ledger last read or written per (namespace, Deployment): what the
        #: restarts-remaining gauge is computed from without reading the API again.
        self.ledgers: dict[tuple[str, str], RestartLedger] = {}

    async def request(
        self,
        namespace: str,
        deployment: str,
        *,
        now: float,
        max_per_hour: int,
        grace_seconds: float,
        pods: Sequence[Mapping[str, Any]] = (),
    ) -> RestartOutcome:
        """Restart ``deployment`` unless one is in flight or the budget is spent.

        ``pods`` are the Deployment's pods as last read: with them, a restart whose rollout
        has not yet started the backend stays in flight past the grace
        (``healing.restart_underway``).
        """
        async with self._locks[(namespace, deployment)]:
            for _ in range(5):
                obj = await self.kube.read_deployment(namespace, deployment)
                if obj is None:
                    return RestartOutcome(RestartVerdict(False, "DeploymentNotFound"), False)
                ledger = ledger_from(obj)
                self.ledgers[(namespace, deployment)] = ledger
                underway = healing.restart_underway(
                    obj, pods, now=now, since=ledger.in_flight_since, grace_seconds=grace_seconds
                )
                verdict = healing.may_restart(
                    ledger,
                    now=now,
                    max_per_hour=max_per_hour,
                    grace_seconds=grace_seconds,
                    underway=underway,
                )
                if not verdict.allowed:
                    if underway:
                        log.debug("restart of %s/%s under way: %s", namespace, deployment, underway)
                    return RestartOutcome(verdict, False)
                updated = healing.record_restart(ledger, now=now)
                patch = {
                    "metadata": {
                        "resourceVersion": obj["metadata"]["resourceVersion"],
                        "annotations": {
                            HISTORY: _history_text(updated),
                            IN_FLIGHT: f"{now:.3f}",
                        },
                    },
                    "spec": {
                        "template": {
                            "metadata": {
                                "annotations": {
                                    RESTARTED_AT: datetime.fromtimestamp(now, tz=UTC).isoformat()
                                }
                            }
                        }
                    },
                }
                try:
                    await self.kube.patch_deployment(namespace, deployment, patch)
                except KubeError as error:
                    if error.conflict:
                        continue  # changed under us: read again, decide again
                    raise
                self.ledgers[(namespace, deployment)] = updated
                log.info("restarted Deployment %s/%s", namespace, deployment)
                return RestartOutcome(verdict, True)
            return RestartOutcome(RestartVerdict(False, "RestartConflict"), False)

    async def settle(self, namespace: str, deployment: str) -> None:
        """The backend answers again: clear the in-flight mark (no-op if already clear)."""
        async with self._locks[(namespace, deployment)]:
            obj = await self.kube.read_deployment(namespace, deployment)
            if obj is None or ledger_from(obj).in_flight_since is None:
                return
            try:
                await self.kube.patch_deployment(
                    namespace, deployment, {"metadata": {"annotations": {IN_FLIGHT: None}}}
                )
            except KubeError as error:
                log.warning(
                    "could not clear restart mark on %s/%s: %s", namespace, deployment, error
                )
