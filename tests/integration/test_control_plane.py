"""We test these aspects: the local control plane is a real Kubernetes API.

- a CRD with a status subresource and printer columns can be applied and read back with
  kubectl; ``kubectl get`` shows the printer columns; status is written only through the
  ``status`` subresource (``kubectl patch --subresource=status``), and such a write does not
  bump ``metadata.generation``;
- the BackendSupervisor restarts a Deployment's bound backend when its pod template
  changes (``chainop.dev/restartedAt``, ``kubectl rollout restart``): the restart count
  goes 0 → 1, a new process serves the port again; a change outside the template (a
  label) restarts nothing; the Deployment appearing later is not a restart, and its
  deletion stops the backend;
- RBAC is enforced for ServiceAccount tokens: without rights, listing secrets is
  Forbidden; with a Role and RoleBinding it is allowed;
- the controller manager runs: owner-reference garbage collection deletes dependents;
- ProcessRunner runs a command against the cluster with KUBECONFIG set, logs to a file
  and stops it.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from chainop.testing.cluster import KubeApi, ProcessRunner, free_port, kubectl
from chainop.testing.supervisor import STAND_IN_NODE_SELECTOR, BackendSupervisor

pytestmark = pytest.mark.cluster

WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.test.chainop.dev
    spec:
      group: test.chainop.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
      versions:
        - name: v1
          served: true
          storage: true
          subresources: {status: {}}
          additionalPrinterColumns:
            - {name: Size, type: integer, jsonPath: .spec.size}
            - {name: Phase, type: string, jsonPath: .status.phase}
            - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  properties:
                    size: {type: integer, minimum: 1}
                status:
                  type: object
                  properties:
                    phase: {type: string}
    """
)


def eventually(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout}s: {what or check}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def widget_crd(kubeconfig: Path) -> Iterator[str]:
    """The throwaway CRD ``widgets.test.chainop.dev``, established; deleted afterwards."""
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.test.chainop.dev", "--timeout=60s")
    # Discovery may lag the Established condition by a moment.
    eventually(
        lambda: kubectl("get", "widgets", "-A", check=False).returncode == 0,
        what="widgets served",
    )
    yield "widgets.test.chainop.dev"
    kubectl("delete", "crd", "widgets.test.chainop.dev", "--wait=false", check=False)


# ---------------------------------------------------------------- (a) CRDs through kubectl
def test_crd_with_printer_columns_and_status_subresource(widget_crd: str, namespace: str) -> None:
    widget = {
        "apiVersion": "test.chainop.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    kubectl("apply", "-f", "-", input=json.dumps(widget))

    read_back = json.loads(kubectl("get", "widget", "w1", "-n", namespace, "-o", "json").stdout)
    assert read_back["spec"] == {"size": 3}
    generation = read_back["metadata"]["generation"]

    table = kubectl("get", "wdg", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE", "AGE"]
    assert table[1].split()[:2] == ["w1", "3"]

    # Status is ignored on the main resource...
    kubectl(
        "patch",
        "widget",
        "w1",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"status": {"phase": "Ignored"}}',
    )
    phase = kubectl("get", "widget", "w1", "-n", namespace, "-o", "jsonpath={.status.phase}")
    assert phase.stdout == ""

    # ...and written through the status subresource, without a new generation.
    kubectl(
        "patch",
        "widget",
        "w1",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Ready"}}',
    )
    after = json.loads(kubectl("get", "widget", "w1", "-n", namespace, "-o", "json").stdout)
    assert after["status"] == {"phase": "Ready"}
    assert after["metadata"]["generation"] == generation
    row = kubectl("get", "widget", "w1", "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == ["w1", "3", "Ready"]

    # The schema is enforced by the real API server.
    bad = dict(widget, metadata={"name": "w2", "namespace": namespace}, spec={"size": 0})
    rejected = kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr


# ---------------------------------------------------------------- (b) supervisor
def create_deployment(kube_api: KubeApi, namespace: str, name: str) -> None:
    labels = {"app": name}
    kube_api.apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(name="backend", image="example.invalid/b:1")
                        ],
                        node_selector=STAND_IN_NODE_SELECTOR,  # Pending even with a node up
                    ),
                ),
            ),
        ),
    )


def serves(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return bool(response.status == 200)


def test_supervisor_restarts_backend_when_template_changes(
    kube_api: KubeApi,
    namespace: str,
    supervisor: BackendSupervisor,
    http_server_command: Callable[[int], list[str]],
) -> None:
    create_deployment(kube_api, namespace, "vllm")
    port = free_port()
    supervisor.bind(namespace, "vllm", http_server_command(port), port)
    first_pid = supervisor.pid(namespace, "vllm")
    assert first_pid is not None
    assert supervisor.restarts(namespace, "vllm") == 0
    assert serves(port)

    patch = {
        "spec": {
            "template": {
                "metadata": {"annotations": {"chainop.dev/restartedAt": "2026-01-01T00:00:00Z"}}
            }
        }
    }
    kubectl("patch", "deployment", "vllm", "-n", namespace, "-p", json.dumps(patch))

    assert supervisor.wait_for_restarts(namespace, "vllm", 1, timeout=30) == 1
    second_pid = supervisor.pid(namespace, "vllm")
    assert second_pid is not None
    assert second_pid != first_pid
    assert serves(port)


def test_supervisor_ignores_changes_outside_the_template(
    kube_api: KubeApi,
    namespace: str,
    supervisor: BackendSupervisor,
    http_server_command: Callable[[int], list[str]],
) -> None:
    create_deployment(kube_api, namespace, "vllm")
    port = free_port()
    supervisor.bind(namespace, "vllm", http_server_command(port), port)
    pid = supervisor.pid(namespace, "vllm")

    labelled = kubectl("label", "deployment", "vllm", "-n", namespace, "tier=gold", "-o", "json")
    resource_version = json.loads(labelled.stdout)["metadata"]["resourceVersion"]
    supervisor.wait_for_observed(namespace, "vllm", resource_version, timeout=30)

    assert supervisor.restarts(namespace, "vllm") == 0
    assert supervisor.pid(namespace, "vllm") == pid
    assert serves(port)


def test_supervisor_follows_the_deployment_lifecycle(
    kube_api: KubeApi,
    namespace: str,
    supervisor: BackendSupervisor,
    http_server_command: Callable[[int], list[str]],
) -> None:
    port = free_port()
    supervisor.bind(namespace, "late", http_server_command(port), port)  # no Deployment yet
    assert serves(port)

    create_deployment(kube_api, namespace, "late")
    created = kube_api.apps.read_namespaced_deployment("late", namespace)
    supervisor.wait_for_observed(namespace, "late", created.metadata.resource_version)
    assert supervisor.restarts(namespace, "late") == 0  # appearing is not a restart

    kubectl("rollout", "restart", "deployment/late", "-n", namespace)
    assert supervisor.wait_for_restarts(namespace, "late", 1, timeout=30) == 1
    assert serves(port)

    kube_api.apps.delete_namespaced_deployment("late", namespace)
    eventually(lambda: supervisor.pid(namespace, "late") is None, what="backend stopped")


# ---------------------------------------------------------------- (c) RBAC
def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same server that authenticates with ``token`` only."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_serviceaccount_token_is_subject_to_rbac(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    as_reader = token_kubeconfig(kubeconfig, token, tmp_path / "reader.kubeconfig")
    user = f"system:serviceaccount:{namespace}:reader"

    whoami = kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=as_reader
    )
    assert whoami.stdout == user

    denied = kubectl("get", "secrets", "-n", namespace, kubeconfig=as_reader, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert user in denied.stderr

    kubectl(
        "create", "role", "secret-reader", "-n", namespace, "--verb=get,list", "--resource=secrets"
    )
    kubectl(
        "create",
        "rolebinding",
        "reader-reads-secrets",
        "-n",
        namespace,
        "--role=secret-reader",
        f"--serviceaccount={namespace}:reader",
    )

    eventually(  # the authorizer learns of new bindings through an informer
        lambda: (
            kubectl("get", "secrets", "-n", namespace, kubeconfig=as_reader, check=False).returncode
            == 0
        ),
        what="reader may list secrets",
    )
    # Only what the Role grants: still no deleting, and nothing in other namespaces.
    can_delete = kubectl(
        "auth", "can-i", "delete", "secrets", "-n", namespace, kubeconfig=as_reader, check=False
    )
    assert can_delete.stdout.strip() == "no"
    elsewhere = kubectl("get", "secrets", "-n", "default", kubeconfig=as_reader, check=False)
    assert "Forbidden" in elsewhere.stderr


# ---------------------------------------------------------------- controller manager
def test_garbage_collector_deletes_dependents(kube_api: KubeApi, namespace: str) -> None:
    owner = kube_api.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    kube_api.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])
        ),
    )
    kube_api.core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        names = [
            cm.metadata.name for cm in kube_api.core.list_namespaced_config_map(namespace).items
        ]
        return "dependent" not in names

    eventually(dependent_gone, timeout=60, what="dependent ConfigMap garbage-collected")


# ---------------------------------------------------------------- ProcessRunner
def test_process_runner_runs_a_command_against_the_cluster(
    kubeconfig: Path, run_process: Callable[..., ProcessRunner]
) -> None:
    script = textwrap.dedent(
        """
        import os, subprocess, sys, time
        print("KUBECONFIG=" + os.environ["KUBECONFIG"], flush=True)
        kubectl = os.path.join(os.path.dirname(sys.executable), "kubectl")
        subprocess.run([kubectl, "get", "namespace", "default", "-o", "name"], check=True)
        print("ready", flush=True)
        time.sleep(300)
        """
    )
    runner = run_process([sys.executable, "-c", script], name="probe")
    runner.wait_for_log(r"(?m)^ready$", timeout=60)
    log = runner.read_log()
    assert f"KUBECONFIG={kubeconfig}" in log
    assert "namespace/default" in log
    assert runner.running
    assert runner.stop() is not None
    assert not runner.running
