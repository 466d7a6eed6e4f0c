"""We test these aspects: two operator replicas with kopf peering.

Both run ``chainop run --peering NAME`` against the same namespace, with kopf's peering
CRDs installed (the chart's ``crds/kopf-peerings.kopf.dev.yaml``) and the namespaced
``KopfPeering`` object created (kopf only patches it, it never creates it).

* only one acts (kopf's log: the active one last said "Resuming operations"), and the
  other's
  ``/metrics`` show no task finished and no probe sent while paused;
* kill the active one (SIGKILL): once its keep-alive expires (``--peering-lifetime``,
  10 s by default; kopf's own default was 60 s), the other resumes and finishes tasks
  created after the kill. How fast, at the worst moment: tests/chaos/test_takeover.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chainop.testing.cluster import kubectl
from tests.chaos.conftest import ChaosOperator
from tests.e2e.kit import Kit

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PEERING_CRDS = ROOT / "charts" / "chainop" / "crds" / "kopf-peerings.kopf.dev.yaml"
PEERING = "chainop-chaos"
PAUSED = "Pausing operations"
RESUMED = "Resuming operations"


def acting(replica: ChaosOperator) -> bool:
    """kopf's own word: a replica acts when it last logged "Resuming", not "Pausing".

    (A replica that starts while a higher-priority peer lives is paused from the start
    and logs nothing; one that a new higher-priority peer displaces logs "Pausing".)
    """
    log = replica.all_logs()
    return log.rfind(RESUMED) > log.rfind(PAUSED)


def install_peering(kubeconfig: Path, namespace: str, name: str = PEERING) -> None:
    if not PEERING_CRDS.is_file():
        pytest.skip(f"{PEERING_CRDS} missing (kopf's peering CRDs ship with the chart)")
    kubectl("apply", "--server-side", "-f", str(PEERING_CRDS), kubeconfig=kubeconfig)
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kopfpeerings.kopf.dev",
        kubeconfig=kubeconfig,
    )
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata:\n  name: {name}\n",
        kubeconfig=kubeconfig,
    )


def finish_all(kit: Kit, names: list[str], timeout: float) -> None:
    for name in names:
        status = kit.wait_task(name, timeout=timeout)
        assert status["phase"] == "Succeeded", (name, status)


@pytest.mark.timeout(400)
def test_only_one_replica_acts_and_the_other_takes_over(
    kit: Kit, chaos_operator, backends, kubeconfig
) -> None:
    install_peering(kubeconfig, kit.namespace)
    first: ChaosOperator = chaos_operator("--peering", PEERING)
    first.start().wait_started()
    second: ChaosOperator = chaos_operator("--peering", PEERING)
    second.start().wait_started()
    replicas = (first, second)
    kit.wait_until(
        lambda: sum(acting(r) for r in replicas) == 1, timeout=60, what="exactly one active"
    )
    time.sleep(3)  # and it stays so
    assert sum(acting(r) for r in replicas) == 1
    active = next(r for r in replicas if acting(r))
    paused = next(r for r in replicas if r is not active)

    backend = backends("vllm")
    kit.create_chain(
        "default",
        [kit.provider("vllm", backend.url, "Sovereign")],
        health={"probe": {"intervalSeconds": 1, "timeoutSeconds": 1}},
    )
    kit.chain_ready("default")
    names = [f"one-{i}" for i in range(10)]
    for name in names:
        kit.create_task(name, content=name)
    finish_all(kit, names, timeout=60)
    kit.wait_until(lambda: active.metric_sum("chainop_probes_total") >= 2, what="active probes")
    assert active.metric_sum("chainop_tasks_total") == len(names)
    assert paused.metric_sum("chainop_tasks_total") == 0
    assert paused.metric_sum("chainop_probes_total") == 0

    active.kill()
    after = [f"two-{i}" for i in range(10)]
    for name in after:
        kit.create_task(name, content=name, timeoutSeconds=300)
    finish_all(kit, after, timeout=180)  # the dead peer's lifetime must run out first
    assert paused.metric_sum("chainop_tasks_total") == len(after)
    assert acting(paused)
    assert paused.runner is not None
    assert paused.runner.running
    print(
        f"\nchaos/peering: 2 replicas, 1 paused; active killed; survivor finished "
        f"{len(after)} tasks after taking over"
    )
