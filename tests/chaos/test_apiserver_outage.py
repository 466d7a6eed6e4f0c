"""We test these aspects: kube-apiserver goes away for 15 s in the middle of a batch.

The apiserver of the local control plane is stopped (SIGKILL to the pid in
``.cluster/run/kube-apiserver.pid``, waited until gone), left down for 15 s, and brought back
by ``hack/cluster-up.sh`` (which restarts only dead components). A restarting apiserver
answers 503 for a moment; kopf's watch retries must not end there (the operator would
exit: it did once, with retries that summed to 11.5 s; see API_ERROR_BACKOFFS).

* the operator survives without a restart of its own: the same pid runs throughout;
* every task of the batch — in flight at the stop, waiting for their final status
  write during the outage — ends Succeeded;
* the watch recovered: tasks created after the outage are picked up and finished too.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from chainop.testing import cluster as cluster_helpers
from tests.chaos.conftest import ChaosOperator
from tests.e2e.kit import Kit

pytestmark = pytest.mark.cluster

BATCH = 60
OUTAGE_SECONDS = 15


def apiserver_pid() -> int:
    return int((cluster_helpers.cluster_dir() / "run" / "kube-apiserver.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(600)
def test_operator_rides_out_an_apiserver_outage(kit: Kit, chaos_operator, backends) -> None:
    cloud = backends("cloud")
    cloud.set_mode("slow", delay_ms=3000)  # tasks are mid-call when the apiserver stops
    kit.create_chain("default", [kit.provider("cloud", cloud.url, "Sovereign")])
    operator: ChaosOperator = chaos_operator()
    operator.start().wait_started()
    kit.chain_ready("default")
    names = [f"before-{i:02d}" for i in range(BATCH)]
    for name in names:
        kit.create_task(name, content=name, timeoutSeconds=300)
    kit.wait_until(lambda: cloud.stats()["requests"].get("openai", 0) >= 10, what="calls in flight")
    pid = operator.runner.pid  # type: ignore[union-attr]

    victim = apiserver_pid()
    os.kill(victim, signal.SIGKILL)  # SIGTERM starts a graceful drain that can outlast 10 s
    stopped = time.monotonic()
    while alive(victim) and time.monotonic() - stopped < 30:
        time.sleep(0.1)
    assert not alive(victim), "kube-apiserver did not stop"
    cloud.set_mode("healthy")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    assert operator.runner.running  # type: ignore[union-attr]
    cluster_helpers.ensure_cluster()  # hack/cluster-up.sh restarts the dead apiserver
    assert apiserver_pid() != victim
    outage = time.monotonic() - stopped

    after = [f"after-{i:02d}" for i in range(10)]
    for name in after:
        kit.create_task(name, content=name, timeoutSeconds=300)
    for name in names + after:
        status = kit.wait_task(name, timeout=180)
        assert status["phase"] == "Succeeded", (name, status)
        assert status["result"]["text"].endswith(name)
    assert operator.runner.running  # type: ignore[union-attr]
    assert operator.runner.pid == pid
    assert operator.starts == 1
    print(
        f"\nchaos/apiserver: outage={outage:.1f}s tasks={len(names) + len(after)} "
        f"all Succeeded, operator pid {pid} unchanged"
    )
