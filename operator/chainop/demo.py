"""The chainop demo (``make demo``): from a healthy chain to self-healing, on a real API server.

Everything is set up here and torn down again, nothing to prepare:

1. the local control plane (``hack/cluster-up.sh``: etcd + kube-apiserver +
   kube-controller-manager on 127.0.0.1; the first run builds them, minutes) — reused if
   it already runs, and stopped at the end only if this demo started it;
2. the CRDs, a namespace (``chainop-demo``), the vLLM Deployment and Service of
   ``examples/vllm-deployment.yaml``;
3. fake LLM backends (real HTTP servers on 127.0.0.1 speaking the OpenAI, Anthropic and
   jobs protocols): the in-cluster "vllm" one is bound by the BackendSupervisor to the
   real ``vllm`` Deployment (the supervisor plays kubelet: when chainop patches the pod
   template, the process is restarted), the OpenAI, Anthropic and batch-gateway stand-ins
   run on ports of their own and check the demo API keys;
4. the example chains (``examples/provider-chain.yaml``, ``examples/jobs-chain.yaml``)
   pointed at those backends, with probes and recovery shortened so that the story takes
   seconds (probe every 1 s, Unhealthy after 3 failed probes, recovery probes from 1 s
   doubling up to 8 s, where the examples say 15 s, 3, and 30-300 s); the Secrets of
   ``examples/secrets.yaml`` with demo keys;
5. the operator itself, ``python -m chainop run -n chainop-demo``, as a subprocess (its log
   goes to ``.cache/demo/operator.log``).

Then it narrates, with real ``kubectl`` output: the chains turn Ready; every task of
``examples/tasks/`` is routed by its rule; the in-cluster backend breaks (HTTP 503) and a
task fails over to OpenAI; probes fail, vllm turns Unhealthy and is Excluded; chainop
restarts the ``vllm`` Deployment; the backend comes back, is restored at the head, Healthy,
and takes local work again; the Events tell the same story.

**On a real node** (``hack/node-up.sh``: kubelet + containerd; used when
``hack/node-status.sh`` says one is live, or with ``NODE=1`` / ``--node``, which starts it
if needed) the in-cluster backend is a real pod instead of a supervised process: the
project's fake vLLM in the app image ``localhost/chainop:dev`` (``make image``), run by the
``vllm`` Deployment on the node with ``hostNetwork`` on the bridge address 10.213.0.1 (the
node has no cluster DNS, and a chain's endpoint must survive the pod's replacement). When
chainop patches the Deployment, ``kubectl get pods`` shows the real thing: the old pod
Terminating, the new one Running. ``NODE=0`` / ``--no-node`` forces the pod-less demo.

Run it with ``make demo`` (``ARGS=--keep-cluster`` leaves the control plane running) or
``python -m chainop.demo --help``. Ctrl-C cleans up. Exit code 0 on success, 1 when a
step failed (the error says which and where the logs are), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml

from chainop import demo_llama
from chainop.core.models import GROUP, VERSION
from chainop.testing import cluster
from chainop.testing.cluster import ClusterError, KubeApi, ProcessRunner
from chainop.testing.fake_backend import FakeBackendControl
from chainop.testing.supervisor import BackendSupervisor, SupervisorError, stand_in

__all__ = ["DemoError", "Options", "build_parser", "demo_chain", "main"]

T = TypeVar("T")

DEMO_LABEL = "chainop.dev/demo"
STEPS = 12

#: Health settings of the demo chains: the examples' values, shortened to seconds.
DEMO_HEALTH: dict[str, Any] = {
    "failureThreshold": 2,
    "transientRetries": 1,
    "cooldown": {"initialSeconds": 2, "maxSeconds": 10},
    "probe": {"intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 3},
}
DEMO_RECOVERY: dict[str, Any] = {"initialSeconds": 1, "maxSeconds": 8}
#: How long chainop treats a restart it ordered as in flight (no second restart
#: meanwhile): above the stand-in backend's start-up time, as for a real model server.
DEMO_RESTART_GRACE = 10
#: The demo's API keys (the fake backends refuse any other with HTTP 401).
DEMO_KEYS = {"openai-key": "sk-demo-openai-0000", "anthropic-key": "sk-ant-demo-0000"}
#: The model the example chain asks of its in-cluster vllm provider.
VLLM_MODEL = "qwen2.5-7b-instruct"
#: How long the restarted vllm backend "loads its model" before it serves (a real one: minutes).
WARMUP_SECONDS = 2.0

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

ROUTES_TO = re.compile(r'^# Routes to: (?P<providers>.+?) \(reason: "(?P<reason>.*)"\)$', re.M)

# Runs the fake backend; when the marker exists (every start but the first), it sleeps
# first, as a real model server loads its weights before it listens.
_WARMUP_WRAPPER = """
import os, sys, time
marker, seconds = sys.argv[1], float(sys.argv[2])
if os.path.exists(marker):
    print(f"loading model weights ({seconds:g}s)", flush=True)
    time.sleep(seconds)
else:
    open(marker, "w").close()
args = [sys.executable, "-m", "chainop.testing.fake_backend", *sys.argv[3:]]
os.execv(sys.executable, args)
"""


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which, and where to look."""


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


@dataclass(frozen=True)
class Options:
    """What the command line chose."""

    namespace: str
    keep_cluster: bool
    log_dir: Path
    wait_timeout: float
    #: True: on the real node (started if needed); False: pod-less; None: the node if live.
    node: bool | None = None


# --------------------------------------------------------------------- pure helpers


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (empty ones left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def demo_chain(doc: dict[str, Any], endpoints: dict[str, str]) -> dict[str, Any]:
    """An example ProviderChain pointed at the demo's backends, with fast health settings.

    ``endpoints`` maps provider names to base URLs; every provider of the chain must have
    one. Everything else (order, tiers, models, keys, backends) stays as in the example.
    """
    out = copy.deepcopy(doc)
    spec = out["spec"]
    for provider in spec["providers"]:
        try:
            provider["endpoint"] = endpoints[provider["name"]]
        except KeyError:
            raise DemoError(f"no demo backend for provider {provider['name']!r}") from None
    mode = (spec.get("health", {}).get("probe") or {}).get("mode")
    spec["health"] = copy.deepcopy(DEMO_HEALTH)
    if mode:
        spec["health"]["probe"]["mode"] = mode
    spec.setdefault("selfHealing", {})["recovery"] = dict(DEMO_RECOVERY)
    spec["selfHealing"]["restartGraceSeconds"] = DEMO_RESTART_GRACE
    return out


def demo_secret(doc: dict[str, Any]) -> dict[str, Any]:
    """An example Secret with its placeholder replaced by the demo key."""
    out = copy.deepcopy(doc)
    name = out["metadata"]["name"]
    out["stringData"] = {key: DEMO_KEYS[name] for key in out["stringData"]}
    return out


def routing_claim(path: Path) -> tuple[list[str], str] | None:
    """The ``# Routes to: A, B (reason: "...")`` comment of an example task."""
    match = ROUTES_TO.search(path.read_text())
    if match is None:
        return None
    return [p.strip() for p in match["providers"].split(",")], match["reason"]


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


def dump(docs: Sequence[dict[str, Any]]) -> str:
    """Documents as one multi-document YAML text."""
    return yaml.safe_dump_all(list(docs), sort_keys=False)


# --------------------------------------------------------------------- the demo


class Demo:
    """One run of the demo: the steps, the waits, and the cleanup."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ns = options.namespace
        self.root = cluster.repo_root()
        self.examples = self.root / "examples"
        self.t0 = time.monotonic()
        self.step_no = 0
        self.cleanups: list[tuple[str, Callable[[], object]]] = []
        self.api: KubeApi | None = None
        self.supervisor: BackendSupervisor | None = None
        self.operator: ProcessRunner | None = None
        self.backends: dict[str, str] = {}  # provider name -> base URL
        self.chain_names: list[str] = []
        self.started_cluster = False
        self.metrics_url = ""
        self.old_pid: int | None = None
        self.node = False  # decided in control_plane()
        self.vllm_port = 0
        self.old_pod: dict[str, Any] | None = None

    # ----------------------------------------------------------------- output

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def note(self, text: str) -> None:
        self.say(f"  {text}")

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say(f"\n[{self.elapsed():6.1f}s] == {self.step_no}/{STEPS} {title}")

    def kubectl(self, *args: str, input: str | None = None, namespaced: bool = True) -> str:
        """Run kubectl against the demo namespace, echo the command and its output."""
        full = [*args, "-n", self.ns] if namespaced else list(args)
        self.say("  $ kubectl " + " ".join(shlex.quote(a) for a in full))
        try:
            result = cluster.kubectl(*full, input=input, timeout=self.options.wait_timeout)
        except (ClusterError, subprocess.TimeoutExpired) as error:
            raise DemoError(str(error)) from error
        for line in result.stdout.rstrip("\n").splitlines():
            self.say(f"    {line}")
        return result.stdout

    def wait(self, what: str, check: Callable[[], T | None], *, timeout: float | None = None) -> T:
        """Poll ``check()`` until it returns something other than None (or False)."""
        limit = timeout or self.options.wait_timeout
        deadline = time.monotonic() + limit
        while True:
            value = check()
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                raise DemoError(
                    f"timed out after {limit:.0f}s waiting for {what}{self.diagnosis()}"
                )
            if self.operator is not None and not self.operator.running:
                raise DemoError(
                    f"the operator exited ({self.operator.returncode}) while waiting for "
                    f"{what}; see {self.operator.log_path}"
                )
            time.sleep(0.1)

    def diagnosis(self) -> str:
        """What the chains look like now, for error messages."""
        lines = []
        for name in self.chain_names:
            try:
                status = self.chain_status(name)
            except Exception as error:  # a diagnosis must not hide the real error
                lines.append(f"chain {name}: unreadable ({error})")
                continue
            ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
            condition = ready[0] if ready else {}
            states = ", ".join(
                f"{p.get('name')}={p.get('state')}" for p in status.get("providers") or []
            )
            lines.append(
                f"chain {name}: Ready={condition.get('status', '?')} "
                f"({condition.get('reason', '')}: {condition.get('message', '')}); "
                f"HEALTHY {status.get('healthySummary', '?')}; {states}"
            )
        return "".join(f"\n  {line}" for line in lines)

    # ----------------------------------------------------------------- reading

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes import client

        assert self.api is not None
        try:
            obj: dict[str, Any] = self.api.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, plural, name
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise DemoError(f"reading {plural}/{name}: {error.reason}") from error
        return obj

    def chain_status(self, name: str) -> dict[str, Any]:
        obj = self.get("providerchains", name) or {}
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def provider(self, chain: str, name: str) -> dict[str, Any]:
        for entry in self.chain_status(chain).get("providers") or []:
            if entry.get("name") == name:
                found: dict[str, Any] = entry
                return found
        return {}

    def wait_task(self, name: str) -> dict[str, Any]:
        """Wait until a task is Succeeded or Failed; return its status."""
        return self.wait(f"task {name} to finish", lambda: self.finished_task(name))

    def finished_task(self, name: str) -> dict[str, Any] | None:
        status = (self.get("delegatedtasks", name) or {}).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            result: dict[str, Any] = status
            return result
        return None

    # ----------------------------------------------------------------- run

    def run(self) -> int:
        """All the steps, then the cleanup, whatever happened."""
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupted)
        code = 0
        try:
            self.say(f"chainop demo: namespace {self.ns}, logs in {self.options.log_dir}")
            self.control_plane()
            self.crds_and_namespace()
            self.start_backends()
            self.start_operator()
            self.apply_chains()
            self.route_tasks()
            self.break_backend()
            self.watch_exclusion()
            self.watch_restart()
            self.watch_recovery()
            demo_llama.real_model_server(self)
            self.show_events()
            self.say(f"\n[{self.elapsed():6.1f}s] demo complete: every step shown above.")
        except DemoError as error:
            self.say(f"\n[{self.elapsed():6.1f}s] DEMO FAILED: {error}")
            self.say(f"  logs: {self.options.log_dir} (operator.log, backends/)")
            code = 1
        except KeyboardInterrupt:
            self.say(f"\n[{self.elapsed():6.1f}s] interrupted: cleaning up")
            code = 130
        finally:
            self.cleanup()
            signal.signal(signal.SIGTERM, previous)
        return code

    def on_cleanup(self, what: str, action: Callable[[], object]) -> None:
        self.cleanups.append((what, action))

    def cleanup(self) -> None:
        """Undo every step that was done, newest first; Ctrl-C cannot interrupt it."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.cleanups:
                self.say(f"\n[{self.elapsed():6.1f}s] == cleaning up")
            while self.cleanups:
                what, action = self.cleanups.pop()
                self.note(what)
                try:
                    action()
                except Exception as error:  # go on: leave as little behind as possible
                    self.note(f"  (failed: {error})")
            if self.started_cluster and self.options.keep_cluster:
                self.note(
                    "leaving the control plane running (--keep-cluster); stop it with "
                    "`make cluster-down`"
                )
            elif not self.started_cluster:
                self.note("the control plane was already running: left running")
            self.say(f"[{self.elapsed():6.1f}s] done")
        finally:
            signal.signal(signal.SIGINT, previous)

    # ----------------------------------------------------------------- steps

    def control_plane(self) -> None:
        self.step("Local control plane (etcd + kube-apiserver + kube-controller-manager)")
        self.node = self.use_node()
        if cluster.cluster_running():
            self.note(f"already running (KUBECONFIG={cluster.kubeconfig_path()})")
        else:
            self.note("not running: starting it with hack/cluster-up.sh (the very first time, it")
            self.note("builds kube-apiserver and kube-controller-manager first: several minutes)")
            self.started_cluster = True
            if not self.options.keep_cluster:
                self.on_cleanup(
                    "stopping the control plane (this demo started it)", cluster.stop_cluster
                )
            script = self.root / "hack" / "cluster-up.sh"
            try:
                code = subprocess.run([str(script)], check=False, timeout=1800).returncode
            except subprocess.TimeoutExpired as error:
                raise DemoError(f"{script} did not finish within 30 minutes") from error
            if code != 0:
                raise DemoError(f"{script} failed ({code}); see its output above")
        try:
            kubeconfig = cluster.ensure_cluster(timeout=120)
        except ClusterError as error:
            raise DemoError(str(error)) from error
        self.api = cluster.connect(kubeconfig)
        self.on_cleanup("closing the API connection", self.api.close)
        self.kubectl("version", namespaced=False)
        if self.node:
            self.note("a real node is up (kubelet + containerd): the backend runs as a pod")
            self.kubectl("get", "nodes", "-o", "wide", namespaced=False)
        else:
            self.note("no node (`make node-up` adds one; NODE=1 makes the demo start it):")
            self.note("the pod-less demo, a supervised process stands in for the vllm pod")

    def node_live(self) -> bool:
        script = self.root / "hack" / "node-status.sh"
        try:
            result = subprocess.run(
                [str(script)], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def use_node(self) -> bool:
        """The node when one is live; with ``--node`` (NODE=1) start it if it is not."""
        if self.options.node is False:
            return False
        if self.node_live():
            return True
        if self.options.node is None:
            return False
        script = self.root / "hack" / "node-up.sh"
        self.note("NODE=1 and no live node: starting one with hack/node-up.sh (root; the first")
        self.note("time it builds kubelet and kube-scheduler: minutes)")
        try:
            code = subprocess.run([str(script)], check=False, timeout=3600).returncode
        except subprocess.TimeoutExpired as error:
            raise DemoError(f"{script} did not finish within an hour") from error
        if code != 0:
            raise DemoError(f"{script} failed ({code}); see its output above")
        if not self.options.keep_cluster:
            down = self.root / "hack" / "node-down.sh"
            self.on_cleanup(
                "stopping the node (this demo started it)",
                lambda: subprocess.run([str(down)], check=False, timeout=600),
            )
        return True

    def crds_and_namespace(self) -> None:
        self.step("CRDs and the demo namespace")
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(self.root / "crds"),
            namespaced=False,
        )
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/providerchains.chainop.dev",
            "crd/delegatedtasks.chainop.dev",
            namespaced=False,
        )
        self.fresh_namespace()
        self.on_cleanup(f"deleting namespace {self.ns}", self.delete_namespace)
        if self.node:
            self.vllm_port = cluster.free_port()
            self.note("examples/vllm-deployment.yaml wants a GPU and vllm/vllm-openai from a")
            self.note("registry; in its place the project's fake vLLM, as a real pod of the app")
            self.note(f"image, hostNetwork on the bridge address {NODE_BRIDGE_IP}:{self.vllm_port}")
            self.note("(the node has no cluster DNS for the example's Service name vllm:8000)")
            deployment = node_vllm_deployment(self.vllm_port)
            self.kubectl("apply", "-f", "-", input=dump([deployment]))
            return
        docs = load_documents(self.examples / "vllm-deployment.yaml")
        docs = [stand_in(doc) if doc.get("kind") == "Deployment" else doc for doc in docs]
        self.note("examples/vllm-deployment.yaml, its pod pinned to no node (a nodeSelector")
        self.note("no node has), so that it stays Pending even if a node is up:")
        self.kubectl("apply", "-f", "-", input=dump(docs))
        self.note("(no kubelet runs it: the BackendSupervisor runs its stand-in process")
        self.note(" instead — next step)")

    def fresh_namespace(self) -> None:
        found = cluster.kubectl("get", "namespace", self.ns, "-o", "json", check=False)
        if found.returncode == 0:
            labels = (yaml.safe_load(found.stdout).get("metadata") or {}).get("labels") or {}
            if labels.get(DEMO_LABEL) != "true":
                raise DemoError(
                    f"namespace {self.ns} exists and was not made by the demo; "
                    "choose another with --namespace"
                )
            self.note(f"namespace {self.ns} is left over from an earlier run: deleting it")
            self.delete_namespace()
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.ns, "labels": {DEMO_LABEL: "true"}},
        }
        self.kubectl("create", "-f", "-", input=dump([namespace]), namespaced=False)

    def delete_namespace(self) -> None:
        result = cluster.kubectl(
            "delete",
            "namespace",
            self.ns,
            "--ignore-not-found",
            "--wait=true",
            f"--timeout={int(self.options.wait_timeout)}s",
            check=False,
            timeout=self.options.wait_timeout + 10,
        )
        if result.returncode != 0:
            raise DemoError(f"namespace {self.ns} not deleted: {result.stderr.strip()}")

    def start_backends(self) -> None:
        if self.node:
            self.step("Fake LLM backends: vllm as a pod on the node, the cloud APIs on 127.0.0.1")
            self.start_node_vllm()
            started = [
                (
                    "vllm",
                    f"http://{NODE_BRIDGE_IP}:{self.vllm_port}",
                    "openai protocol, a pod of Deployment vllm",
                )
            ]
        else:
            self.step("Fake LLM backends (real HTTP servers on 127.0.0.1)")
            started = self.start_supervised_vllm()
        for name, kind, suffix in (
            ("openai", "openai protocol, stands in for api.openai.com", "/v1"),
            ("anthropic", "anthropic protocol, stands in for api.anthropic.com", ""),
            ("batch-gateway", "jobs protocol (POST /jobs, GET /jobs/{id})", ""),
        ):
            url = self.start_fake(name)
            self.backends[name] = url + suffix
            started.append((name, url, kind))
        FakeBackendControl(self.backends["openai"].removesuffix("/v1")).set(
            api_key=DEMO_KEYS["openai-key"], models=["gpt-4o-mini"]
        )
        FakeBackendControl(self.backends["anthropic"]).set(
            api_key=DEMO_KEYS["anthropic-key"], models=["claude-3-5-haiku-latest"]
        )
        # The jobs gateway lists the model the batch chain asks of it (a List probe checks).
        FakeBackendControl(self.backends["batch-gateway"]).set(models=["llama-3.1-70b-instruct"])
        for name, url, kind in started:
            self.note(f"{name:<14} {url:<24} {kind}")
        if self.node:
            self.note("when the Deployment's pod template changes, the kubelet replaces the pod;")
            self.note(f"once restarted it takes {WARMUP_SECONDS:g}s to 'load its model'.")
            return
        assert self.supervisor is not None
        pid = self.supervisor.pid(self.ns, "vllm")
        self.note(f"vllm runs under the BackendSupervisor (pid {pid}),")
        self.note("which restarts it whenever the Deployment's pod template changes, as a kubelet")
        self.note(f"would; once restarted it takes {WARMUP_SECONDS:g}s to 'load its model'.")

    # ----------------------------------------------------------------- the node's vllm pod

    def vllm_pods(self) -> list[dict[str, Any]]:
        result = cluster.kubectl(
            "get", "pods", "-n", self.ns, "-l", "app.kubernetes.io/name=vllm", "-o", "json",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            return []
        items: list[dict[str, Any]] = json.loads(result.stdout).get("items") or []
        return items

    def serving_pod(self) -> dict[str, Any] | None:
        """The vllm pod that is Running, not being deleted, and answers HTTP."""
        live = [
            p
            for p in self.vllm_pods()
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") == "Running"
        ]
        if len(live) != 1 or len(self.vllm_pods()) != 1:
            return None
        return live[0] if self.vllm_answers() else None

    def vllm_answers(self) -> bool:
        import httpx

        try:
            reply = httpx.get(f"{self.backends['vllm']}/models", timeout=1, trust_env=False)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    def start_node_vllm(self) -> None:
        self.backends["vllm"] = f"http://{NODE_BRIDGE_IP}:{self.vllm_port}/v1"
        try:
            pod = self.wait("the vllm pod Running on the node, answering", self.serving_pod)
        except DemoError as error:
            raise DemoError(
                f"{error}\n  (the pod needs the image {NODE_IMAGE} on the node: `make image`)"
            ) from error
        self.kubectl("get", "pods", "-o", "wide")
        self.note(f"pod {pod['metadata']['name']} (uid {pod['metadata']['uid'][:8]}…) serves")

    def start_supervised_vllm(self) -> list[tuple[str, str, str]]:
        log_dir = self.options.log_dir
        self.supervisor = BackendSupervisor(cluster.kubeconfig_path(), log_dir=log_dir / "backends")
        self.on_cleanup("stopping the supervisor and the vllm backend", self.close_supervisor)
        port = cluster.free_port()
        command = [
            sys.executable,
            "-c",
            _WARMUP_WRAPPER,
            str(log_dir / "backends" / "vllm.started"),
            str(WARMUP_SECONDS),
            "--port",
            str(port),
            "--name",
            "vllm",
            # As `vllm serve --served-model-name`: the listing must name the chain's model,
            # or chainop's List probe reports model drift.
            "--served-model-name",
            VLLM_MODEL,
        ]
        with contextlib.suppress(FileNotFoundError):
            (log_dir / "backends" / "vllm.started").unlink()
        try:
            self.supervisor.bind(self.ns, "vllm", command, port)
        except SupervisorError as error:
            raise DemoError(f"the vllm backend did not start: {error}") from error
        self.backends["vllm"] = f"http://127.0.0.1:{port}/v1"
        return [("vllm", f"http://127.0.0.1:{port}", "openai protocol, Deployment vllm")]

    def close_supervisor(self) -> None:
        if self.supervisor is not None:
            # A backend stopped in the middle of its start-up is expected here, not news.
            logging.getLogger("chainop.testing.supervisor").setLevel(logging.CRITICAL)
            self.supervisor.close()

    def start_fake(self, name: str) -> str:
        port = cluster.free_port()
        runner = ProcessRunner(
            [
                sys.executable,
                "-m",
                "chainop.testing.fake_backend",
                "--port",
                str(port),
                "--name",
                name,
            ],
            log_path=self.options.log_dir / "backends" / f"{name}.log",
        )
        self.on_cleanup(f"stopping the {name} backend", runner.stop)
        runner.start()
        try:
            runner.wait_for_log(r"listening on", timeout=self.options.wait_timeout)
        except ClusterError as error:
            raise DemoError(f"the {name} backend did not start: {error}") from error
        return f"http://127.0.0.1:{port}"

    def start_operator(self) -> None:
        self.step("The operator")
        metrics_port = cluster.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        args = [
            sys.executable,
            "-m",
            "chainop",
            "run",
            "-n",
            self.ns,
            "--metrics-port",
            str(metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--tick",
            "0.1",
        ]
        self.operator = ProcessRunner(args, log_path=self.options.log_dir / "operator.log")
        self.on_cleanup("stopping the operator", self.operator.stop)
        self.note(
            "$ python -m chainop run -n " + self.ns + f" --metrics-port {metrics_port} --tick 0.1"
        )
        self.operator.start()
        try:
            self.operator.wait_for_log(r"chainop started", timeout=self.options.wait_timeout)
        except ClusterError as error:
            raise DemoError(f"the operator did not start: {error}") from error
        self.note(f"running (pid {self.operator.pid}); log: {self.operator.log_path}")

    def apply_chains(self) -> None:
        self.step("Secrets and ProviderChains (examples/, pointed at the fake backends)")
        secrets = [demo_secret(d) for d in load_documents(self.examples / "secrets.yaml")]
        self.note("examples/secrets.yaml with demo keys instead of sk-REPLACE-ME:")
        self.kubectl("apply", "-f", "-", input=dump(secrets))
        chains = [
            demo_chain(doc, self.backends)
            for file in ("provider-chain.yaml", "jobs-chain.yaml")
            for doc in load_documents(self.examples / file)
        ]
        self.chain_names = [c["metadata"]["name"] for c in chains]
        self.note("examples/provider-chain.yaml and jobs-chain.yaml, endpoints rewritten, and")
        self.note("shortened for the demo: probe every 1s, Unhealthy after 3 failed probes,")
        self.note("recovery probes after 1s doubling to 8s, cooldown 2s (the examples: 15s, 3,")
        self.note("30s doubling to 300s, 5s)")
        self.kubectl("apply", "-f", "-", input=dump(chains))

        def ready() -> bool:
            for name in self.chain_names:
                status = self.chain_status(name)
                ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
                if not ready or ready[0].get("status") != "True":
                    return False
                if status.get("healthy") != status.get("total"):
                    return False
            # vllm answered a probe (it is probed actively; the cloud APIs passively).
            vllm = FakeBackendControl(self.backends["vllm"].removesuffix("/v1"))
            return bool(vllm.stats()["requests"].get("models"))

        self.wait("the chains to be Ready with every provider Healthy", ready)
        self.say(f"[{self.elapsed():6.1f}s] chains Ready:")
        self.kubectl("get", "pchain", "-o", "wide")
        self.show_provider_states()

    def show_provider_states(self) -> None:
        self.kubectl(
            "get",
            "pchain",
            "default",
            "-o",
            'jsonpath={range .status.providers[*]}{.name}{"\\t"}{.state}{"\\t"}'
            'probeFailures={.consecutiveProbeFailures}{"\\t"}restarts={.restarts}{"\\n"}{end}'
            'activeOrder={.status.activeOrder}{"\\n"}',
        )

    def route_tasks(self) -> None:
        self.step("DelegatedTasks, one per routing rule (examples/tasks/)")
        self.kubectl("apply", "-f", str(self.examples / "tasks"))
        files = sorted((self.examples / "tasks").glob("*.yaml"))
        names = [load_documents(f)[0]["metadata"]["name"] for f in files]
        statuses = {name: self.wait_task(name) for name in names}
        self.say(f"[{self.elapsed():6.1f}s] all {len(names)} tasks finished:")
        self.kubectl("get", "dtask", "-o", "wide")
        self.kubectl(
            "get",
            "dtask",
            "-o",
            "custom-columns=TASK:.metadata.name,FIRST:.status.decision.provider,"
            "DECISION:.status.decision.reason",
        )
        wrong = []
        for file, name in zip(files, names, strict=True):
            claim = routing_claim(file)
            decision = statuses[name].get("decision") or {}
            if statuses[name].get("phase") != "Succeeded":
                wrong.append(f"{name} {statuses[name].get('phase')}")
            elif claim and (decision.get("providers"), decision.get("reason")) != claim:
                wrong.append(f"{name}: {decision} (the example says {claim})")
        if wrong:
            raise DemoError("tasks not routed as the examples say: " + "; ".join(wrong))
        self.say(
            f"  ✓ all {len(names)} tasks routed as the comments in examples/tasks/ say "
            "(requiresLocal, local, no delegation and the typo stay on vllm)"
        )
        self.kubectl("get", "dtask", "auto", "-o", 'jsonpath=answer: {.status.result.text}{"\\n"}')

    def break_backend(self) -> None:
        self.step("Break the in-cluster backend: vllm answers HTTP 503 to everything")
        self.old_pid = self.supervisor.pid(self.ns, "vllm") if self.supervisor else None
        if self.node:
            self.old_pod = self.serving_pod()
        FakeBackendControl(self.backends["vllm"].removesuffix("/v1")).set(mode="error", status=503)
        self.note("vllm now answers 503. A task with delegation allowed arrives at once:")
        task = load_documents(self.examples / "tasks" / "auto.yaml")[0]
        task["metadata"]["name"] = "auto-failover"
        self.kubectl("create", "-f", "-", input=dump([task]))
        status = self.wait_task("auto-failover")
        self.kubectl("get", "dtask", "auto-failover", "-o", "wide")
        self.kubectl(
            "get",
            "dtask",
            "auto-failover",
            "-o",
            'jsonpath={range .status.attempts[*]}attempt: {.provider}{"\\t"}{.outcome}'
            '{"\\t"}{.error}{"\\n"}{end}',
        )
        providers = [a.get("provider") for a in status.get("attempts") or []]
        result = (status.get("result") or {}).get("provider")
        if status.get("phase") != "Succeeded":
            raise DemoError(f"task auto-failover did not succeed: {status.get('conditions')}")
        if providers[:1] == ["vllm"] and result != "vllm":
            self.say(f"  ✓ failover: vllm failed, {result} answered (a Spillover: the work left")
            self.say("    the Sovereign tier because this task allows delegation)")
        else:
            self.say(f"  note: the probes had already excluded vllm; {result} answered directly")

    def chain_line(self) -> str:
        status = self.chain_status("default")
        vllm = self.provider("default", "vllm")
        return (
            f"vllm {vllm.get('state', '?'):<11}"
            f" probeFailures={vllm.get('consecutiveProbeFailures')}"
            f"  HEALTHY {status.get('healthySummary', '?')}"
            f"  activeOrder={','.join(status.get('activeOrder') or [])}"
        )

    def follow(self, what: str, done: Callable[[], bool]) -> None:
        """Print each change of the default chain's status until ``done()``."""
        last = ""

        def check() -> bool:
            nonlocal last
            finished = done()
            line = self.chain_line()  # read after done(): shows the state that ended the wait
            if line != last:
                self.say(f"  [{self.elapsed():6.1f}s] {line}")
                last = line
            return finished

        self.wait(what, check)

    def watch_exclusion(self) -> None:
        self.step("Probes fail: vllm turns Unhealthy and is Excluded from the active order")
        self.follow(
            "vllm to be Excluded",
            lambda: self.provider("default", "vllm").get("state") == "Excluded",
        )
        self.say(f"[{self.elapsed():6.1f}s] while vllm is out, tasks go straight to the cloud:")
        self.kubectl("get", "pchain", "-o", "wide")
        self.show_provider_states()

    def watch_restart(self) -> None:
        self.step("Self-healing: chainop restarts the vllm Deployment")

        def annotated() -> str | None:
            result = cluster.kubectl(
                "get",
                "deployment",
                "vllm",
                "-n",
                self.ns,
                "-o",
                "jsonpath={.spec.template.metadata.annotations.chainop\\.dev/restartedAt}",
                check=False,
            )
            return result.stdout.strip() or None

        self.wait("the restart annotation on Deployment vllm", annotated)
        self.kubectl(
            "get",
            "deployment",
            "vllm",
            "-o",
            'jsonpath=pod template annotations: {.spec.template.metadata.annotations}{"\\n"}',
        )
        if self.node:
            self.watch_pod_replaced()
            return
        self.note("the supervisor (playing kubelet) saw the new pod template: restarting vllm")
        assert self.supervisor is not None
        try:
            restarts = self.supervisor.wait_for_restarts(
                self.ns, "vllm", 1, timeout=self.options.wait_timeout
            )
        except SupervisorError as error:
            raise DemoError(str(error)) from error
        new_pid = self.supervisor.pid(self.ns, "vllm")
        self.say(
            f"  ✓ [{self.elapsed():6.1f}s] vllm backend restarted ({restarts} restart, "
            f"pid {self.old_pid} -> {new_pid}), serving again"
        )

    def watch_pod_replaced(self) -> None:
        """The kubelet at work: the old pod Terminating next to the new one Running."""
        old = self.old_pod or {}
        old_uid = (old.get("metadata") or {}).get("uid")
        self.note("the Deployment controller made a new ReplicaSet; the kubelet stops the old")
        self.note(
            f"pod (it drains for {NODE_DRAIN_SECONDS}s after SIGTERM, Terminating) and starts"
        )
        self.note("the new one, which waits for the port, then loads its model:")

        shown: set[tuple[tuple[str, str], ...]] = set()

        def summary() -> tuple[tuple[str, str], ...]:
            return tuple(
                (
                    p["metadata"]["name"],
                    "Terminating"
                    if p["metadata"].get("deletionTimestamp")
                    else str((p.get("status") or {}).get("phase")),
                )
                for p in self.vllm_pods()
            )

        def replaced() -> dict[str, Any] | None:
            # Each new picture of the pods once (kubectl's own output): the old pod
            # Terminating next to the new one Running, then the new one alone.
            now = summary()
            if now and now not in shown:
                shown.add(now)
                self.kubectl("get", "pods", "-o", "wide")
            pod = self.serving_pod()
            return pod if pod is not None and pod["metadata"]["uid"] != old_uid else None

        new = self.wait("the new vllm pod alone, serving", replaced)
        if not any(
            {"Terminating", "Running"} <= {state for _, state in picture} for picture in shown
        ):
            self.note("(the old pod was gone before a listing caught it Terminating)")
        self.say(
            f"  ✓ [{self.elapsed():6.1f}s] vllm backend restarted by the kubelet (pod "
            f"{old.get('metadata', {}).get('name')} -> {new['metadata']['name']}: a new pod "
            "UID, a new process), serving again"
        )

    def restarts(self) -> int:
        """How often chainop restarted the vllm Deployment."""
        if self.supervisor is not None:
            return self.supervisor.restarts(self.ns, "vllm")
        result = cluster.kubectl(
            "get", "deployment", "vllm", "-n", self.ns, "-o",
            "jsonpath={.metadata.annotations.chainop\\.dev/restart-history}", check=False,
        )  # fmt: skip
        return len([part for part in result.stdout.strip().split(",") if part])

    def watch_recovery(self) -> None:
        self.step("Recovery: a recovery probe succeeds, vllm is restored at the head")

        def restored() -> bool:
            for name in self.chain_names:
                status = self.chain_status(name)
                if status.get("healthy") != status.get("total"):
                    return False
                if "vllm" not in (status.get("activeOrder") or []):
                    return False
            return self.chain_status("default").get("activeOrder") == [
                "vllm",
                "openai",
                "anthropic",
            ]

        self.follow("vllm to be restored, Healthy", restored)
        self.say(f"[{self.elapsed():6.1f}s] ✓ restored at its original position, Healthy:")
        restarts = self.restarts()
        self.note(f"(the vllm Deployment was restarted {restarts} time(s) in all)")
        self.kubectl("get", "pchain", "-o", "wide")
        self.show_provider_states()
        self.note("local work runs on vllm again:")
        task = load_documents(self.examples / "tasks" / "auto.yaml")[0]
        task["metadata"]["name"] = "auto-after-recovery"
        self.kubectl("create", "-f", "-", input=dump([task]))
        status = self.wait_task("auto-after-recovery")
        self.kubectl("get", "dtask", "auto-failover", "auto-after-recovery", "-o", "wide")
        if (status.get("result") or {}).get("provider") != "vllm":
            raise DemoError(f"auto-after-recovery did not run on vllm: {status}")

    def show_events(self) -> None:
        self.step("The story in Events and metrics")
        self.note("(lastTimestamp has 1s resolution: events of the same second may come in any")
        self.note(" order; note the one BackendRestarted although both chains excluded vllm)")
        self.kubectl(
            "get",
            "events",
            "--sort-by=.lastTimestamp",
            "--field-selector",
            "involvedObject.kind=ProviderChain",
        )
        self.kubectl(
            "get",
            "events",
            "--sort-by=.lastTimestamp",
            "--field-selector",
            "involvedObject.name=auto-failover",
        )
        self.kubectl(
            "get",
            "events",
            "--sort-by=.lastTimestamp",
            "--field-selector",
            "involvedObject.kind=Deployment,involvedObject.name=vllm",
        )
        self.show_metrics()

    def show_metrics(self) -> None:
        import httpx

        wanted = (
            "chainop_failovers_total",
            "chainop_spillovers_total",
            "chainop_exclusions_total",
            "chainop_backend_restarts_total",
            "chainop_restores_total",
        )
        try:
            text = httpx.get(self.metrics_url, timeout=5).text
        except httpx.HTTPError as error:
            self.note(f"(metrics not readable: {error})")
            return
        self.say(f"  $ curl -s {self.metrics_url} | grep ...")
        for line in text.splitlines():
            if line.startswith(wanted):
                self.say(f"    {line}")


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


# --------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="chainop demo",
        description=(
            "Run chainop end to end on the local control plane: routing, failover, "
            "exclusion, backend restart and restore. Sets up and removes everything."
        ),
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the control plane running even if the demo started it",
    )
    parser.add_argument(
        "--namespace", default="chainop-demo", help="namespace to create, use and delete"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the operator and backends log (default: .cache/demo/)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--node",
        dest="node",
        action="store_true",
        default=None,
        help="run the backend as a pod on the real node, starting it if needed (NODE=1)",
    )
    where.add_argument(
        "--no-node",
        dest="node",
        action="store_false",
        help="the pod-less demo even if a node is up (NODE=0)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        help="seconds any single wait may take before the demo gives up",
    )
    return parser


def _clear_logs(log_dir: Path) -> None:
    for pattern in ("*.log", "backends/*.log", "backends/*.started"):
        for path in log_dir.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _unbuffered() -> Iterator[None]:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    yield


def _node_from_env() -> bool | None:
    """NODE=1: the node (started if needed); NODE=0: pod-less; unset: the node if live."""
    value = os.environ.get("NODE", "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 ok, 1 a step failed, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        root = cluster.repo_root()
    except ClusterError as error:
        print(f"chainop demo: {error}", file=sys.stderr)
        return 1
    log_dir = (args.log_dir or root / ".cache" / "demo").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    _clear_logs(log_dir)
    options = Options(
        namespace=args.namespace,
        keep_cluster=args.keep_cluster,
        log_dir=log_dir,
        wait_timeout=args.wait_timeout,
        node=args.node if args.node is not None else _node_from_env(),
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with _unbuffered():
        return Demo(options).run()


if __name__ == "__main__":
    sys.exit(main())
