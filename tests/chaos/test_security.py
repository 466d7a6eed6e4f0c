"""We test these aspects: secrets stay secret and namespaces stay apart, end to end.

* a canary API key in a Secret, used by every provider of a scenario with failover,
  benching, a provider that echoes request headers (the key) back in 5xx and 4xx error
  bodies, and a permanent failure: afterwards the canary (and its base64 form) appears
  nowhere — not in any object's YAML in the namespace (Secrets aside), not in Events,
  not in the operator's log, not in ``/metrics``;
* a chain cannot read a Secret or restart a Deployment of another namespace: with the
  referenced names existing only in another namespace, the chain is ``Ready=False`` with
  ``SecretNotFound`` / ``DeploymentNotFound``, and the other Deployment is never patched.
"""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from kubernetes import client

from chainop.testing.cluster import kubectl
from tests.chaos.conftest import ChaosOperator
from tests.e2e.kit import CHAINS, Kit, ready_condition

pytestmark = pytest.mark.cluster


def keyed(kit: Kit, name: str, url: str, **extra) -> dict:
    return kit.provider(
        name, url, "Sovereign", apiKeySecretRef={"name": "llm-keys", "key": "apiKey"}, **extra
    )


@pytest.mark.timeout(300)
def test_canary_key_never_leaks_anywhere(kit: Kit, chaos_operator, backends, kubeconfig) -> None:
    canary = f"sk-canary-{uuid.uuid4().hex}"
    kit.create_secret("llm-keys", {"apiKey": canary})
    echo, flaky, good, strict = (backends(n) for n in ("echo", "flaky", "good", "strict"))
    for backend in (echo, flaky, good, strict):
        backend.configure(api_key=canary)
    echo.set_mode("error", status=503, echo_headers=True)  # reflects the key, transiently
    flaky.set_mode("error", status=502)
    strict.set_mode("error", status=400, echo_headers=True)  # reflects it in a permanent error
    kit.create_chain(
        "default",
        [
            keyed(kit, "echo", echo.url),
            keyed(kit, "flaky", flaky.url),
            keyed(kit, "good", good.url),
        ],
        health={"failureThreshold": 1, "transientRetries": 0},
    )
    kit.create_chain("strict", [keyed(kit, "strict", strict.url)])
    operator: ChaosOperator = chaos_operator()
    operator.start().wait_started()
    kit.chain_ready("default")
    kit.chain_ready("strict")
    for i in range(5):
        kit.create_task(f"work-{i}", content=f"work-{i}")
    kit.create_task("bad-request", chain="strict", content="x")
    for i in range(5):
        assert kit.wait_task(f"work-{i}", timeout=60)["phase"] == "Succeeded"
    failed = kit.wait_task("bad-request", timeout=60)
    assert failed["phase"] == "Failed"
    assert any(r == "ProviderBenched" for r in kit.event_reasons("default"))
    time.sleep(2)  # let the last status flush and Events land

    needles = {canary, base64.b64encode(canary.encode()).decode()}
    haystacks = {
        "objects": kubectl(
            "get",
            "providerchains,delegatedtasks,configmaps,events,deployments",
            "-n",
            kit.namespace,
            "-o",
            "yaml",
            kubeconfig=kubeconfig,
        ).stdout,
        "events": kubectl(
            "get", "events", "-n", kit.namespace, "-o", "yaml", kubeconfig=kubeconfig
        ).stdout,
        "log": operator.all_logs(),
        "metrics": operator.metrics(),
    }
    hits = {where: [n for n in needles if n in text] for where, text in haystacks.items()}
    print(
        f"\nsecurity/canary: scanned {sum(len(t) for t in haystacks.values())} bytes "
        f"({', '.join(f'{w}={len(t)}' for w, t in haystacks.items())}); hits={hits}"
    )
    assert all(not found for found in hits.values()), hits
    # The hostile providers did get (and reflect) the key: the scan had something to find.
    assert echo.stats()["requests"].get("openai", 0) >= 1
    assert strict.stats()["requests"].get("openai", 0) >= 1


@pytest.mark.timeout(300)
def test_chain_cannot_reach_secrets_or_deployments_of_another_namespace(
    kit: Kit, chaos_operator, backends, kube_api
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    kube_api.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        kube_api.core.create_namespaced_secret(
            other,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="shared-key"), string_data={"apiKey": "sk-x"}
            ),
        )
        Kit(kube_api, other).create_deployment("vllm")
        before = kube_api.apps.read_namespaced_deployment("vllm", other)

        broken = backends("broken")
        broken.set_mode("error", status=503)
        kit.create_chain(
            "steal-secret",
            [
                kit.provider(
                    "p", broken.url, apiKeySecretRef={"name": "shared-key", "key": "apiKey"}
                )
            ],
        )
        kit.create_chain(
            "steal-deployment",
            [kit.provider("p", broken.url, "Sovereign", backend={"deployment": "vllm"})],
            health={"probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 1}},
        )
        operator: ChaosOperator = chaos_operator()
        operator.start().wait_started()
        for chain, reason in (
            ("steal-secret", "SecretNotFound"),
            ("steal-deployment", "DeploymentNotFound"),
        ):
            obj = kit.wait(
                CHAINS,
                chain,
                lambda o, reason=reason: ready_condition(o).get("reason") == reason,
                what=reason,
            )
            assert ready_condition(obj)["status"] == "False"
            assert kit.namespace in ready_condition(obj)["message"]
        time.sleep(8)  # several probe periods and one revalidation: still nothing may happen
        after = kube_api.apps.read_namespaced_deployment("vllm", other)
        assert after.metadata.generation == before.metadata.generation
        assert not (after.spec.template.metadata.annotations)
        assert not [e for e in Kit(kube_api, other).events() if "chainop" in str(e)]
        print(
            "\nsecurity/isolation: SecretNotFound and DeploymentNotFound; the Deployment in "
            f"{other} kept generation {after.metadata.generation}, never patched"
        )
    finally:
        kube_api.core.delete_namespace(other)
