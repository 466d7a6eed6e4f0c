"""We test these aspects: the operator as a pod, installed with helm, on the real node.

* ``helm install --wait`` of charts/chainop (the local image, namespaced RBAC watching one
  test namespace) gets the operator pod Ready; figure: seconds from helm install to the
  first chain Ready;
* the pod serves ``/metrics`` and kopf's ``/healthz`` (the chart's probes), reached from the
  host at the pod IP, and a ProviderChain + a DelegatedTask end to end: the backend is the
  project's fake vLLM running as a pod of the same image, reached by its pod IP (no cluster
  DNS here; pod to pod by IP is what a Service would route to on a real cluster);
* the chart's hardened securityContext, read back from the running container
  (``kubectl exec``): a non-root uid, a read-only root filesystem, ``NoNewPrivs: 1``,
  ``Seccomp: 2`` (filter mode: RuntimeDefault), no effective capability, and the cgroup
  memory limit equal to the chart's ``resources.limits.memory``;
* ``helm upgrade`` that rolls the pod (a changed pod annotation; ``Recreate``) in the middle
  of a burst of 50 DelegatedTasks against a slow backend loses none: all 50 Succeed;
* ``helm uninstall`` leaves no chainop object behind but the CRDs (the list of what was
  checked is printed).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from chainop.testing import cluster as cluster_helpers
from tests.e2e.kit import TASKS, Kit
from tests.node import onnode
from tests.node.conftest import Node, report

pytestmark = pytest.mark.node

MODEL = "qwen2.5-7b-instruct"
BURST = 50
CHART_VALUES = yaml.safe_load((onnode.CHART / "values.yaml").read_text())
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert match, text
    return int(match.group(1)) * UNITS.get(match.group(2) or "", 1)


@pytest.fixture
def namespaces(node: Node) -> Iterator[tuple[str, str]]:
    """(watched namespace, release namespace); the release namespace is helm's to create."""
    watched = onnode.create_namespace(node, "n1-op")
    release_ns = f"n1-system-{uuid.uuid4().hex[:6]}"
    yield watched, release_ns
    onnode.delete_namespace(node, watched)
    onnode.delete_namespace(node, release_ns)


def exec_in(node: Node, namespace: str, pod: str, script: str) -> tuple[int, str]:
    proc = node.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", script, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def phases(kit: Kit) -> dict[str, str]:
    items = kit.api.custom.list_namespaced_custom_object(
        "chainop.dev", "v1alpha1", kit.namespace, TASKS
    )["items"]
    return {t["metadata"]["name"]: (t.get("status") or {}).get("phase", "") for t in items}


def leftovers(node: Node, kind: str, *scope: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Names of ``kind`` objects in a scope (``-n NS`` or cluster-wide) other than ``keep``."""
    proc = node.kubectl("get", kind, *scope, "-o", "name", "--ignore-not-found", check=False)
    assert proc.returncode == 0, proc.stderr
    names = [line.split("/", 1)[-1] for line in proc.stdout.split()]
    return [n for n in names if n not in keep]


def test_operator_pod_on_the_node(node: Node, namespaces: tuple[str, str], tmp_path: Path, capsys):
    watched, release_ns = namespaces
    release = f"chainop-n1-{uuid.uuid4().hex[:4]}"
    helm = onnode.Helm(node.kubeconfig, tmp_path / "helm")
    api = cluster_helpers.connect(node.kubeconfig)
    kit = Kit(api, watched)
    lines: list[str] = []
    problems: list[str] = []
    installed = False
    stack = contextlib.ExitStack()
    try:
        # The backend: the fake vLLM as a pod of the app image, reached by its pod IP.
        backend = onnode.backend_deployment(
            "vllm",
            onnode.fake_backend_command(8000, "vllm", MODEL, host="0.0.0.0"),
            port=8000,
            host_network=False,
        )
        url = onnode.serve(node, watched, backend, 8000)

        # 1. helm install --wait -> the operator Ready -> a chain Ready.
        t0 = time.monotonic()
        install_seconds = onnode.install_operator(helm, release, release_ns, watched)
        installed = True
        kit.create_chain(
            "default",
            [kit.provider("vllm", url, "Sovereign", model=MODEL, backend={"deployment": "vllm"})],
            health=onnode.PROBING,
        )
        kit.chain_ready("default", timeout=60)
        ready_seconds = time.monotonic() - t0
        lines.append(
            f"helm install --wait: {install_seconds:.1f} s; helm install -> chain Ready: "
            f"{ready_seconds:.1f} s"
        )
        (pod,) = [
            p for p in onnode.operator_pods(node, release, release_ns) if onnode.running_pod(p)
        ]
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

        # 2. /metrics and /healthz from the host, at the pod IP.
        status, metrics = onnode.http(
            "GET", f"http://{ip}:{CHART_VALUES['metrics']['port']}/metrics"
        )
        assert status == 200, metrics
        assert "chainop_" in metrics
        status, health = onnode.http("GET", f"http://{ip}:{CHART_VALUES['healthPort']}/healthz")
        assert status == 200, health
        lines.append(f"pod {name} ({ip}): /metrics 200 ({len(metrics)} bytes), /healthz 200")

        # 3. A DelegatedTask end to end.
        kit.create_task("hello", chain="default", content="hi")
        task = kit.wait_task("hello", timeout=60)
        assert task["phase"] == "Succeeded", task
        assert task["result"]["provider"] == "vllm"
        lines.append(f"task hello: Succeeded on vllm: {task['result']['text'][:50]!r}")

        # 3b. The chart's admission webhook, called by the API server at the operator pod
        # (its Service's endpoint; the certificate helm made): a chain the operator could
        # never run is refused at apply, a task naming a missing chain is warned about.
        bad_chain = {
            "apiVersion": "chainop.dev/v1alpha1",
            "kind": "ProviderChain",
            "metadata": {"name": "twice", "namespace": watched},
            "spec": {
                "providers": [
                    kit.provider("vllm", url, "Sovereign", model=MODEL),
                    kit.provider("vllm", url, "Sovereign", model=MODEL),
                ]
            },
        }
        denied = node.kubectl("apply", "-f", "-", input=json.dumps(bad_chain), check=False)
        assert denied.returncode != 0, denied.stdout
        assert "denied the request" in denied.stderr, denied.stderr
        assert "duplicate provider name 'vllm'" in denied.stderr, denied.stderr
        lost_task = {
            "apiVersion": "chainop.dev/v1alpha1",
            "kind": "DelegatedTask",
            "metadata": {"name": "lost", "namespace": watched},
            "spec": {"chain": "nowhere", "request": {"messages": [{"content": "hi"}]}},
        }
        warned = node.kubectl("apply", "-f", "-", input=json.dumps(lost_task), check=False)
        assert warned.returncode == 0, warned.stderr
        assert "Warning:" in warned.stderr, warned.stderr
        assert "nowhere" in warned.stderr, warned.stderr
        node.kubectl("delete", "delegatedtask", "lost", "-n", watched, "--wait=false")
        lines.append(
            "admission at the pod (chart webhook, helm's certificate): "
            f"{denied.stderr.strip().splitlines()[-1][:110]!r}; "
            f"{warned.stderr.strip().splitlines()[0][:110]!r}"
        )

        # 4. The hardened securityContext, read back from the running container.
        code, uid = exec_in(node, release_ns, name, "id -u")
        assert code == 0, uid
        assert uid != "0"
        assert uid == str(CHART_VALUES["securityContext"]["runAsUser"])
        code, written = exec_in(node, release_ns, name, "echo x > /chainop-probe")
        assert code != 0, "the root filesystem is writable"
        assert "Read-only file system" in written, written
        code, proc_status = exec_in(node, release_ns, name, "cat /proc/1/status")
        assert code == 0, proc_status
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in proc_status.splitlines())
        )
        assert fields["NoNewPrivs"] == "1", fields
        assert fields["Seccomp"] == "2", fields  # SECCOMP_MODE_FILTER: RuntimeDefault
        assert int(fields["CapEff"], 16) == 0, fields
        assert int(fields["CapPrm"], 16) == 0, fields
        code, limit = exec_in(
            node, release_ns, name,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
            " || cat /sys/fs/cgroup/memory.max",
        )  # fmt: skip
        assert code == 0, limit
        chart_limit = quantity_bytes(CHART_VALUES["resources"]["limits"]["memory"])
        assert int(limit) == chart_limit
        lines.append(
            f"read back from the container: uid {uid}, write to / -> {written.splitlines()[0]!r},"
            f" NoNewPrivs {fields['NoNewPrivs']}, Seccomp {fields['Seccomp']}, CapEff "
            f"{fields['CapEff']}, cgroup memory limit {int(limit)} = "
            f"{CHART_VALUES['resources']['limits']['memory']}"
        )

        # 5. helm upgrade (rolls the pod) during a burst of 50 tasks against a slow backend.
        onnode.control(url, delay_ms=300)
        created: list[str] = []

        def burst() -> None:
            for i in range(BURST):
                kit.create_task(f"burst-{i:02d}", chain="default", content=f"task {i}")
                created.append(f"burst-{i:02d}")
                time.sleep(0.1)

        old_log = tmp_path / "operator-before-upgrade.log"
        log_file = stack.enter_context(old_log.open("w"))
        follower = subprocess.Popen(
            [
                cluster_helpers.kubectl_path(), "--kubeconfig", str(node.kubeconfig), "logs",
                "-f", "-n", release_ns, pod["metadata"]["name"],
            ],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(follower.kill)
        creator = threading.Thread(target=burst, daemon=True)
        creator.start()
        onnode.wait_for(lambda: len(created) >= 10, timeout=30, what="10 tasks created")
        t_up = time.monotonic()
        helm(
            "upgrade", release, str(onnode.CHART), "--namespace", release_ns, "--reuse-values",
            "--set-string", f"podAnnotations.chainop-n1/rolled={uuid.uuid4().hex[:8]}",
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        upgrade_seconds = time.monotonic() - t_up
        follower.wait(timeout=30)  # the old pod is gone: its log ends
        creator.join(timeout=60)
        assert len(created) == BURST
        (new_pod,) = [
            p for p in onnode.operator_pods(node, release, release_ns) if onnode.running_pod(p)
        ]
        assert onnode.uid(new_pod) != onnode.uid(pod), "helm upgrade rolled the operator pod"

        def all_final() -> bool:
            found = {k: v for k, v in phases(kit).items() if k.startswith("burst-")}
            return len(found) == BURST and all(v in ("Succeeded", "Failed") for v in found.values())

        onnode.wait_for(
            all_final, timeout=120, what=f"all {BURST} tasks final",
            detail=lambda: sorted(phases(kit).items()),
        )  # fmt: skip
        burst_phases = {k: v for k, v in phases(kit).items() if k.startswith("burst-")}
        failed = {
            k: kit.get(TASKS, k).get("status") for k, v in burst_phases.items() if v != "Succeeded"
        }
        if failed:
            about = [
                line
                for line in old_log.read_text().splitlines()
                if any(name in line for name in failed) or re.search(r"(?i)stop|shut|signal", line)
            ]
            # Recorded, and the uninstall checks still run; the test fails at the end.
            problems.append(
                f"{len(failed)} of {BURST} tasks failed across the upgrade: {failed}\n"
                f"old operator pod {pod['metadata']['name']}, its log about them and its "
                "shutdown:\n" + "\n".join(about[-40:])
            )
        _, stats = onnode.http("GET", f"{url}/_stats")
        calls = json.loads(stats)["requests"].get("openai", 0) if stats.startswith("{") else "?"
        lines.append(
            f"helm upgrade --wait during a burst of {BURST} tasks: {upgrade_seconds:.1f} s, pod "
            f"{pod['metadata']['name']} -> {new_pod['metadata']['name']}; "
            f"{BURST - len(failed)}/{BURST} Succeeded (the backend got {calls} chat calls "
            f"for the {BURST + 1} tasks)"
        )

        # 6. helm uninstall leaves nothing of chainop's but the CRDs.
        helm("uninstall", release, "--namespace", release_ns, "--wait", "--timeout", "120s")
        installed = False
        onnode.wait_for(
            lambda: not onnode.operator_pods(node, release, release_ns),
            timeout=60, what="the operator pod gone",
        )  # fmt: skip
        in_release = ("-n", release_ns)
        in_watched = ("-n", watched)
        checks: list[tuple[str, list[str]]] = [
            ("deployments", leftovers(node, "deployments", *in_release)),
            ("replicasets", leftovers(node, "replicasets", *in_release)),
            ("pods", leftovers(node, "pods", *in_release)),
            ("serviceaccounts", leftovers(node, "serviceaccounts", *in_release, keep=("default",))),
            ("roles", leftovers(node, "roles", *in_release) + leftovers(node, "roles", *in_watched)),  # noqa: E501
            (
                "rolebindings",
                leftovers(node, "rolebindings", *in_release)
                + leftovers(node, "rolebindings", *in_watched),
            ),
            ("services", leftovers(node, "services", *in_release)),
            ("endpointslices", leftovers(node, "endpointslices", *in_release)),
            ("configmaps", leftovers(node, "configmaps", *in_release, keep=("kube-root-ca.crt",))),
            ("secrets (helm release records)", leftovers(node, "secrets", *in_release)),
            (
                "kopfpeerings",
                leftovers(node, "kopfpeerings.kopf.dev", *in_release)
                + leftovers(node, "kopfpeerings.kopf.dev", *in_watched),
            ),
            (
                "clusterkopfpeerings of the release",
                [
                    n
                    for n in leftovers(node, "clusterkopfpeerings.kopf.dev")
                    if release in n
                ],
            ),
            (
                "clusterroles/clusterrolebindings of the release",
                [
                    n
                    for kind in ("clusterroles", "clusterrolebindings")
                    for n in leftovers(node, kind)
                    if release in n
                ],
            ),
            (
                "anything labelled app.kubernetes.io/instance=<release>",
                leftovers(
                    node, "all,configmaps,secrets,serviceaccounts,roles,rolebindings",
                    "-A", "-l", f"app.kubernetes.io/instance={release}",
                ),
            ),
        ]  # fmt: skip
        left = {what: names for what, names in checks if names}
        assert not left, f"helm uninstall left chainop objects behind: {left}"
        crds = leftovers(node, "crds")
        for crd in ("providerchains.chainop.dev", "delegatedtasks.chainop.dev"):
            assert crd in crds, f"the CRD {crd} was removed"
        lines.append(
            "helm uninstall left nothing behind; checked: "
            + ", ".join(what for what, _ in checks)
            + "; the CRDs stay"
        )
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
    finally:
        if installed:
            (tmp_path / "operator.log").write_text(onnode.operator_log(node, release, release_ns))
            helm("uninstall", release, "--namespace", release_ns, "--wait", "--timeout", "60s")
        api.close()
        stack.close()
        if lines:
            report(capsys, "the operator as a pod on the node (helm):", lines)
