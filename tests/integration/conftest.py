"""Fixtures for tests against the real local control plane (``hack/cluster-up.sh``).

The cluster is started once per session (or a running one is reused) *before* the first
test runs, so that a first-time build of the binaries does not count against a test's
timeout. It is left running: ``make cluster-down`` stops it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from kubernetes import client

from chainop.testing import cluster as cluster_helpers
from chainop.testing.cluster import KubeApi, ProcessRunner
from chainop.testing.supervisor import BackendSupervisor


def pytest_collection_finish(session: pytest.Session) -> None:
    """Bring the cluster up once, outside any test's timeout, if cluster tests will run."""
    if session.config.option.collectonly:
        return
    wanted = any(item.get_closest_marker("cluster") for item in session.items)
    if wanted and not cluster_helpers.cluster_running():
        cluster_helpers.ensure_cluster()


@pytest.fixture(scope="session")
def cluster() -> Path:
    """Ensure the local cluster runs (reusing a running one); return its kubeconfig path.

    The cluster is left running after the session: ``make cluster-down`` stops it.
    """
    path = cluster_helpers.kubeconfig_path()
    if not cluster_helpers.cluster_running(path):  # normally done by pytest_collection_finish
        path = cluster_helpers.ensure_cluster()
    return path


@pytest.fixture(scope="session")
def kubeconfig(cluster: Path) -> Path:
    """The admin kubeconfig of the running local cluster (``system:masters``)."""
    return cluster


@pytest.fixture(scope="session")
def kube_api(kubeconfig: Path) -> Iterator[KubeApi]:
    """Kubernetes python client APIs authenticated as the cluster admin."""
    api = cluster_helpers.connect(kubeconfig)
    yield api
    api.close()


@pytest.fixture
def namespace(kube_api: KubeApi) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (deletion finishes in background)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube_api.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"chainop.dev/test": "true"})
        )
    )
    yield name
    try:
        kube_api.core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def supervisor(kubeconfig: Path, tmp_path: Path) -> Iterator[BackendSupervisor]:
    """A BackendSupervisor (stand-in kubelet for fake backends), closed after the test."""
    sup = BackendSupervisor(kubeconfig, log_dir=tmp_path / "backends")
    yield sup
    sup.close()


@pytest.fixture
def run_process(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., ProcessRunner]]:
    """Start a subprocess against the cluster; every one is stopped after the test.

    ``run_process(args, name="operator", env={...})`` returns a started ProcessRunner whose
    output goes to ``tmp_path/<name>.log``.
    """
    runners: list[ProcessRunner] = []

    def start(
        args: Sequence[str], *, name: str = "process", env: dict[str, str] | None = None
    ) -> ProcessRunner:
        runner = ProcessRunner(
            args, log_path=tmp_path / f"{name}.log", kubeconfig=kubeconfig, env=env
        )
        runners.append(runner)
        return runner.start()

    yield start
    for runner in reversed(runners):
        runner.stop()


@pytest.fixture
def http_server_command() -> Callable[[int], list[str]]:
    """A stand-in backend: ``python -m http.server`` on 127.0.0.1:PORT."""

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]

    return command
