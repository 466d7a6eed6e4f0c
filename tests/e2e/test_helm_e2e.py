"""We test these aspects: the Helm chart installed for real, and chainop working under
exactly the rights it grants — never as admin.

* ``helm install`` of charts/chainop into a fresh namespace of the real control plane
  (no ``--wait``: no kubelet runs its pod) creates the ServiceAccount, RBAC, metrics
  Service and Deployment the chart renders;
* namespaced RBAC (``rbac.namespaced=true``): the operator runs locally with a token
  minted for the chart's ServiceAccount (``kubectl create token``), not the admin
  kubeconfig, and under those rights a ProviderChain whose key comes from a Secret and
  whose backend is a Deployment becomes Ready, a DelegatedTask delegated to the keyed
  provider Succeeds, kopf's ``/healthz`` (the chart's probes) answers, and a wedged
  backend is restarted — the self-healing Deployment patch goes through; nothing in its
  log was refused except kopf's documented optional cluster-wide lookups;
* the same token is Forbidden outside those rights: a Secret and a Deployment patch in
  another namespace, listing Secrets, changing a chain's spec; ``kubectl auth can-i``
  agrees (patch deployments: yes in the watched namespace, no elsewhere), and the API
  server's own list of the ServiceAccount's rights is exactly the chart's allow-table;
* cluster-wide RBAC (the default values): the ClusterRole grants the same verbs in any
  namespace plus kopf's read-only CRD watch, and nothing more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from chainop.operator.restarts import RESTARTED_AT
from chainop.testing import cluster as cluster_helpers
from chainop.testing.cluster import KubeApi, ProcessRunner, free_port
from chainop.testing.fake_backend import FakeBackendThread
from tests.e2e.kit import CHAINS, Kit
from tests.unit.test_chart import CLUSTER_ONLY, NAMESPACED_ALLOWED, merged

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chainop"
API_KEY = "sk-helm-e2e-0123456789abcdef"

#: kopf's optional cluster-wide lookups (kopf._core.reactor.observation): under namespaced
#: RBAC they are refused; kopf retries them (ERROR lines), then logs a warning and carries
#: on with the exact namespaces it was given and the CRDs it discovered at startup.
KOPF_OPTIONAL = re.compile(
    r"GET \S+/(api/v1/namespaces|apis/apiextensions\.k8s\.io/v1/customresourcedefinitions)"
    r"(\?\S*)? -> APIForbiddenError"
    r"|Not enough permissions to (list namespaces|watch for namespaces|watch for resources)"
)


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Release:
    """One installed release of the chart."""

    name: str
    namespace: str
    service_account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def helm(*args: str, kubeconfig: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """Run the project's helm against the local cluster, with its state under ``home``."""
    env = dict(os.environ)
    env.update(
        KUBECONFIG=str(kubeconfig),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    result = subprocess.run(
        [cluster_helpers.helm_path(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def create_namespace(api: KubeApi, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    api.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"chainop.dev/test": "true"})
        )
    )
    return name


def delete_namespace(api: KubeApi, name: str) -> None:
    try:
        api.core.delete_namespace(name)
    except client.ApiException as error:
        if error.status != 404:
            raise


def service_account_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """A kubeconfig with the admin kubeconfig's server and CA, and only ``token``."""
    config = yaml.safe_load(admin.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == current["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster["cluster"]}],
                "users": [{"name": "chainop", "user": {"token": token}}],
                "contexts": [
                    {"name": "chainop", "context": {"cluster": "local", "user": "chainop"}}
                ],
                "current-context": "chainop",
            }
        )
    )
    path.chmod(0o600)
    return path


def can_i(kubeconfig: Path, verb: str, resource: str, namespace: str, user: str) -> bool:
    """``kubectl auth can-i VERB RESOURCE -n NS --as USER`` (asked as admin)."""
    result = cluster_helpers.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, f"--as={user}",
        check=False, kubeconfig=kubeconfig,
    )  # fmt: skip
    assert result.stdout.strip() in ("yes", "no"), result
    return result.stdout.strip() == "yes"


def granted(kubeconfig: Path, namespace: str, user: str) -> dict[tuple[str, str], set[str]]:
    """The API server's own list of what ``user`` may do in ``namespace``, per
    (apiGroup, resource), from ``kubectl auth can-i --list`` (non-resource URLs left out)."""
    table = cluster_helpers.kubectl(
        "auth", "can-i", "--list", "-n", namespace, f"--as={user}", kubeconfig=kubeconfig
    ).stdout
    rights: dict[tuple[str, str], set[str]] = {}
    for line in table.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+\[\]\s+\[\]\s+\[(.*)\]$", line.strip())
        if not match:
            continue  # non-resource URLs (discovery), resource-name-scoped rows
        full, verbs = match.group(1), match.group(2).split()
        resource, _, group = full.partition(".")
        if "/" in full:  # "providerchains.chainop.dev/status" style
            base, _, sub = full.partition("/")
            resource, _, group = base.partition(".")
            resource = f"{resource}/{sub}"
        rights.setdefault((group, resource), set()).update(verbs)
    # Every authenticated user may review itself; that is not the chart's doing.
    for review in ("selfsubjectreviews", "selfsubjectaccessreviews", "selfsubjectrulesreviews"):
        for group in ("authentication.k8s.io", "authorization.k8s.io"):
            rights.pop((group, review), None)
    return rights


def template_annotations(kit: Kit, deployment: str) -> dict[str, str]:
    template = kit.deployment(deployment)["spec"]["template"]
    return (template.get("metadata") or {}).get("annotations") or {}


def forbidden(call: Callable[[], Any]) -> bool:
    try:
        call()
    except client.ApiException as error:
        return error.status == 403
    return False


def refusals(log: str) -> list[str]:
    """Log lines where the API server said no, except kopf's documented degradations and
    writes into a namespace being deleted (a test's own teardown racing the operator:
    the API server answers 403 "unable to create new content ... being terminated")."""
    return [
        line
        for line in log.splitlines()
        if re.search(r"forbidden|\b403\b", line, re.IGNORECASE)
        and not KOPF_OPTIONAL.search(line)
        and "because it is being terminated" not in line
    ]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def release_namespace(kube_api: KubeApi) -> Iterator[str]:
    name = create_namespace(kube_api, "chainop-system")
    yield name
    delete_namespace(kube_api, name)


@pytest.fixture
def other_namespace(kube_api: KubeApi) -> Iterator[str]:
    name = create_namespace(kube_api, "not-watched")
    yield name
    delete_namespace(kube_api, name)


@pytest.fixture
def install(
    kubeconfig: Path, release_namespace: str, tmp_path: Path, crds: None
) -> Iterator[Callable[..., Release]]:
    """``install(*set_args)``: helm-install the chart; every release is uninstalled after."""
    installed: list[str] = []
    home = tmp_path / "helm"

    def run(*set_args: str) -> Release:
        name = f"chainop-{uuid.uuid4().hex[:6]}"
        args = [arg for value in set_args for arg in ("--set", value)]
        helm(
            "install", name, str(CHART), "--namespace", release_namespace, *args,
            kubeconfig=kubeconfig, home=home,
        )  # fmt: skip
        installed.append(name)
        return Release(name=name, namespace=release_namespace, service_account=name)

    yield run
    for name in installed:
        helm("uninstall", name, "--namespace", release_namespace, kubeconfig=kubeconfig, home=home)


# ----------------------------------------------------------------------------- tests


def test_namespaced_install_runs_chainop_with_only_the_charts_rights(
    kube_api: KubeApi,
    kubeconfig: Path,
    kit: Kit,
    install: Callable[..., Release],
    other_namespace: str,
    run_process: Callable[..., ProcessRunner],
    backends: Callable[[str], FakeBackendThread],
    tmp_path: Path,
):
    watched = kit.namespace
    release = install("rbac.namespaced=true", f"watchNamespaces={{{watched}}}")

    # What helm created: the identity and the Role live where they should; nothing
    # cluster-scoped names this release.
    deployment = kube_api.apps.read_namespaced_deployment(release.name, release.namespace)
    container = deployment.spec.template.spec.containers[0]
    assert f"--namespace={watched}" in container.args
    assert container.security_context.read_only_root_filesystem is True
    kube_api.core.read_namespaced_service_account(release.service_account, release.namespace)
    kube_api.rbac.read_namespaced_role(release.name, watched)
    kube_api.rbac.read_namespaced_role_binding(release.name, watched)
    assert not [
        r.metadata.name
        for r in kube_api.rbac.list_cluster_role_binding().items
        if any(s.name == release.service_account for s in r.subjects or [])
    ]

    # The operator, locally, as the chart's ServiceAccount.
    token = cluster_helpers.kubectl(
        "create", "token", release.service_account, "-n", release.namespace,
        "--duration=1h", kubeconfig=kubeconfig,
    ).stdout.strip()  # fmt: skip
    sa_kubeconfig = service_account_kubeconfig(kubeconfig, token, tmp_path / "sa-kubeconfig")
    health_port = free_port()
    operator = run_process(
        [
            sys.executable, "-m", "chainop", "run",
            "--namespace", watched, "--no-cluster-scan",  # as the chart runs it, namespaced
            "--liveness", f"http://127.0.0.1:{health_port}/healthz",
            "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1",
            "--tick", "0.1", "--log-format", "full",
        ],
        name="operator",
        env={"KUBECONFIG": str(sa_kubeconfig)},
    )  # fmt: skip
    operator.wait_for_log(r"chainop started", timeout=60)

    # A chain using every namespaced right: a key from a Secret (secrets get), a backend
    # Deployment (deployments get), status patches, Events.
    vllm, cloud = backends("vllm"), backends("cloud")
    cloud.backend.configure(api_key=API_KEY)
    kit.create_secret("cloud-key", {"apiKey": API_KEY})
    kit.create_deployment("vllm")
    kit.create_chain(
        "default",
        [
            kit.provider("vllm", vllm.url, "Sovereign", backend={"deployment": "vllm"}),
            kit.provider(
                "cloud",
                cloud.url,
                "Standard",
                apiKeySecretRef={"name": "cloud-key", "key": "apiKey"},
            ),
        ],
        health={
            "failureThreshold": 2,
            "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
        },
    )
    status = kit.chain_ready("default", timeout=60)
    assert status["healthy"] == status["total"] == 2

    kit.create_task(
        "delegated", routing={"preferredProvider": "cloud", "allowDelegation": True}, content="hi"
    )
    task = kit.wait_task("delegated", timeout=60)
    assert task["phase"] == "Succeeded", task
    assert task["result"]["provider"] == "cloud"
    assert task["result"]["text"].startswith("[cloud]")

    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as reply:
        assert reply.status == 200  # what the chart's liveness/readiness probes call

    # Self-healing under the chart's rights: the wedged backend's Deployment is patched.
    vllm.backend.set_mode("error", status=503)
    kit.wait_until(
        lambda: RESTARTED_AT in template_annotations(kit, "vllm"),
        timeout=60,
        what="the backend Deployment restarted by chainop",
    )
    kit.wait_until(
        lambda: "BackendRestarted" in kit.event_reasons("default"),
        timeout=30,
        what="a BackendRestarted Event on the chain (events: create)",
    )

    log = operator.read_log()
    assert refusals(log) == []
    # --no-cluster-scan (what the chart passes in namespaced mode): kopf does not even try
    # the cluster-wide lookups these rights would refuse.
    assert not KOPF_OPTIONAL.search(log)
    assert API_KEY not in log

    # Outside those rights the same token gets 403.
    Kit(kube_api, other_namespace).create_deployment("vllm")
    kube_api.core.create_namespaced_secret(
        other_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="cloud-key"), string_data={"k": "v"}),
    )
    as_chainop = cluster_helpers.connect(sa_kubeconfig)
    try:
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "now"}}}}}
        assert forbidden(
            lambda: as_chainop.apps.patch_namespaced_deployment("vllm", other_namespace, patch)
        )
        assert forbidden(
            lambda: as_chainop.core.read_namespaced_secret("cloud-key", other_namespace)
        )
        assert forbidden(lambda: as_chainop.core.list_namespaced_secret(watched))
        assert forbidden(
            lambda: as_chainop.custom.patch_namespaced_custom_object(
                "chainop.dev", "v1alpha1", watched, CHAINS, "default",
                {"spec": {"strategy": "PrimaryOnly"}},
            )
        )  # fmt: skip
        assert forbidden(lambda: as_chainop.apps.delete_namespaced_deployment("vllm", watched))
        # ...while the same calls in its own namespace are allowed (not a broken token).
        as_chainop.core.read_namespaced_secret("cloud-key", watched)
    finally:
        as_chainop.close()

    assert can_i(kubeconfig, "patch", "deployments", watched, release.user)
    assert not can_i(kubeconfig, "patch", "deployments", other_namespace, release.user)
    assert not can_i(kubeconfig, "get", "secrets", other_namespace, release.user)

    # The API server's own account of the ServiceAccount's rights is the allow-table.
    assert granted(kubeconfig, watched, release.user) == merged(NAMESPACED_ALLOWED)
    assert granted(kubeconfig, other_namespace, release.user) == {}


def test_cluster_wide_install_grants_the_allow_table_and_no_more(
    kubeconfig: Path, install: Callable[..., Release], other_namespace: str
):
    release = install()  # default values: all namespaces, one ClusterRole
    rights = granted(kubeconfig, other_namespace, release.user)
    # CRDs are cluster-scoped, so they show in every namespace's list.
    crd = ("apiextensions.k8s.io", "customresourcedefinitions")
    assert rights == merged(NAMESPACED_ALLOWED, {crd: CLUSTER_ONLY[crd]})
    assert can_i(kubeconfig, "patch", "deployments", other_namespace, release.user)
    assert not can_i(kubeconfig, "delete", "deployments", other_namespace, release.user)
    assert not can_i(kubeconfig, "list", "secrets", other_namespace, release.user)
    assert not can_i(
        kubeconfig, "patch", "providerchains.chainop.dev", other_namespace, release.user
    )
