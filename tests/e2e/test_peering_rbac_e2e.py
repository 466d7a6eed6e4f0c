"""We test these aspects: with ``replicaCount > 1`` chainop works under exactly the rights
the chart grants — the bug of issue 13, where the ClusterRole lacked ``get`` on the
peering object and no replica ever ran the health loop.

* the chart is ``helm install``ed with two replicas, cluster-wide RBAC (a
  ClusterKopfPeering) and namespaced RBAC (a Role and a KopfPeering in the watched
  namespace); the operator runs locally with a token minted for the chart's
  ServiceAccount, as the chart runs it (``--peering``, ``--peering-lifetime``, and
  ``--no-cluster-scan`` when namespaced);
* it becomes active (``chainop_leader`` 1, ``/healthz`` says so with no problem), its
  health loop runs (a probe is sent, the chain is Ready) and nothing in its log was
  refused;
* negative control: the same Role without ``get`` (the bug) — kopf resumes, but chainop
  stays inactive and says why, loudly: an ERROR naming the verb and resource, the
  ``Forbidden`` count in ``chainop_leadership_check_errors_total``, the problem in
  ``/healthz``.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chainop.testing import cluster as cluster_helpers
from chainop.testing.cluster import KubeApi, ProcessRunner, free_port
from chainop.testing.fake_backend import FakeBackendThread
from tests.e2e.kit import Kit
from tests.e2e.test_helm_e2e import (  # noqa: F401  (fixtures used by name)
    Release,
    install,
    refusals,
    release_namespace,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.cluster


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


class AsServiceAccount:
    """``chainop run`` as the chart's ServiceAccount, with the chart's peering flags."""

    def __init__(
        self,
        run_process: Callable[..., ProcessRunner],
        kubeconfig: Path,
        release: Release,
        tmp_path: Path,
    ) -> None:
        token = cluster_helpers.kubectl(
            "create", "token", release.service_account, "-n", release.namespace,
            "--duration=1h", kubeconfig=kubeconfig,
        ).stdout.strip()  # fmt: skip
        self.kubeconfig = service_account_kubeconfig(
            kubeconfig, token, tmp_path / f"sa-{release.name}"
        )
        self.run_process = run_process
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.runner: ProcessRunner | None = None

    def start(self, *args: str) -> ProcessRunner:
        self.runner = self.run_process(
            [
                sys.executable, "-m", "chainop", "run", *args,
                "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
                "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1",
                "--tick", "0.1", "--log-format", "full",
            ],
            name=f"operator-{uuid.uuid4().hex[:6]}",
            env={"KUBECONFIG": str(self.kubeconfig)},
        )  # fmt: skip
        self.runner.wait_for_log(r"chainop started", timeout=60)
        return self.runner

    def metrics(self) -> str:
        return fetch(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def leadership(self) -> dict[str, Any]:
        health: dict[str, Any] = json.loads(fetch(f"http://127.0.0.1:{self.health_port}/healthz"))
        leadership: dict[str, Any] = health.get("leadership") or {}
        return leadership


def chart_args(release: Release, kube_api: KubeApi) -> list[str]:
    """The ``chainop run`` arguments of the release's Deployment, as the chart renders them."""
    deployment = kube_api.apps.read_namespaced_deployment(release.name, release.namespace)
    args = list(deployment.spec.template.spec.containers[0].args)
    assert args[0] == "run"
    keep = ("--namespace=", "--all-namespaces", "--peering", "--no-cluster-scan")
    return [a for a in args[1:] if a.startswith(keep)]


def probed_chain(kit: Kit, backends: Callable[[str], FakeBackendThread]) -> None:
    backend = backends("vllm")
    kit.create_chain(
        "default",
        [kit.provider("vllm", backend.url, "Sovereign")],
        health={"probe": {"intervalSeconds": 1, "timeoutSeconds": 1}},
    )


@pytest.mark.parametrize("shape", ["cluster", "namespaced"])
def test_two_replica_install_lets_chainop_become_active_under_the_charts_rights(
    shape: str,
    kube_api: KubeApi,
    kubeconfig: Path,
    kit: Kit,
    install: Callable[..., Release],  # noqa: F811
    run_process: Callable[..., ProcessRunner],
    backends: Callable[[str], FakeBackendThread],
    tmp_path: Path,
):
    peering = f"chainop-{uuid.uuid4().hex[:6]}"  # ClusterKopfPeering names are cluster-wide
    values = ["replicaCount=2", f"peering.name={peering}"]
    if shape == "namespaced":
        values += ["rbac.namespaced=true", f"watchNamespaces={{{kit.namespace}}}"]
    release = install(*values)
    args = chart_args(release, kube_api)
    assert f"--peering={peering}" in args
    assert any(a.startswith("--peering-lifetime=") for a in args)
    if shape == "cluster":
        kube_api.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
    else:
        kube_api.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", kit.namespace, "kopfpeerings", peering
        )
        assert "--no-cluster-scan" in args

    probed_chain(kit, backends)
    operator = AsServiceAccount(run_process, kubeconfig, release, tmp_path)
    runner = operator.start(*args)
    kit.wait_until(
        lambda: metric(operator.metrics(), "chainop_leader") == 1,
        timeout=30,
        what="chainop active under the chart's RBAC",
    )
    kit.chain_ready("default", timeout=60)
    kit.wait_until(
        lambda: metric(operator.metrics(), "chainop_probes_total") > 0,
        timeout=30,
        what="the health loop probing",
    )
    assert operator.leadership() == {
        "peering": peering,
        "identity": operator.leadership()["identity"],
        "active": True,
        "problem": None,
    }
    assert metric(operator.metrics(), "chainop_leadership_check_errors_total") == 0
    log = runner.read_log()
    assert refusals(log) == [], refusals(log)
    assert "is now active" in log
    print(f"\npeering-rbac/{shape}: active under the chart's rights; args {' '.join(args)}")


def test_without_get_on_the_peering_chainop_says_so_loudly(
    kube_api: KubeApi,
    kubeconfig: Path,
    kit: Kit,
    install: Callable[..., Release],  # noqa: F811
    run_process: Callable[..., ProcessRunner],
    tmp_path: Path,
):
    peering = f"chainop-{uuid.uuid4().hex[:6]}"
    release = install(
        "replicaCount=2",
        f"peering.name={peering}",
        "rbac.namespaced=true",
        f"watchNamespaces={{{kit.namespace}}}",
    )
    role = kube_api.rbac.read_namespaced_role(release.name, kit.namespace)
    for rule in role.rules:
        if "kopfpeerings" in rule.resources:
            rule.verbs = [v for v in rule.verbs if v != "get"]  # the chart as it was
    kube_api.rbac.replace_namespaced_role(release.name, kit.namespace, role)

    operator = AsServiceAccount(run_process, kubeconfig, release, tmp_path)
    runner = operator.start(*chart_args(release, kube_api))
    kit.wait_until(
        lambda: (
            metric(operator.metrics(), "chainop_leadership_check_errors_total", reason="Forbidden")
            > 0
        ),
        timeout=30,
        what="the 403 counted",
    )
    runner.wait_for_log(r"Resuming operations", timeout=30)  # kopf itself acts (tasks run)
    match = runner.wait_for_log(r"\[ERROR +\] (peering .*HTTP 403.*)", timeout=10)
    message = match.group(1)
    assert f"'get' on kopfpeerings.kopf.dev in namespace {kit.namespace}" in message
    assert "never become active" in message
    assert 'cannot get resource "kopfpeerings"' in message  # the API server's own words
    assert metric(operator.metrics(), "chainop_leader") == 0
    leadership = operator.leadership()
    assert leadership["active"] is False
    assert "kopfpeerings" in leadership["problem"]
    # Loud, not a flood: one ERROR line however many checks failed (repeats every 60 s).
    assert len(re.findall(r"HTTP 403", runner.read_log())) == 1
