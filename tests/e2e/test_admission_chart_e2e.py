"""We test these aspects: the chart's admission objects, installed for real.

* ``helm install`` creates the webhook Secret, Service and ValidatingWebhookConfiguration
  (limited to the one namespace this release watches, so other tests sharing the control
  plane never meet it), and the configuration's caBundle is the Secret's CA;
* ``helm upgrade`` keeps the self-signed CA and certificate (looked up in the cluster),
  so an upgrade never leaves replicas presenting a certificate the API server does not
  trust;
* ``helm uninstall`` removes the cluster-scoped configuration.

The API server calling the webhook for real is tests/e2e/test_admission_e2e.py (this
control plane has no kube-proxy, so a Service cannot carry the call here).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from chainop.testing.cluster import KubeApi
from tests.e2e.test_helm_e2e import CHART, create_namespace, delete_namespace, helm

pytestmark = pytest.mark.cluster


@pytest.fixture
def release_namespace(kube_api: KubeApi) -> Iterator[str]:
    name = create_namespace(kube_api, "chainop-system")
    yield name
    delete_namespace(kube_api, name)


def ca_bundles(kube_api: KubeApi, name: str) -> set[str]:
    api = client.AdmissionregistrationV1Api(kube_api.api_client)
    configuration = api.read_validating_webhook_configuration(name)
    return {hook.client_config.ca_bundle for hook in configuration.webhooks}


@pytest.mark.timeout(300)
def test_install_upgrade_uninstall_keeps_the_certificate_and_cleans_up(
    kube_api: KubeApi, kubeconfig: Path, namespace: str, release_namespace: str,
    tmp_path: Path, crds: None,
) -> None:  # fmt: skip
    name = f"chainop-{uuid.uuid4().hex[:6]}"
    home = tmp_path / "helm"
    args = ("--namespace", release_namespace, "--set", f"watchNamespaces={{{namespace}}}")
    helm("install", name, str(CHART), *args, kubeconfig=kubeconfig, home=home)
    try:
        secret = kube_api.core.read_namespaced_secret(f"{name}-webhook-tls", release_namespace)
        kube_api.core.read_namespaced_service(f"{name}-webhook", release_namespace)
        assert ca_bundles(kube_api, name) == {secret.data["ca.crt"]}
        api = client.AdmissionregistrationV1Api(kube_api.api_client)
        for hook in api.read_validating_webhook_configuration(name).webhooks:
            assert hook.failure_policy == "Ignore"
            assert hook.namespace_selector.match_expressions[0].values == [namespace]

        helm("upgrade", name, str(CHART), *args, kubeconfig=kubeconfig, home=home)
        again = kube_api.core.read_namespaced_secret(f"{name}-webhook-tls", release_namespace)
        assert again.data == secret.data
        assert ca_bundles(kube_api, name) == {secret.data["ca.crt"]}
    finally:
        helm("uninstall", name, "--namespace", release_namespace, kubeconfig=kubeconfig,
             home=home)  # fmt: skip
    api = client.AdmissionregistrationV1Api(kube_api.api_client)
    names = [c.metadata.name for c in api.list_validating_webhook_configuration().items]
    assert name not in names
