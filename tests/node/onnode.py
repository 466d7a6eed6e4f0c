"""Helpers for chainop's own tests on the real node: the chart installed with helm, backend
Deployments whose pods really run, and plain HTTP to pods and the bridge.

How tests reach backends here (there is no cluster DNS and no kube-proxy on this node):

* a backend whose pod may be *replaced* (self-healing) runs with ``hostNetwork: true`` on a
  fixed port, bound to the bridge address :data:`BRIDGE_IP` (``10.213.0.1``), with
  ``strategy: Recreate``: its address survives the restart (a new pod gets a new pod IP, and
  a chain's endpoint is fixed when it is created). The host (a test, the demo) and the
  operator pod (pod network → the bridge) reach it at ``http://10.213.0.1:PORT``;
* a backend that is never replaced is reached by its pod IP (``10.213.0.x``), as a Service
  would route to it on a real cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chainop.operator.restarts import HISTORY, RESTARTED_AT
from chainop.testing import cluster as cluster_helpers
from tests.node.conftest import Node

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chainop"
BRIDGE_IP = "10.213.0.1"
APP_IMAGE = "localhost/chainop:dev"
BASE_IMAGE = "localhost/chainop-base:bookworm"
#: The chart pointed at the node's local image (no registry here).
IMAGE_VALUES = ("image.repository=localhost/chainop", "image.tag=dev", "image.pullPolicy=Never")
#: The env var through which a backend pod sees chainop's restart annotation (downward API).
RESTARTED_ENV = "CHAINOP_RESTARTED_AT"

#: Probe settings of the tests' chains: a failing backend is Unhealthy within ~2-3 s.
PROBING: dict[str, Any] = {
    "failureThreshold": 2,
    "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2},
}

# Only ever the node's own addresses: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ----------------------------------------------------------------------------- HTTP


def http(
    method: str, url: str, payload: Mapping[str, Any] | None = None, *, timeout: float = 5.0
) -> tuple[int, str]:
    """(status, body) of one request; (0, error) when nothing answered."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as error:
        return 0, str(error)


def control(base_url: str, **payload: Any) -> None:
    """Steer a fake backend (``POST /_control``)."""
    status, body = http("POST", f"{base_url}/_control", payload)
    assert status == 200, f"POST {base_url}/_control {payload}: {status} {body}"


# ----------------------------------------------------------------------------- waiting


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    poll: float = 0.2,
    detail: Callable[[], object] | None = None,
) -> Any:
    """Poll ``check()`` until it returns something truthy; return it. On timeout the
    message ends with ``detail()`` (what things looked like)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g}s{seen}")
        time.sleep(poll)


# ----------------------------------------------------------------------------- namespaces


def create_namespace(node: Node, prefix: str) -> str:
    """A fresh namespace ``<prefix>-<hex>`` (prefixes start with ``n1-``)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", name)
    return name


def delete_namespace(node: Node, name: str, *, wait: bool = False) -> None:
    node.kubectl(
        "delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}",
        check=False, timeout=120,
    )  # fmt: skip


# ----------------------------------------------------------------------------- helm


@dataclass
class Helm:
    """The project's helm against the node's control plane, state under ``home``."""

    kubeconfig: Path
    home: Path

    def __call__(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        result = subprocess.run(
            [cluster_helpers.helm_path(), *args],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result


def operator_values(watched: str, *extra: str) -> list[str]:
    """``--set`` arguments: the local image, namespaced RBAC watching ``watched`` only (the
    node is shared: never every namespace), a fast health loop, readable logs."""
    values = [
        *IMAGE_VALUES,
        "rbac.namespaced=true",
        f"watchNamespaces={{{watched}}}",
        "operator.logFormat=full",
        *extra,
    ]
    args = [arg for value in values for arg in ("--set", value)]
    return [*args, "--set-json", 'operator.extraArgs=["--tick","0.1"]']


def install_operator(helm: Helm, release: str, namespace: str, watched: str, *extra: str) -> float:
    """``helm install --wait`` of the chart; returns the seconds it took."""
    t0 = time.monotonic()
    helm(
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--wait", "--timeout", "180s", *operator_values(watched, *extra),
    )  # fmt: skip
    return time.monotonic() - t0


def operator_pods(node: Node, release: str, namespace: str) -> list[dict[str, Any]]:
    return pods(node, namespace, f"app.kubernetes.io/instance={release}")


def operator_log(node: Node, release: str, namespace: str) -> str:
    proc = node.kubectl(
        "logs", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
        "--tail=-1", check=False,
    )  # fmt: skip
    return proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- pods


def pods(node: Node, namespace: str, selector: str) -> list[dict[str, Any]]:
    data = node.get_json("pods", "-n", namespace, "-l", selector)
    items: list[dict[str, Any]] = data.get("items", [])  # type: ignore[assignment]
    return items


def running_pod(pod: Mapping[str, Any]) -> bool:
    """Running, Ready and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return status.get("phase") == "Running" and bool(ready) and ready[0].get("status") == "True"


def live_pod(node: Node, namespace: str, selector: str) -> dict[str, Any] | None:
    """The one Running, Ready pod of a selector that is not being deleted, or None."""
    found = [p for p in pods(node, namespace, selector) if running_pod(p)]
    return found[0] if len(found) == 1 else None


def uid(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["uid"])


def host_pids(pattern: str) -> list[int]:
    """Host pids of processes whose command line matches ``pattern`` (pgrep -f)."""
    proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split()]


def one_host_pid(pattern: str, *, timeout: float = 30.0) -> int:
    pids = wait_for(
        lambda: (found := host_pids(pattern)) and len(found) == 1 and found,
        timeout=timeout, what=f"exactly one host process matching {pattern!r}",
    )  # fmt: skip
    return int(pids[0])


def sigstop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


# ----------------------------------------------------------------------------- backends


def fake_backend_command(port: int, name: str, model: str, *, host: str = BRIDGE_IP) -> list[str]:
    """The project's fake vLLM, as the app image runs it."""
    return [
        "python", "-m", "chainop.testing.fake_backend", "--host", host, "--port", str(port),
        "--name", name, "--served-model-name", model,
    ]  # fmt: skip


def backend_deployment(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    image: str = APP_IMAGE,
    host_network: bool = True,
    env: Sequence[Mapping[str, Any]] = (),
    volumes: Sequence[Mapping[str, Any]] = (),
    mounts: Sequence[Mapping[str, Any]] = (),
    grace_seconds: int = 2,
    init_command: Sequence[str] = (),
    startup_probe: bool = False,
) -> dict[str, Any]:
    """A backend Deployment on the node. ``hostNetwork`` + ``Recreate`` (a fixed address
    across restarts: the old pod frees the port before the new one binds it). Its pods see
    chainop's restart annotation as ``$CHAINOP_RESTARTED_AT`` (empty before any restart),
    in ``init_command``'s init container too when there is one. ``startup_probe``: the
    kubelet asks ``GET /v1/models`` every second until it answers, as a model server's
    Deployment says "still loading"."""
    labels = {"app": name}
    restarted = {
        "name": RESTARTED_ENV,
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{RESTARTED_AT}']"}},
    }
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "Never",
        "command": list(command),
        "env": [restarted, *env],
        "ports": [{"containerPort": port, "name": "http"}],
        "volumeMounts": list(mounts),
    }
    if startup_probe:
        container["startupProbe"] = {
            "httpGet": {"path": "/v1/models", "port": port},
            "periodSeconds": 1,
            "failureThreshold": 120,
        }
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": "chainop-node"},
        "terminationGracePeriodSeconds": grace_seconds,
        "containers": [container],
        "volumes": list(volumes),
    }
    if init_command:
        spec["initContainers"] = [
            {
                "name": "prepare",
                "image": image,
                "imagePullPolicy": "Never",
                "command": list(init_command),
                "env": [restarted],
            }
        ]
    if host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "Default"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def apply(node: Node, namespace: str, *docs: Mapping[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    node.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def serve(node: Node, namespace: str, deployment: Mapping[str, Any], port: int) -> str:
    """Apply a backend Deployment serving on ``port`` and wait until its pod answers
    ``/v1/models``; its base URL at the pod IP (the node's address, ``BRIDGE_IP``, for a
    hostNetwork pod)."""
    name = deployment["metadata"]["name"]
    apply(node, namespace, deployment)
    pod = wait_for(lambda: live_pod(node, namespace, f"app={name}"), timeout=90, what=f"{name} pod")
    url = f"http://{pod['status']['podIP']}:{port}"
    wait_for(lambda: http("GET", f"{url}/v1/models")[0] == 200, timeout=30, what=f"{name} up")
    return url


def restart_history(node: Node, namespace: str, deployment: str) -> list[str]:
    """chainop's ``chainop.dev/restart-history`` on a Deployment (one entry per restart)."""
    data = node.get_json("deployment", deployment, "-n", namespace)
    annotations = (data.get("metadata") or {}).get("annotations") or {}  # type: ignore[union-attr]
    text = str(annotations.get(HISTORY, ""))
    return [part for part in text.split(",") if part]
