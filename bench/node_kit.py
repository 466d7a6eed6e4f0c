"""What the node test and the node bench share: helm, the fake vLLM as a real Deployment,
operator pods, their host pids and cgroups, the peering object.

Used by ``tests/node/test_operator_failover_node.py`` and ``bench/node.py`` against the
node of ``hack/node-up.sh`` (``CHAINOP_CLUSTER_DIR`` picks the cluster). Pods have no
cluster DNS and no kube-proxy there: the fake vLLM runs with ``hostNetwork`` on a fixed
port, so chains reach it at the node bridge's address (``10.213.0.1:PORT``) and that
address survives every restart of its pod.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from chainop.testing import cluster

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "chainop"
IMAGE_REPOSITORY, IMAGE_TAG = "localhost/chainop", "dev"
BRIDGE = "chainop0"
MODEL = "vllm-model"
CGROUP = Path("/sys/fs/cgroup")


def node_reason() -> str | None:
    """None when the node of ``hack/node-up.sh`` is live and Ready, else why not."""
    proc = subprocess.run(
        [str(ROOT / "hack" / "node-status.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"hack/node-status.sh exited {proc.returncode}"


def gateway() -> str:
    """The host's address on the pod bridge (pods reach hostNetwork servers there)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", BRIDGE], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not match:
        raise RuntimeError(f"no IPv4 address on {BRIDGE}: {out!r}")
    return match.group(1)


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    cmd = [cluster.kubectl_path(), "--kubeconfig", str(cluster.kubeconfig_path()), *args]
    proc = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
    return proc


def get_json(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def apply(objects: Sequence[dict[str, Any]] | dict[str, Any], namespace: str) -> None:
    items = objects if isinstance(objects, Sequence) else [objects]
    body = {"apiVersion": "v1", "kind": "List", "items": list(items)}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def helm(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    cmd = [cluster.helm_path(), "--kubeconfig", str(cluster.kubeconfig_path()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:3])}: {proc.stderr.strip() or proc.stdout}")
    return proc


@dataclass
class Release:
    """A helm release of the chart in its own namespace, serving listed namespaces."""

    name: str
    namespace: str
    watch: list[str]
    replicas: int = 1
    lifetime: int = 10
    peering: str = "chainop"

    def install(self, *extra: str, timeout: int = 240) -> float:
        """``helm install --wait``; the seconds it took."""
        sets = [
            f"image.repository={IMAGE_REPOSITORY}",
            f"image.tag={IMAGE_TAG}",
            "image.pullPolicy=Never",
            f"replicaCount={self.replicas}",
            "watchNamespaces={" + ",".join(self.watch) + "}",
            "operator.logFormat=full",
            f"peering.name={self.peering}",
            f"peering.lifetimeSeconds={self.lifetime}",
        ]
        started = time.monotonic()
        helm(
            *("install", self.name, str(CHART), "-n", self.namespace, "--create-namespace"),
            *("--wait", "--timeout", f"{timeout}s"),
            *(arg for s in sets for arg in ("--set", s)),
            *extra,
            timeout=timeout + 60,
        )
        return time.monotonic() - started

    def uninstall(self) -> None:
        helm("uninstall", self.name, "-n", self.namespace, "--wait", "--timeout", "120s")

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"

    def pods(self) -> list[dict[str, Any]]:
        """The release's pods that have an IP and are not being deleted."""
        items = get_json("pods", "-n", self.namespace, "-l", self.selector)["items"]
        return [
            p
            for p in items
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
        ]

    def values(self) -> dict[str, Any]:
        out = helm("get", "values", self.name, "-n", self.namespace, "--all", "-o", "json")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def logs(self, pod: str, *, previous: bool = False) -> str:
        args = ["logs", "-n", self.namespace, pod]
        if previous:
            args.append("--previous")
        return kubectl(*args, check=False, timeout=60).stdout


def scrape(ip: str, port: int = 9090, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=timeout) as reply:
        text: str = reply.read().decode()
    return text


def metric(text: str, name: str) -> float:
    """The sum of every series of ``name`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if match:
            total += float(match.group(2))
    return total


def pod_metric(ip: str, name: str) -> float | None:
    try:
        return metric(scrape(ip), name)
    except OSError:
        return None


# --------------------------------------------------------------------------- the node's host


def host_pid(pod_name: str, *, command: str = "chainop") -> int | None:
    """The host pid of the process whose ``POD_ID`` is ``pod_name`` (the chart sets it)."""
    wanted = f"POD_ID={pod_name}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(command.encode() in part for part in cmdline[:2]):
                continue
            if b"run" not in cmdline:
                continue
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def pod_cgroup(controller: str, pod_uid: str) -> Path | None:
    """The pod-level cgroup dir of a pod in a v1 hierarchy (kubelet's cgroupfs driver)."""
    base = CGROUP / controller / "kubepods"
    for qos in ("", "burstable", "besteffort"):
        candidate = base / qos / f"pod{pod_uid}" if qos else base / f"pod{pod_uid}"
        if candidate.is_dir():
            return candidate
    return None


def container_cgroup(controller: str, pod_uid: str, pid: int) -> Path | None:
    """The container's own cgroup (the pod's has the sandbox too): from /proc/<pid>/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") and f"pod{pod_uid}" in path:
            found = CGROUP / controller / path.lstrip("/")
            if found.is_dir():
                return found
    return None


def cgroup_memory(path: Path) -> dict[str, float]:
    """MiB: usage (memory.usage_in_bytes), working set (usage - inactive_file, as the
    kubelet computes it), rss, cache; and the limit."""
    usage = int((path / "memory.usage_in_bytes").read_text())
    stat = dict(
        (k, int(v))
        for k, v in (line.split() for line in (path / "memory.stat").read_text().splitlines())
    )
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    mib = 1024 * 1024
    return {
        "usage_mib": round(usage / mib, 1),
        "working_set_mib": round(max(0, usage - inactive) / mib, 1),
        "rss_mib": round(stat.get("total_rss", stat.get("rss", 0)) / mib, 1),
        "cache_mib": round(stat.get("total_cache", stat.get("cache", 0)) / mib, 1),
        "limit_mib": round(int((path / "memory.limit_in_bytes").read_text()) / mib, 1),
        "max_usage_mib": round(int((path / "memory.max_usage_in_bytes").read_text()) / mib, 1),
    }


def cgroup_cpu_seconds(path: Path) -> float:
    """cpuacct.usage: CPU nanoseconds of every process in the cgroup, as seconds."""
    return int((path / "cpuacct.usage").read_text()) / 1e9


def cgroup_cpu_limit(path: Path) -> float | None:
    """CPUs allowed by the CFS quota (cpu.cfs_quota_us / cpu.cfs_period_us), None: none."""
    quota = int((path / "cpu.cfs_quota_us").read_text())
    period = int((path / "cpu.cfs_period_us").read_text())
    return None if quota <= 0 else quota / period


# --------------------------------------------------------------------------- manifests


def fake_vllm(port: int, *, name: str = "vllm", model: str = MODEL) -> dict[str, Any]:
    """The project's fake vLLM as a real Deployment: hostNetwork on a fixed port, so its
    address is stable across restarts; Recreate, so the old pod frees the port first."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "server",
                            "image": f"{IMAGE_REPOSITORY}:{IMAGE_TAG}",
                            "imagePullPolicy": "Never",
                            "command": ["python", "-m", "chainop.testing.fake_backend"],
                            "args": [
                                *("--host", "0.0.0.0", "--port", str(port)),
                                *("--name", name, "--served-model-name", model),
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/v1/models", "port": port},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


def chain(
    name: str,
    providers: list[dict[str, Any]],
    *,
    probe: dict[str, Any],
    recovery: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "providers": providers,
        "health": {"failureThreshold": 2, "probe": probe},
        **spec,
    }
    if recovery:
        body["selfHealing"] = {"maxRestartsPerHour": 20, "recovery": recovery}
    return {
        "apiVersion": "chainop.dev/v1alpha1",
        "kind": "ProviderChain",
        "metadata": {"name": name},
        "spec": body,
    }


def provider(name: str, url: str, tier: str = "Sovereign", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "openai",
        "endpoint": f"{url}/v1",
        "model": MODEL,
        "privacyTier": tier,
        **extra,
    }


def task(name: str, chain_name: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "chainop.dev/v1alpha1",
        "kind": "DelegatedTask",
        "metadata": {"name": name},
        "spec": {
            "chain": chain_name,
            "request": {"messages": [{"role": "user", "content": name}], "maxTokens": 8},
            **spec,
        },
    }


def control(url: str, **payload: Any) -> dict[str, Any]:
    """``POST {url}/_control`` of a fake backend."""
    request = urllib.request.Request(
        f"{url}/_control",
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        result: dict[str, Any] = json.loads(reply.read())
    return result


# --------------------------------------------------------------------------- status


def provider_state(namespace: str, chain_name: str, name: str) -> dict[str, Any]:
    obj = get_json("pchain", "-n", namespace, chain_name)
    for p in (obj.get("status") or {}).get("providers", []):
        if p.get("name") == name:
            return dict(p)
    return {}


def active_order(namespace: str, chain_name: str) -> list[str]:
    obj = get_json("pchain", "-n", namespace, chain_name)
    return list((obj.get("status") or {}).get("activeOrder") or [])


def running_pods(namespace: str, app: str) -> list[dict[str, Any]]:
    items = get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [
        p
        for p in items
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def ready_pod_uid(namespace: str, app: str) -> str | None:
    for pod in running_pods(namespace, app):
        conditions = pod["status"].get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return str(pod["metadata"]["uid"])
    return None


def peers(namespace: str, peering: str) -> dict[str, Any]:
    proc = kubectl("get", "kopfpeering", "-n", namespace, peering, "-o", "json", check=False)
    if proc.returncode != 0:
        return {}
    return dict(json.loads(proc.stdout).get("status") or {})


def lastseen(namespace: str, peering: str, who: str) -> float | None:
    info = peers(namespace, peering).get(who)
    if not isinstance(info, dict) or "lastseen" not in info:
        return None
    return datetime.fromisoformat(str(info["lastseen"])).timestamp()


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
