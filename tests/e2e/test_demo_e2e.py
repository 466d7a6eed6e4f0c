"""We test these aspects: the demo (``make demo``) runs its whole story on the real cluster.

The demo runs as a subprocess, as ``make demo`` runs it, against the already-running
control plane, with ``--keep-cluster`` (so it never stops the shared control plane) and a
namespace of its own. Its output must show every step: the chains Ready, the tasks routed
by their rules, a failover to the cloud, vllm Excluded, the Deployment restarted, vllm
restored, and the Events of each. Afterwards nothing of it is left: the namespace is
gone (or going) and its operator and backends are stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from chainop.testing.cluster import KubeApi

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_namespace(kube_api: KubeApi) -> str:
    return f"demo-e2e-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(400)
def test_demo_shows_every_step_and_leaves_nothing_behind(
    kube_api: KubeApi, kubeconfig: Path, demo_namespace: str, tmp_path: Path
) -> None:
    # NODE=0: this test is the pod-less demo's, even where a node is up (make test);
    # tests/node/test_demo_node.py runs the demo on the node.
    env = dict(os.environ, PYTHONUNBUFFERED="1", NODE="0")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chainop.demo",
            "--keep-cluster",
            "--namespace",
            demo_namespace,
            "--log-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-6000:] + result.stderr[-3000:]

    # Set-up, against the running control plane, which it leaves running.
    assert "already running" in out
    assert "the control plane was already running: left running" in out
    assert f"namespace/{demo_namespace} created" in out
    assert "providerchain.chainop.dev/default created" in out
    # Ready, with real kubectl output.
    assert "chains Ready" in out
    assert "3/3" in out
    # Routing: every example task by its rule.
    tasks = len(list((ROOT / "examples" / "tasks").glob("*.yaml")))
    assert f"all {tasks} tasks routed as the comments in examples/tasks/ say" in out
    for reason in (
        "requiresLocal=true",
        "preferredProvider=local",
        "allowDelegation=false (default)",
        "preferredProvider=anthropic",
        "preferredProvider=auto: active order",
        "unknown preferredProvider=open-ai → fail-safe",
    ):
        assert reason in out, reason
    # Failover to the cloud provider, with the attempts.
    assert "✓ failover: vllm failed, openai answered" in out
    assert "attempt: vllm\tTransientError\tHTTP 503" in out
    assert "attempt: openai\tSucceeded" in out
    # Unhealthy -> Excluded, shown in kubectl get pchain.
    assert "vllm\tExcluded" in out or "vllm Excluded" in out
    assert "2/3" in out
    # The Deployment restart.
    assert "chainop.dev/restartedAt" in out
    assert "vllm backend restarted" in out
    # Restored at its original position, Healthy, and used again.
    assert "✓ restored at its original position, Healthy" in out
    assert 'activeOrder=["vllm","openai","anthropic"]' in out
    # Events tell the same story.
    for reason in (
        "ProviderUnhealthy",
        "ProviderExcluded",
        "BackendRestarted",
        "ProviderRestored",
        "ProviderBenched",
        "Failover",
        "Spillover",
        "RestartedByChainop",
    ):
        assert reason in out, reason
    assert "demo complete" in out

    # Nothing left behind: the namespace is gone (or on its way), the processes stopped.
    phases = [
        ns.status.phase
        for ns in kube_api.core.list_namespace().items
        if ns.metadata.name == demo_namespace
    ]
    assert phases in ([], ["Terminating"])
    operator_log = (tmp_path / "operator.log").read_text()
    assert "chainop started" in operator_log
    assert "Operator is stopping" in operator_log or "SIGTERM" in operator_log
    leftovers = subprocess.run(
        ["pgrep", "-f", f"chainop run -n {demo_namespace}"], capture_output=True, check=False
    )
    assert leftovers.returncode == 1, leftovers.stdout


def test_demo_refuses_a_namespace_it_did_not_create(
    kube_api: KubeApi, kubeconfig: Path, demo_namespace: str, tmp_path: Path
) -> None:
    kube_api.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=demo_namespace))
    )
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "chainop.demo",
                "--keep-cluster",
                "--namespace",
                demo_namespace,
                "--log-dir",
                str(tmp_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1
        assert "was not made by the demo" in result.stdout
        # Still there, untouched.
        assert kube_api.core.read_namespace(demo_namespace).status.phase == "Active"
    finally:
        kube_api.core.delete_namespace(demo_namespace)
