"""We test these aspects: jobs providers across an operator crash.

* the job id is in the task's status before chainop waits on it;
* the operator killed with SIGKILL while jobs are in flight and started again: every task
  finishes, and the jobs backend saw exactly one submission per task (resumed polling,
  never a second POST).
"""

from __future__ import annotations

import pytest

from tests.e2e.kit import TASKS, Kit

pytestmark = pytest.mark.cluster

TASK_COUNT = 8


def test_sigkill_while_jobs_in_flight_resumes_without_resubmitting(kit: Kit, operator, backends):
    jobs = backends("jobs")
    jobs.configure(job_delay_ms=4000)
    kit.create_chain(
        "default",
        [
            {
                "name": "batch",
                "type": "jobs",
                "endpoint": jobs.url,
                "model": "jobs-model",
                "privacyTier": "Sovereign",
                "timeoutSeconds": 30,
            }
        ],
    )
    kit.chain_ready("default")
    names = [f"job-{i}" for i in range(TASK_COUNT)]
    for name in names:
        kit.create_task(name, content=name, timeoutSeconds=120)
    # Every task has its job id persisted before the operator waits on it.
    for name in names:
        kit.wait(
            TASKS,
            name,
            lambda o: bool(((o.get("status") or {}).get("pendingJob") or {}).get("jobId")),
            what="pendingJob.jobId in status",
        )
    assert jobs.stats()["jobs_created"] == TASK_COUNT

    operator.kill()
    operator.start()

    for name in names:
        status = kit.wait_task(name, timeout=60)
        assert status["phase"] == "Succeeded", (name, status)
        assert status["result"]["text"].endswith(name)
        assert status.get("pendingJob") is None
        assert status["attempts"][-1]["jobId"]
    stats = jobs.stats()
    assert stats["jobs_created"] == TASK_COUNT
    assert stats["requests"]["jobs"] == TASK_COUNT  # POST /jobs: one per task, no retries
    assert all(count == 1 for count in stats["job_submissions"].values())
