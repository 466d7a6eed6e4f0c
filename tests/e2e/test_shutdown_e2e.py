"""We test these aspects: a graceful stop (SIGTERM, as `helm upgrade` sends) loses no task.

Found on a real node: a task whose provider call was in flight when the old operator pod
got SIGTERM was written Failed ("no answer (ServerDisconnectedError)"), because closing
the shared HTTP client cut the call and the executor took that for the provider's fault.

* SIGTERM with calls in flight: the operator lets them finish for the drain period,
  then abandons the rest without writing anything — none is Failed;
* the next operator process resumes every abandoned task from its status, and all
  finish Succeeded;
* the provider was never benched for our own shutdown.
"""

from __future__ import annotations

import pytest

from tests.e2e.kit import TASKS, Kit

pytestmark = pytest.mark.cluster

COUNT = 6


def test_sigterm_with_calls_in_flight_fails_no_task(kit: Kit, start_operator, backends):
    cloud = backends("cloud")
    cloud.set_mode("slow", delay_ms=8000)  # longer than the 5 s drain: some are abandoned
    kit.create_chain("default", [kit.provider("cloud", cloud.url, "Sovereign")])
    first = start_operator()
    kit.chain_ready("default")
    names = [f"t{i}" for i in range(COUNT)]
    for name in names:
        kit.create_task(name, content=name, timeoutSeconds=120)
    kit.wait_until(
        lambda: cloud.stats()["requests"].get("openai", 0) >= COUNT, what="calls in flight"
    )
    assert first.runner is not None
    first.runner.stop(timeout=30)  # SIGTERM: a graceful stop
    log = first.log()
    assert "left for the next operator" in log
    for name in names:
        status = kit.get(TASKS, name).get("status") or {}
        assert status.get("phase") != "Failed", (name, status)
    cloud.set_mode("healthy")
    start_operator()
    for name in names:
        done = kit.wait_task(name, timeout=60)
        assert done["phase"] == "Succeeded", (name, done.get("conditions"))
        assert done["result"]["text"].endswith(name)
    assert kit.provider_status("default", "cloud").get("consecutiveFailures", 0) == 0
