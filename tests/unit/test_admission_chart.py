"""We test these aspects of the chart's admission webhook (charts/chainop), without a cluster:

* on by default: a ValidatingWebhookConfiguration for providerchains and delegatedtasks
  (CREATE, UPDATE, main resource only), ``failurePolicy: Ignore``, ``sideEffects: None``,
  a short timeout, through a Service to the operator's ``https-webhook`` port, whose
  ``chainop run`` flags and mounted Secret match;
* self-signed (default): the Secret holds a CA and a certificate for the Service's DNS
  names signed by it, and the configuration's caBundle is that CA;
* cert-manager: a Certificate (a self-signed Issuer unless issuerRef is given), the
  ``cert-manager.io/inject-ca-from`` annotation, no generated Secret and no caBundle;
* the webhooks select exactly the watched namespaces when they are listed by name;
* ``admission.enabled=false`` removes all of it, and the ``get`` on providerchains it needs;
* ``helm lint`` passes and nonsense values are refused by the schema.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_chart import CHART, deployment, helm, of_kind, render, rights, set_args

FLAGS = [
    "--admission-port=9443",
    "--admission-cert=/etc/chainop/webhook/tls.crt",
    "--admission-key=/etc/chainop/webhook/tls.key",
]


def webhooks(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (configuration,) = of_kind(objects, "ValidatingWebhookConfiguration")
    hooks: list[dict[str, Any]] = configuration["webhooks"]
    return hooks


def test_default_install_registers_both_webhooks_never_blocking():
    _, objects = render([])
    hooks = webhooks(objects)
    assert [h["name"] for h in hooks] == [
        "providerchains.chainop.dev",
        "delegatedtasks.chainop.dev",
    ]
    for hook, plural in zip(hooks, ["providerchains", "delegatedtasks"], strict=True):
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] == 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert "namespaceSelector" not in hook  # every namespace, as the operator watches
        assert hook["rules"] == [
            {
                "apiGroups": ["chainop.dev"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": [plural],
                "scope": "Namespaced",
            }
        ]
        assert hook["clientConfig"]["service"] == {
            "name": "rel-chainop-webhook",
            "namespace": "chainop-system",
            "path": f"/validate-{plural[:-1]}",
            "port": 443,
        }
    (service,) = [
        s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("webhook")
    ]
    assert service["spec"]["ports"][0]["targetPort"] == "https-webhook"


def test_the_operator_serves_it_with_the_mounted_certificate():
    _, objects = render([])
    pod = deployment(objects)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for flag in FLAGS:
        assert flag in container["args"]
    assert {"name": "https-webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    mount = {"name": "webhook-tls", "mountPath": "/etc/chainop/webhook", "readOnly": True}
    assert mount in container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == "rel-chainop-webhook-tls"


def test_self_signed_certificate_is_signed_by_the_ca_in_the_ca_bundle(tmp_path: Path):
    _, objects = render([])
    (secret,) = of_kind(objects, "Secret")
    assert secret["metadata"]["name"] == "rel-chainop-webhook-tls"
    assert secret["type"] == "kubernetes.io/tls"
    for hook in webhooks(objects):
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    for name in ("rel-chainop-webhook.chainop-system.svc", "rel-chainop-webhook"):
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_hostname", name,
             str(tmp_path / "tls.crt")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_cert_manager_issues_and_injects_the_certificate():
    _, objects = render(["admission.certificate.source=cert-manager"])
    assert not of_kind(objects, "Secret")
    (certificate,) = of_kind(objects, "Certificate")
    assert certificate["spec"]["secretName"] == "rel-chainop-webhook-tls"
    assert "rel-chainop-webhook.chainop-system.svc" in certificate["spec"]["dnsNames"]
    (issuer,) = of_kind(objects, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
    }
    (configuration,) = of_kind(objects, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "chainop-system/rel-chainop-webhook"
    }
    assert all("caBundle" not in h["clientConfig"] for h in webhooks(objects))

    _, objects = render(
        [
            "admission.certificate.source=cert-manager",
            "admission.certificate.certManager.issuerRef.name=corp-ca",
            "admission.certificate.certManager.issuerRef.kind=ClusterIssuer",
        ]
    )
    assert not of_kind(objects, "Issuer")
    (certificate,) = of_kind(objects, "Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_listed_namespaces_are_the_only_ones_reviewed():
    _, objects = render(["rbac.namespaced=true", "watchNamespaces={team-a,team-b}"])
    for hook in webhooks(objects):
        assert hook["namespaceSelector"] == {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": ["team-a", "team-b"],
                }
            ]
        }
    _, objects = render(["watchNamespaces={team-*}"])  # a glob cannot be selected: all
    assert all("namespaceSelector" not in hook for hook in webhooks(objects))


def test_disabled_admission_renders_nothing_of_it():
    _, objects = render(["admission.enabled=false"])
    for kind in ("ValidatingWebhookConfiguration", "Secret", "Certificate", "Issuer"):
        assert not of_kind(objects, kind), kind
    assert [s["metadata"]["name"] for s in of_kind(objects, "Service")] == ["rel-chainop-metrics"]
    container = deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if a.startswith("--admission")]
    # get stays: spend budgets read a chain by name whatever admission says.
    assert rights(objects)[("chainop.dev", "providerchains")] == {"get", "list", "watch"}
    _, objects = render([])
    assert rights(objects)[("chainop.dev", "providerchains")] == {"get", "list", "watch"}


def test_helm_lint_passes_with_cert_manager():
    result = helm(
        "lint", "--strict", str(CHART), *set_args(["admission.certificate.source=cert-manager"])
    )
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["admission.certificate.source=vault"], "source"),
        (["admission.timeoutSeconds=60"], "timeoutSeconds"),
        (["admission.failurePolicy=Fail"], "failurePolicy"),  # not a knob: always Ignore
    ],
)
def test_nonsense_admission_values_are_refused(values: list[str], message: str):
    result = helm("template", "rel", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr
