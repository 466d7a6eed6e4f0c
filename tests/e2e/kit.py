"""Small helpers for end-to-end tests of the operator on the real control plane."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from chainop.core.models import GROUP, VERSION
from chainop.testing.cluster import KubeApi
from chainop.testing.supervisor import STAND_IN_NODE_SELECTOR

CHAINS = "providerchains"
TASKS = "delegatedtasks"


class WaitTimeout(AssertionError):
    """A condition was not met in time; the message shows the last object seen."""


class Kit:
    """Create and watch chainop objects in one namespace."""

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    # ----------------------------------------------------------------- builders

    @staticmethod
    def provider(name: str, url: str, tier: str = "Standard", **extra: Any) -> dict[str, Any]:
        """A provider entry pointing at a fake backend's base URL (openai protocol)."""
        return {
            "name": name,
            "type": "openai",
            "endpoint": f"{url}/v1",
            "model": f"{name}-model",
            "privacyTier": tier,
            **extra,
        }

    def create_chain(self, name: str, providers: list[dict[str, Any]], **spec: Any) -> None:
        """Create a ProviderChain."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ProviderChain",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"providers": providers, **spec},
        }
        self.api.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, CHAINS, body
        )

    def create_task(
        self,
        name: str,
        *,
        chain: str = "default",
        content: str = "hello",
        routing: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        **spec: Any,
    ) -> None:
        """Create a DelegatedTask with a one-message request."""
        body_spec: dict[str, Any] = {
            "chain": chain,
            "request": request or {"messages": [{"role": "user", "content": content}]},
            **spec,
        }
        if routing is not None:
            body_spec["routing"] = routing
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DelegatedTask",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": body_spec,
        }
        self.api.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, TASKS, body)

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        """Create an Opaque Secret from plain strings."""
        self.api.core.create_namespaced_secret(
            self.namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data),
        )

    def create_deployment(self, name: str) -> None:
        """A Deployment that stands for an in-cluster backend (no kubelet runs its pods)."""
        labels = {"app": name}
        self.api.apps.create_namespaced_deployment(
            self.namespace,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [{"name": "server", "image": "vllm/vllm-openai"}],
                            # Pending even with a real node up: the supervisor runs it.
                            "nodeSelector": STAND_IN_NODE_SELECTOR,
                        },
                    },
                },
            },
        )

    # ----------------------------------------------------------------- reading

    def get(self, plural: str, name: str) -> dict[str, Any]:
        """One of our objects."""
        obj: dict[str, Any] = self.api.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        return obj

    def exists(self, plural: str, name: str) -> bool:
        """Whether the object exists."""
        try:
            self.get(plural, name)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def deployment(self, name: str) -> dict[str, Any]:
        """A Deployment as a dict."""
        obj = self.api.apps.read_namespaced_deployment(name, self.namespace)
        result: dict[str, Any] = self.api.api_client.sanitize_for_serialization(obj)
        return result

    def events(self) -> list[dict[str, Any]]:
        """Every Event in the namespace, as dicts."""
        items = self.api.core.list_namespaced_event(self.namespace).items
        return [self.api.api_client.sanitize_for_serialization(e) for e in items]

    def event_reasons(self, name: str | None = None) -> list[str]:
        """Reasons of the Events (about ``name`` only, if given), oldest first."""
        events = sorted(self.events(), key=lambda e: e.get("lastTimestamp") or "")
        return [
            e["reason"]
            for e in events
            if name is None or e.get("involvedObject", {}).get("name") == name
        ]

    # ----------------------------------------------------------------- waiting

    def wait(
        self,
        plural: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 30.0,
        what: str = "condition",
    ) -> dict[str, Any]:
        """Poll an object until ``predicate(obj)`` holds; return it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                last = self.get(plural, name)
            except client.ApiException as error:
                if error.status != 404:
                    raise
                last = None
            if last is not None and predicate(last):
                return last
            time.sleep(0.1)
        raise WaitTimeout(f"{plural}/{name}: {what} not met in {timeout}s; last: {last}")

    def wait_task(self, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a task is Succeeded or Failed; return its status."""
        obj = self.wait(
            TASKS,
            name,
            lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            timeout=timeout,
            what="a final phase",
        )
        status: dict[str, Any] = obj["status"]
        return status

    def holds(self, check: Callable[[], bool], *, seconds: float = 2.0, what: str) -> None:
        """Assert ``check()`` stays true for ``seconds`` (polled).

        For "nothing happened" claims (no penalty, no second drill): a chain's status is
        written by the operator's loop, apart from the task's, so one read right after a
        task ends may still show the state from before it. A penalty is written within a
        tick; two seconds of polling would see it.
        """
        deadline = time.monotonic() + seconds
        while True:
            assert check(), f"{what}: no longer true"
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def wait_until(
        self, check: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Poll any ``check()`` until it is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise WaitTimeout(f"{what} not met in {timeout}s")

    def provider_status(self, chain: str, provider: str) -> dict[str, Any]:
        """The status entry of one provider of a chain ({} if none yet)."""
        status = self.get(CHAINS, chain).get("status") or {}
        for entry in status.get("providers") or []:
            if entry.get("name") == provider:
                result: dict[str, Any] = entry
                return result
        return {}

    def chain_ready(self, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a chain's Ready condition is True; return its status."""
        obj = self.wait(
            CHAINS,
            name,
            lambda o: ready_condition(o).get("status") == "True",
            timeout=timeout,
            what="Ready=True",
        )
        status: dict[str, Any] = obj["status"]
        return status


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """One condition of an object's status ({} if none)."""
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            result: dict[str, Any] = entry
            return result
    return {}


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition of a chain ({} if none)."""
    return condition(obj, "Ready")


def operator_metric(port: int, name: str, **labels: str) -> float:
    """The sum of an operator metric's samples whose labels include ``labels``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def outcomes(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(provider, outcome) of each attempt of a task status."""
    return [(a["provider"], a["outcome"]) for a in status.get("attempts") or []]


#: Active probes every second, two failures to act: self-healing and drains e2e tests.
PROBING = {
    "failureThreshold": 2,
    "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
}


def backend_command(port: int, *, mode: str = "healthy") -> list[str]:
    """The fake vLLM a ``supervisor`` runs as the ``vllm`` Deployment's process."""
    return [
        sys.executable,
        "-m",
        "chainop.testing.fake_backend",
        "--port",
        str(port),
        "--name",
        "vllm",
        "--mode",
        mode,
    ]


def vllm_provider(kit: Kit, port: int) -> dict[str, Any]:
    """That backend as a Sovereign provider chainop may restart (backend: vllm)."""
    return kit.provider(
        "vllm", f"http://127.0.0.1:{port}", "Sovereign", backend={"deployment": "vllm"}
    )
