"""The demo on a real node (``NODE=1`` / ``--node``): the vllm backend as a pod.

Used by the scenes of ``chainop.demo_scenes`` when ``hack/node-status.sh`` says a node is
live (or ``--node`` starts one): the project's fake vLLM in the app image, run by the
``vllm`` Deployment with ``hostNetwork`` on the bridge address, and the kubelet's
replacement of the pod after chainop's restart shown with ``kubectl get pods``.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any

from chainop.demo import VLLM_MODEL, WARMUP_SECONDS, DemoError
from chainop.testing import cluster

if TYPE_CHECKING:
    from chainop.demo import Demo

#: The node's bridge address (hack/node-up.sh POD_CIDR's gateway): the host's side of the
#: pod network, where a hostNetwork backend listens at a fixed port across restarts.
NODE_BRIDGE_IP = "10.213.0.1"
NODE_IMAGE = "localhost/chainop:dev"
#: How long the old vllm pod drains after SIGTERM (as a model server finishes the requests
#: in flight) before it stops: it stays Terminating this long, next to its replacement.
NODE_DRAIN_SECONDS = 3
NODE_GRACE_SECONDS = 10

# The vllm pod's command on the node. It runs the fake vLLM as a child; on SIGTERM it
# drains for a while, then stops it. After chainop's restart (the pod sees the annotation as
# $CHAINOP_RESTARTED_AT) it first waits until the old pod has freed the port, then "loads its
# model" for a while, as a real model server does.
_NODE_WRAPPER = """
import os, signal, socket, subprocess, sys, time
host, port, seconds, drain = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
if os.environ.get("CHAINOP_RESTARTED_AT"):
    print("waiting for the old pod to free the port", flush=True)
    while True:
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            break
        except OSError:
            time.sleep(0.2)
        finally:
            probe.close()
    print(f"loading model weights ({seconds:g}s)", flush=True)
    time.sleep(seconds)
args = ["python", "-m", "chainop.testing.fake_backend", "--host", host, "--port", str(port)]
child = subprocess.Popen(args + sys.argv[5:])
def stop(signum, frame):
    print(f"SIGTERM: draining for {drain:g}s, then stopping", flush=True)
    time.sleep(drain)
    child.terminate()
signal.signal(signal.SIGTERM, stop)
sys.exit(child.wait())
"""


def node_vllm_deployment(port: int) -> dict[str, Any]:
    """The demo's vllm Deployment on a real node: the fake vLLM in the app image,
    hostNetwork on the bridge address (a fixed address across restarts, no DNS needed).
    maxSurge 1 / maxUnavailable 1: a restart starts the new pod while the old one is still
    Terminating (the new one waits for the port). No ``ports`` entry: with hostNetwork it
    would be a hostPort, and the scheduler keeps the new pod Pending while the old one
    holds it."""
    labels = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "llm-server"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "vllm"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": NODE_GRACE_SECONDS,
                    "containers": [
                        {
                            "name": "vllm",
                            "image": NODE_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": [
                                "python",
                                "-c",
                                _NODE_WRAPPER,
                                NODE_BRIDGE_IP,
                                str(port),
                                str(WARMUP_SECONDS),
                                str(NODE_DRAIN_SECONDS),
                                "--name",
                                "vllm",
                                "--served-model-name",
                                VLLM_MODEL,
                            ],
                            "env": [
                                {
                                    "name": "CHAINOP_RESTARTED_AT",
                                    "valueFrom": {
                                        "fieldRef": {
                                            "fieldPath": (
                                                "metadata.annotations['chainop.dev/restartedAt']"
                                            )
                                        }
                                    },
                                }
                            ],
                        }
                    ],
                },
            },
        },
    }


def node_live(demo: Demo) -> bool:
    """Whether ``hack/node-status.sh`` says a node is up."""
    script = demo.root / "hack" / "node-status.sh"
    try:
        result = subprocess.run(
            [str(script)], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def use_node(demo: Demo) -> bool:
    """The node when one is live; with ``--node`` (NODE=1) start it if it is not."""
    if demo.options.node is False:
        return False
    if node_live(demo):
        return True
    if demo.options.node is None:
        return False
    demo.note("NODE=1 and no live node: starting one with hack/node-up.sh (root; the first")
    demo.note("time it builds kubelet and kube-scheduler: minutes)")
    demo.run_script("node-up.sh", timeout=3600, limit="an hour")
    if not demo.options.keep_cluster:
        down = demo.root / "hack" / "node-down.sh"
        demo.on_cleanup(
            "stopping the node (this demo started it)",
            lambda: subprocess.run([str(down)], check=False, timeout=600),
        )
    return True


def vllm_pods(demo: Demo) -> list[dict[str, Any]]:
    """The vllm Deployment's pods, as kubectl lists them ([] when it cannot)."""
    result = cluster.kubectl(
        "get", "pods", "-n", demo.ns, "-l", "app.kubernetes.io/name=vllm", "-o", "json",
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(result.stdout).get("items") or []
    return items


def serving_pod(demo: Demo) -> dict[str, Any] | None:
    """The vllm pod that is Running, not being deleted, and answers HTTP."""
    live = [
        p
        for p in vllm_pods(demo)
        if not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") == "Running"
    ]
    if len(live) != 1 or len(vllm_pods(demo)) != 1:
        return None
    return live[0] if vllm_answers(demo) else None


def vllm_answers(demo: Demo) -> bool:
    import httpx

    try:
        reply = httpx.get(f"{demo.backends['vllm']}/models", timeout=1, trust_env=False)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def start_node_vllm(demo: Demo) -> None:
    demo.backends["vllm"] = f"http://{NODE_BRIDGE_IP}:{demo.vllm_port}/v1"
    try:
        pod = demo.wait("the vllm pod Running on the node, answering", lambda: serving_pod(demo))
    except DemoError as error:
        raise DemoError(
            f"{error}\n  (the pod needs the image {NODE_IMAGE} on the node: `make image`)"
        ) from error
    demo.kubectl("get", "pods", "-o", "wide")
    demo.note(f"pod {pod['metadata']['name']} (uid {pod['metadata']['uid'][:8]}…) serves")


def watch_pod_replaced(demo: Demo) -> None:
    """The kubelet at work: the old pod Terminating next to the new one Running."""
    old = demo.old_pod or {}
    old_uid = (old.get("metadata") or {}).get("uid")
    demo.note("the Deployment controller made a new ReplicaSet; the kubelet stops the old")
    demo.note(f"pod (it drains for {NODE_DRAIN_SECONDS}s after SIGTERM, Terminating) and starts")
    demo.note("the new one, which waits for the port, then loads its model:")

    shown: set[tuple[tuple[str, str], ...]] = set()

    def summary() -> tuple[tuple[str, str], ...]:
        return tuple(
            (
                p["metadata"]["name"],
                "Terminating"
                if p["metadata"].get("deletionTimestamp")
                else str((p.get("status") or {}).get("phase")),
            )
            for p in vllm_pods(demo)
        )

    def replaced() -> dict[str, Any] | None:
        # Each new picture of the pods once (kubectl's own output): the old pod
        # Terminating next to the new one Running, then the new one alone.
        now = summary()
        if now and now not in shown:
            shown.add(now)
            demo.kubectl("get", "pods", "-o", "wide")
        pod = serving_pod(demo)
        return pod if pod is not None and pod["metadata"]["uid"] != old_uid else None

    new = demo.wait("the new vllm pod alone, serving", replaced)
    if not any({"Terminating", "Running"} <= {state for _, state in picture} for picture in shown):
        demo.note("(the old pod was gone before a listing caught it Terminating)")
    demo.say(
        f"  ✓ [{demo.elapsed():6.1f}s] vllm backend restarted by the kubelet (pod "
        f"{old.get('metadata', {}).get('name')} -> {new['metadata']['name']}: a new pod "
        "UID, a new process), serving again"
    )
