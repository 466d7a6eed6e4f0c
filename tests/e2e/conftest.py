"""Fixtures for end-to-end tests: the real control plane, the CRDs, the operator process.

The control-plane fixtures (``cluster``, ``namespace``, ``supervisor``, ``run_process``…)
come from tests/integration/conftest.py; this file adds chainop on top of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from chainop.testing import cluster as cluster_helpers
from chainop.testing.cluster import KubeApi, ProcessRunner
from chainop.testing.fake_backend import FakeBackendThread
from tests.e2e.kit import Kit
from tests.integration.conftest import *  # noqa: F403  (control-plane fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> None:
    """The CRDs of crds/ applied (server-side, so re-applying is idempotent) and Established."""
    cluster_helpers.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds"),
        kubeconfig=kubeconfig,
    )
    cluster_helpers.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/providerchains.chainop.dev",
        "crd/delegatedtasks.chainop.dev",
        kubeconfig=kubeconfig,
    )


@pytest.fixture
def kit(kube_api: KubeApi, namespace: str, crds: None) -> Kit:
    """Helpers bound to this test's namespace."""
    return Kit(kube_api, namespace)


def operator_command(namespace: str, metrics_port: int, liveness_port: int) -> list[str]:
    """``chainop run`` watching one namespace, with short loops for tests."""
    return [
        *(sys.executable, "-m", "chainop", "run", "--namespace", namespace),
        *("--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"),
        *("--liveness", f"http://127.0.0.1:{liveness_port}/healthz"),
        *("--tick", "0.1", "--log-format", "full"),
    ]


class Operator:
    """The operator subprocess of one test."""

    def __init__(
        self, start: Callable[..., ProcessRunner], namespace: str, *, extra: Sequence[str] = ()
    ) -> None:
        self._start = start
        self.namespace = namespace
        self.extra = list(extra)
        self.metrics_port = cluster_helpers.free_port()
        self.liveness_port = cluster_helpers.free_port()
        self.runner: ProcessRunner | None = None

    def start(self) -> Operator:
        self.runner = self._start(
            [*operator_command(self.namespace, self.metrics_port, self.liveness_port), *self.extra],
            name="operator",
        )
        self.runner.wait_for_log(r"chainop started", timeout=60)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (what an OOM kill or node loss looks like)."""
        import os
        import signal

        assert self.runner is not None
        assert self.runner.pid is not None
        os.killpg(self.runner.pid, signal.SIGKILL)
        self.runner.stop(timeout=5)

    def log(self) -> str:
        return self.runner.read_log() if self.runner else ""


@pytest.fixture
def operator(run_process: Callable[..., ProcessRunner], namespace: str, crds: None) -> Operator:
    """chainop running as a subprocess, watching this test's namespace."""
    return Operator(run_process, namespace).start()


@pytest.fixture
def start_operator(
    run_process: Callable[..., ProcessRunner], namespace: str, crds: None
) -> Callable[..., Operator]:
    """Start chainop with extra command-line arguments: ``start_operator("--flag", ...)``."""

    def start(*extra: str) -> Operator:
        return Operator(run_process, namespace, extra=extra).start()

    return start


@pytest.fixture
def backends() -> Iterator[Callable[[str], FakeBackendThread]]:
    """Start fake backends (real HTTP servers on 127.0.0.1) by name; stopped after the test."""
    started: list[FakeBackendThread] = []

    def start(name: str) -> FakeBackendThread:
        backend = FakeBackendThread(name)
        backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()
