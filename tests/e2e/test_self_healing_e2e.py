"""We test these aspects: self-healing of an in-cluster backend, end to end.

The backend is a fake-backend process bound by the supervisor to a real Deployment:
when chainop patches the Deployment's pod template, the supervisor (playing kubelet)
restarts the process, healthy.

* probes fail → Unhealthy → Excluded → Deployment patched exactly once → restarted →
  recovery probe → restored at its original position, Healthy; Events at each step;
* two chains naming one Deployment cause one restart;
* ``maxRestartsPerHour`` holds when restarts do not help.
"""

from __future__ import annotations

import pytest

from chainop.operator.restarts import RESTARTED_AT
from chainop.testing.cluster import free_port
from chainop.testing.fake_backend import FakeBackendControl
from tests.e2e.kit import CHAINS, PROBING, Kit, backend_command, vllm_provider

pytestmark = pytest.mark.cluster


def order_and_state(kit: Kit, chain: str) -> tuple[list[str], str]:
    status = kit.get(CHAINS, chain).get("status") or {}
    return status.get("activeOrder", []), kit.provider_status(chain, "vllm").get("state", "")


def test_unhealthy_backend_is_excluded_restarted_once_and_restored(
    kit: Kit, operator, backends, supervisor
):
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(kit.namespace, "vllm", backend_command(port), port)
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [vllm_provider(kit, port), kit.provider("cloud", cloud.url)],
        health=PROBING,
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 4}},
    )
    kit.chain_ready("default")
    kit.wait_until(
        lambda: order_and_state(kit, "default") == (["vllm", "cloud"], "Healthy"),
        what="vllm Healthy at the head",
    )

    FakeBackendControl(f"http://127.0.0.1:{port}").set(mode="error", status=503)
    restarts = supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=30)
    assert restarts == 1
    annotations = kit.deployment("vllm")["spec"]["template"]["metadata"]["annotations"]
    assert RESTARTED_AT in annotations

    # The restarted process is healthy: a recovery probe restores vllm at the head.
    kit.wait_until(
        lambda: order_and_state(kit, "default") == (["vllm", "cloud"], "Healthy"),
        timeout=30,
        what="vllm restored at its original position",
    )
    vllm = kit.provider_status("default", "vllm")
    assert vllm["restarts"] == 1
    assert vllm["lastRestartTime"]
    assert vllm.get("excludedSince") is None
    assert supervisor.restarts(kit.namespace, "vllm") == 1  # exactly once
    for reason in ("ProviderUnhealthy", "ProviderExcluded", "BackendRestarted", "ProviderRestored"):
        kit.wait_until(
            lambda reason=reason: reason in kit.event_reasons("default"), what=f"{reason} Event"
        )
    kit.wait_until(
        lambda: "RestartedByChainop" in kit.event_reasons("vllm"), what="Deployment Event"
    )


def test_excluded_provider_leaves_active_order_and_tasks_skip_it(
    kit: Kit, operator, backends, supervisor
):
    port = free_port()
    kit.create_deployment("vllm")
    # A backend that stays broken after restarts, with restarts disabled.
    supervisor.bind(kit.namespace, "vllm", backend_command(port, mode="error"), port)
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [vllm_provider(kit, port), kit.provider("cloud", cloud.url)],
        health=PROBING,
        selfHealing={"restartBackends": False, "recovery": {"initialSeconds": 1, "maxSeconds": 2}},
        taskDefaults={"allowDelegation": True},
    )
    kit.wait_until(
        lambda: order_and_state(kit, "default") == (["cloud"], "Excluded"),
        timeout=30,
        what="vllm Excluded",
    )
    kit.create_task("goes-to-cloud")
    status = kit.wait_task("goes-to-cloud")
    assert status["decision"]["providers"] == ["cloud"]
    assert status["result"]["provider"] == "cloud"
    assert supervisor.restarts(kit.namespace, "vllm") == 0


def test_two_chains_naming_one_deployment_cause_one_restart(
    kit: Kit, operator, backends, supervisor
):
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(kit.namespace, "vllm", backend_command(port), port)
    for chain in ("team-a", "team-b"):
        kit.create_chain(
            chain,
            [vllm_provider(kit, port)],
            health=PROBING,
            selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 4}},
        )
        kit.chain_ready(chain)
    FakeBackendControl(f"http://127.0.0.1:{port}").set(mode="error", status=500)
    supervisor.wait_for_restarts(kit.namespace, "vllm", 1, timeout=30)
    for chain in ("team-a", "team-b"):
        kit.wait_until(
            lambda chain=chain: order_and_state(kit, chain) == (["vllm"], "Healthy"),
            timeout=30,
            what=f"{chain} restored",
        )
    assert supervisor.restarts(kit.namespace, "vllm") == 1
    restarts = [kit.provider_status(c, "vllm")["restarts"] for c in ("team-a", "team-b")]
    assert sorted(restarts) == [0, 1]  # one chain ordered it; the other saw it in flight


def test_max_restarts_per_hour_holds(kit: Kit, operator, supervisor):
    port = free_port()
    kit.create_deployment("vllm")
    # Every restart comes back broken: chainop must stop at the budget.
    supervisor.bind(kit.namespace, "vllm", backend_command(port, mode="error"), port)
    kit.create_chain(
        "default",
        [vllm_provider(kit, port)],
        health=PROBING,
        selfHealing={
            "maxRestartsPerHour": 2,
            "restartGraceSeconds": 1,  # a restart that did not help may be retried after 1 s
            "recovery": {"initialSeconds": 1, "maxSeconds": 1},
        },
    )
    kit.wait_until(
        lambda: "RestartBudgetExhausted" in kit.event_reasons("default"),
        timeout=60,
        what="a RestartBudgetExhausted event",
    )
    assert supervisor.restarts(kit.namespace, "vllm") == 2
    history = kit.deployment("vllm")["metadata"]["annotations"]["chainop.dev/restart-history"]
    assert len(history.split(",")) == 2


def test_exclusion_resumes_from_status_after_an_operator_restart(
    kit: Kit, operator, backends, supervisor
):
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(kit.namespace, "vllm", backend_command(port), port)
    control = FakeBackendControl(f"http://127.0.0.1:{port}")
    control.set(mode="error", status=503)
    kit.create_chain(
        "default",
        [vllm_provider(kit, port), kit.provider("cloud", backends("cloud").url)],
        health=PROBING,
        selfHealing={"restartBackends": False, "recovery": {"initialSeconds": 1, "maxSeconds": 2}},
    )
    kit.wait_until(
        lambda: order_and_state(kit, "default") == (["cloud"], "Excluded"),
        what="vllm Excluded",
    )
    before = kit.provider_status("default", "vllm")
    operator.kill()
    operator.start()
    # Resumed, not forgotten: the new process keeps making recovery probes for the same
    # exclusion (it would have re-excluded it at a new time had it forgotten).
    kit.wait_until(
        lambda: (
            kit.provider_status("default", "vllm").get("recoveryAttempts", 0)
            > before.get("recoveryAttempts", 0)
        ),
        what="recovery probes by the restarted operator",
    )
    after = kit.provider_status("default", "vllm")
    assert after["state"] == "Excluded"
    assert after["excludedSince"] == before["excludedSince"]
    control.set(mode="healthy")
    kit.wait_until(
        lambda: order_and_state(kit, "default") == (["vllm", "cloud"], "Healthy"),
        timeout=30,
        what="vllm restored after the operator restart",
    )


def test_liveness_endpoint_answers(kit: Kit, operator):
    import urllib.error
    import urllib.request

    def healthy() -> bool:
        url = f"http://127.0.0.1:{operator.liveness_port}/healthz"
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except (urllib.error.URLError, ConnectionError):
            return False  # kopf opens the endpoint a moment after start-up

    kit.wait_until(healthy, what="/healthz 200")
