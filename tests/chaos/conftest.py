"""Fixtures for the chaos suite (``make chaos``): everything from tests/e2e, plus a few.

The suite breaks things on purpose — SIGKILLs the operator, stops kube-apiserver,
flaps backends, runs two peered replicas — so it runs against the control plane that
``chainop.testing.cluster`` points at (``CHAINOP_CLUSTER_DIR``, default ``.cluster``).
To keep colleagues' runs undisturbed, point it at a private one::

    CHAINOP_CLUSTER_DIR=/tmp/chainop-chaos make chaos
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import pytest

from chainop.testing.cluster import ProcessRunner
from tests.e2e.conftest import *  # noqa: F403  (cluster, operator, backends, supervisor…)
from tests.e2e.conftest import Operator


class ChaosOperator(Operator):
    """An operator that may be started many times: each start logs to a file of its own,
    so waiting for "chainop started" sees this start, not an earlier one."""

    def __init__(self, start: Callable[..., ProcessRunner], namespace: str, *extra: str) -> None:
        super().__init__(start, namespace, extra=extra)
        self.starts = 0
        self.pids: list[int] = []
        self.logs: list[ProcessRunner] = []

    def start(self) -> ChaosOperator:
        self.starts += 1
        name = f"operator-{id(self) % 10000}-{self.starts}"
        from tests.e2e.conftest import operator_command

        self.runner = self._start(
            [*operator_command(self.namespace, self.metrics_port, self.liveness_port), *self.extra],
            name=name,
        )
        self.logs.append(self.runner)
        assert self.runner.pid is not None
        self.pids.append(self.runner.pid)
        return self

    def wait_started(self, timeout: float = 60) -> None:
        assert self.runner is not None
        self.runner.wait_for_log(r"chainop started", timeout=timeout)

    def all_logs(self) -> str:
        return "\n".join(runner.read_log() for runner in self.logs)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    def metric_sum(self, name: str) -> float:
        """Sum of every sample of one metric family (0 if none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
            if match:
                total += float(match.group(2))
        return total


@pytest.fixture
def chaos_operator(
    run_process: Callable[..., ProcessRunner], namespace: str, crds: None
) -> Callable[..., ChaosOperator]:
    """Build (not start) an operator watching this test's namespace: ``chaos_operator(*extra)``."""

    def build(*extra: str) -> ChaosOperator:
        return ChaosOperator(run_process, namespace, *extra)

    return build
