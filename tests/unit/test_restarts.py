"""We test these aspects: ``RestartManager.request`` decides from the Deployment it reads
and the pods it is given.

* past the grace, a restart whose rollout has not started the backend (a new pod in
  ContainerCreating) stays in flight: no patch;
* once the new container has run for the grace, a restart that did not help is ordered
  again (the patch carries the ledger and the template annotation);
* without pods (their read failed), the Deployment-level signs still hold it back.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from chainop.operator.restarts import HISTORY, IN_FLIGHT, RESTARTED_AT, RestartManager
from tests.unit.support import T0, node_pod, rolled_deployment, stamp


class Deployments:
    """The two calls ``RestartManager.request`` makes, on one Deployment in memory."""

    def __init__(self, deployment: dict[str, Any]) -> None:
        self.deployment = deployment
        self.patches: list[dict[str, Any]] = []

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.deployment)

    async def patch_deployment(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        self.patches.append(patch)
        return self.deployment


def _restarted_at_t0(**status: object) -> dict[str, Any]:
    deployment = rolled_deployment(**status)
    metadata = deployment["metadata"]
    metadata["resourceVersion"] = "7"  # type: ignore[index]
    metadata["annotations"] = {HISTORY: f"{T0:.3f}", IN_FLIGHT: f"{T0:.3f}"}  # type: ignore[index]
    return deployment


def _request(kube: Deployments, pods: list[dict[str, Any]], *, now: float) -> Any:
    manager = RestartManager(kube)  # type: ignore[arg-type]
    return asyncio.run(
        manager.request("ns", "flaky", now=now, max_per_hour=3, grace_seconds=5, pods=pods)
    )


def test_a_restart_whose_new_pod_is_still_being_created_stays_in_flight():
    kube = Deployments(_restarted_at_t0())
    creating = node_pod("flaky-new", {"waiting": {"reason": "ContainerCreating"}})
    outcome = _request(kube, [creating], now=T0 + 15)
    assert not outcome.performed
    assert outcome.verdict.reason == "RestartInFlight"
    assert kube.patches == []


def test_a_restart_that_did_not_help_is_ordered_again_once_the_backend_ran_its_grace():
    kube = Deployments(_restarted_at_t0())
    ran = node_pod("flaky-new", {"running": {"startedAt": stamp(T0 + 4)}})
    outcome = _request(kube, [ran], now=T0 + 15)
    assert outcome.performed
    (patch,) = kube.patches
    assert patch["metadata"]["annotations"][HISTORY] == f"{T0:.3f},{T0 + 15:.3f}"
    assert RESTARTED_AT in patch["spec"]["template"]["metadata"]["annotations"]


def test_without_pods_the_deployment_still_says_a_rollout_is_under_way():
    kube = Deployments(_restarted_at_t0(updatedReplicas=0))
    outcome = _request(kube, [], now=T0 + 15)
    assert outcome.verdict.reason == "RestartInFlight"
    assert kube.patches == []
