"""We test these aspects: self-healing on real pods, on the real node.

chainop runs **as a pod** (the chart, ``helm install --wait``, namespaced RBAC, the local
image): what restarts a backend is exactly what a user's cluster runs, under exactly the
chart's rights (``deployments: get, patch``; ``pods: list`` to see a crash loop).
The backends are Deployments whose pods the kubelet really runs, with ``hostNetwork`` on a
fixed port of the bridge address 10.213.0.1 and ``strategy: Recreate``: a chain's endpoint
is fixed when it is created, and a replaced pod gets a new pod IP, so a stable address is
needed without cluster DNS (see docs/control-plane.md, "Reaching backends on the node").
The chains' terminus ("cloud") is a fake backend pod reached by its pod IP.

* the fake vLLM, hung (``hung_engine``: it accepts connections and never answers): benched
  (Excluded), chainop patches its Deployment once, the kubelet replaces the pod (a new pod
  UID, a new host process), the recovery probe restores the provider, Healthy, at the head;
  figure: seconds from the fault to restored;
* a real ``llama-server`` with SmolLM2-135M (the cached build, mounted from the host) frozen
  with SIGSTOP from the host: the same, and the restored provider answers a real completion;
* a restarted pod that spends 20 s in an init container (4 restart graces): restarted once,
  then waited for, and restored when it runs;
* a backend whose restarted pod crash-loops: chainop restarts it once, then says
  ``CrashLoopBackOff`` in plain words (``providers[].reason``, ``lastError``, an Event
  ``BackendCrashLooping``) and does not restart it again, although its restart grace ran out
  several times over and the hourly budget would allow more (restart-history stays at one).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chainop.operator.restarts import RESTARTED_AT
from chainop.testing import cluster as cluster_helpers
from chainop.testing import llama
from chainop.testing.cluster import free_port
from tests.e2e.kit import CHAINS, Kit
from tests.node import onnode
from tests.node.conftest import Node, report
from tests.node.onnode import BRIDGE_IP, PROBING

pytestmark = pytest.mark.node

VLLM_MODEL = "qwen2.5-7b-instruct"
RECOVERY = {"initialSeconds": 1, "maxSeconds": 4}
HOST_LIBGOMP = Path("/usr/lib/x86_64-linux-gnu/libgomp.so.1")


@dataclass
class Stack:
    """chainop installed by helm watching ``namespace``, and the chains' terminus."""

    node: Node
    kit: Kit
    namespace: str
    release: str
    release_namespace: str
    cloud_url: str
    install_seconds: float

    def chain(self, name: str, head: dict[str, Any], **self_healing: Any) -> None:
        cloud = self.kit.provider("cloud", self.cloud_url, "Standard")
        self.kit.create_chain(
            name,
            [head, cloud],
            health=PROBING,
            selfHealing={"recovery": RECOVERY, **self_healing},
        )

    def operator_log(self) -> str:
        return onnode.operator_log(self.node, self.release, self.release_namespace)


@pytest.fixture(scope="module")
def stack(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    watched = onnode.create_namespace(node, "n1-heal")
    release_ns = onnode.create_namespace(node, "n1-heal-sys")
    release = f"chainop-n1-{uuid.uuid4().hex[:4]}"
    helm = onnode.Helm(node.kubeconfig, tmp_path_factory.mktemp("helm"))
    api = cluster_helpers.connect(node.kubeconfig)
    try:
        seconds = onnode.install_operator(helm, release, release_ns, watched)
        # The terminus: a fake "cloud" pod, never restarted, reached by its pod IP.
        cloud_port = 8000
        cloud = onnode.backend_deployment(
            "cloud",
            onnode.fake_backend_command(cloud_port, "cloud", "cloud-model", host="0.0.0.0"),
            port=cloud_port,
            host_network=False,
        )
        cloud_url = onnode.serve(node, watched, cloud, cloud_port)
        yield Stack(node, Kit(api, watched), watched, release, release_ns, cloud_url, seconds)
    finally:
        log = onnode.operator_log(node, release, release_ns)
        (tmp_path_factory.getbasetemp() / "operator-heal.log").write_text(log)
        uninstall(helm, release, release_ns)
        onnode.delete_namespace(node, watched)
        onnode.delete_namespace(node, release_ns)
        api.close()


def uninstall(helm: onnode.Helm, release: str, namespace: str) -> None:
    # Whatever is left goes with the namespaces.
    with contextlib.suppress(AssertionError):
        helm("uninstall", release, "--namespace", namespace, "--wait", timeout=120)


def provider_state(kit: Kit, chain: str, provider: str) -> tuple[str, list[str]]:
    status = kit.get(CHAINS, chain).get("status") or {}
    return kit.provider_status(chain, provider).get("state", ""), status.get("activeOrder", [])


def hang_until_restarted(stack: Stack, url: str, deployment: str) -> float:
    """Hang the fake backend at ``url`` (``hung_engine``) and wait for chainop's restart of
    ``deployment``; the monotonic time of the fault."""
    t0 = time.monotonic()
    onnode.control(url, mode="hung_engine")
    onnode.wait_for(
        lambda: onnode.restart_history(stack.node, stack.namespace, deployment),
        timeout=60, what=f"the restart of {deployment}",
    )  # fmt: skip
    return t0


def heal_and_measure(
    stack: Stack,
    *,
    deployment: str,
    chain: str,
    pid_pattern: str,
    fault: Any,
    ready_timeout: float = 60.0,
) -> dict[str, float]:
    """Inject ``fault()``; follow benched → patched → pod replaced → restored. Returns the
    seconds of each milestone after the fault (the figures)."""
    node, kit, ns = stack.node, stack.kit, stack.namespace
    selector = f"app={deployment}"
    old = onnode.live_pod(node, ns, selector)
    assert old is not None
    old_pid = onnode.one_host_pid(pid_pattern)

    t0 = time.monotonic()
    fault(old_pid)
    marks: dict[str, float] = {}

    def excluded() -> bool:
        state, order = provider_state(kit, chain, deployment)
        return state == "Excluded" and deployment not in order

    onnode.wait_for(excluded, timeout=60, what=f"{deployment} Excluded", poll=0.1)
    marks["excluded"] = time.monotonic() - t0
    annotations = lambda: (  # noqa: E731
        kit.deployment(deployment)["spec"]["template"]["metadata"].get("annotations") or {}
    )
    onnode.wait_for(
        lambda: RESTARTED_AT in annotations(), timeout=60, what="Deployment patched", poll=0.1
    )
    marks["patched"] = time.monotonic() - t0

    def replaced() -> dict[str, Any] | None:
        pod = onnode.live_pod(node, ns, selector)
        return pod if pod is not None and onnode.uid(pod) != onnode.uid(old) else None

    new = onnode.wait_for(
        replaced, timeout=ready_timeout, what=f"a new {deployment} pod Running", poll=0.1
    )
    marks["new pod running"] = time.monotonic() - t0
    new_pid = onnode.one_host_pid(pid_pattern)
    assert new_pid != old_pid, "the kubelet's new pod runs a new process"
    assert old_pid not in onnode.host_pids(pid_pattern)

    def restored() -> bool:
        state, order = provider_state(kit, chain, deployment)
        return state == "Healthy" and order[:1] == [deployment]

    onnode.wait_for(restored, timeout=ready_timeout, what=f"{deployment} restored", poll=0.1)
    marks["restored"] = time.monotonic() - t0
    assert len(onnode.restart_history(node, ns, deployment)) == 1, "exactly one restart"
    assert "BackendRestarted" in kit.event_reasons(chain)
    assert onnode.uid(new) != onnode.uid(old)
    marks["old pid"], marks["new pid"] = old_pid, new_pid
    return marks


def figures(marks: dict[str, float]) -> list[str]:
    return [
        f"{key:<16} {value:6.1f} s after the fault"
        for key, value in marks.items()
        if key in ("excluded", "patched", "new pod running", "restored")
    ]


def test_hung_fake_vllm_pod_is_replaced_and_restored(stack: Stack, capsys):
    node, kit, ns = stack.node, stack.kit, stack.namespace
    port = free_port()
    command = onnode.fake_backend_command(port, "vllm", VLLM_MODEL)
    url = onnode.serve(node, ns, onnode.backend_deployment("vllm", command, port=port), port)
    head = kit.provider("vllm", url, "Sovereign", model=VLLM_MODEL, backend={"deployment": "vllm"})
    stack.chain("fake", head)
    status = kit.chain_ready("fake", timeout=60)
    assert status["healthy"] == status["total"] == 2

    marks = heal_and_measure(
        stack,
        deployment="vllm",
        chain="fake",
        pid_pattern=f"chainop.testing.fake_backend --host {BRIDGE_IP} --port {port} ",
        fault=lambda pid: onnode.control(url, mode="hung_engine"),
    )
    # The new process answers, unhung (a fresh process: modes are not carried over).
    assert onnode.http("GET", f"{url}/v1/models")[0] == 200
    kit.create_task("after", chain="fake", content="hi")
    task = kit.wait_task("after", timeout=60)
    assert task["phase"] == "Succeeded", task
    assert task["result"]["provider"] == "vllm", task
    report(
        capsys,
        f"self-healing on the node, fake vLLM (hung_engine), operator as a pod (helm "
        f"install --wait {stack.install_seconds:.1f} s):",
        [
            *figures(marks),
            f"pid {int(marks['old pid'])} -> {int(marks['new pid'])}, new pod UID",
        ],
    )


def llama_deployment(port: int) -> dict[str, Any]:
    install = llama.install_dir()
    command = [
        "/llama/bin/llama-server",
        "-m", f"/llama/models/{llama.MODEL_FILE}",
        "--host", BRIDGE_IP, "--port", str(port),
        "-c", str(llama.DEFAULT_CTX_SIZE), "-np", "1",
        "-t", str(llama.DEFAULT_THREADS), "-tb", str(llama.DEFAULT_THREADS),
        "--temp", "0", "--seed", str(llama.DEFAULT_SEED),
        "--alias", llama.DEFAULT_ALIAS, "--no-webui",
    ]  # fmt: skip
    return onnode.backend_deployment(
        "llama",
        command,
        port=port,
        image=onnode.BASE_IMAGE,
        # The binary is the host's own build (-march=native): its one runtime library the
        # base image lacks, libgomp, comes from the host too (Debian 12 on both sides).
        env=[{"name": "LD_LIBRARY_PATH", "value": "/opt/host-lib"}],
        volumes=[
            {"name": "llama", "hostPath": {"path": str(install), "type": "Directory"}},
            {
                "name": "libgomp",
                "hostPath": {"path": str(HOST_LIBGOMP.resolve()), "type": "File"},
            },
        ],
        mounts=[
            {"name": "llama", "mountPath": "/llama", "readOnly": True},
            {"name": "libgomp", "mountPath": "/opt/host-lib/libgomp.so.1", "readOnly": True},
        ],
    )


def test_frozen_llama_server_pod_is_replaced_and_restored(stack: Stack, capsys):
    missing = llama.missing_reason()
    if missing:
        pytest.skip(missing)
    if not HOST_LIBGOMP.exists():
        pytest.skip(f"{HOST_LIBGOMP} missing on the host (apt-get install libgomp1)")
    node, kit, ns = stack.node, stack.kit, stack.namespace
    port = free_port()
    onnode.apply(node, ns, llama_deployment(port))
    onnode.wait_for(lambda: onnode.live_pod(node, ns, "app=llama"), timeout=90, what="llama pod")
    url = f"http://{BRIDGE_IP}:{port}"
    onnode.wait_for(
        lambda: onnode.http("GET", f"{url}/health")[0] == 200, timeout=60, what="model loaded"
    )
    head = kit.provider(
        "llama", url, "Sovereign", model=llama.DEFAULT_ALIAS, backend={"deployment": "llama"}
    )
    stack.chain("real", head, restartGraceSeconds=30)
    status = kit.chain_ready("real", timeout=60)
    assert status["healthy"] == status["total"] == 2

    marks = heal_and_measure(
        stack,
        deployment="llama",
        chain="real",
        pid_pattern=f"llama-server .*--port {port} ",
        fault=onnode.sigstop,
        ready_timeout=90,
    )
    kit.create_task("answer", chain="real", content="Say hello.")
    task = kit.wait_task("answer", timeout=90)
    assert task["phase"] == "Succeeded", task
    assert task["result"]["provider"] == "llama", task
    assert task["result"]["text"].strip()
    report(
        capsys,
        "self-healing on the node, real llama-server + SmolLM2-135M (SIGSTOP from the host):",
        [
            *figures(marks),
            f"pid {int(marks['old pid'])} -> {int(marks['new pid'])}, new pod UID",
            f"answer after restore: {task['result']['text'].strip()[:60]!r}",
        ],
    )


def crash_looping_deployment(port: int) -> dict[str, Any]:
    """The fake vLLM, except that a pod started after chainop's restart exits 1 at once,
    as a server does that was rolled out with a bad flag."""
    serve = " ".join(onnode.fake_backend_command(port, "flaky", VLLM_MODEL))
    script = (
        f'if [ -n "${onnode.RESTARTED_ENV}" ]; then '
        'echo "flaky: error: unrecognized arguments: --max-model-len=oops" >&2; exit 1; fi; '
        f"exec {serve}"
    )
    return onnode.backend_deployment("flaky", ["sh", "-c", script], port=port)


def test_crash_looping_pod_is_not_restarted_again_and_again(stack: Stack, capsys):
    node, kit, ns = stack.node, stack.kit, stack.namespace
    port = free_port()
    url = onnode.serve(node, ns, crash_looping_deployment(port), port)
    head = kit.provider(
        "flaky", url, "Sovereign", model=VLLM_MODEL, backend={"deployment": "flaky"}
    )
    grace = 5  # a restart that did not help could be retried after 5 s...
    budget = 3  # ...and the hour's budget allows 3: without the pod check, a storm
    stack.chain("crashy", head, restartGraceSeconds=grace, maxRestartsPerHour=budget)
    kit.chain_ready("crashy", timeout=60)

    t0 = hang_until_restarted(stack, url, "flaky")
    restarted = time.monotonic() - t0

    def seen() -> str:
        containers = [
            (s.get("state"), s.get("restartCount"))
            for p in onnode.pods(node, ns, "app=flaky")
            for s in p["status"].get("containerStatuses") or []
        ]
        log = stack.operator_log().splitlines()
        return (
            f"provider {kit.provider_status('crashy', 'flaky')}; containers {containers}; "
            f"events {kit.event_reasons('crashy')}; operator log tail:\n" + "\n".join(log[-30:])
        )

    def said_or_restarted_again() -> dict[str, Any] | None:
        entry = kit.provider_status("crashy", "flaky")
        if entry.get("reason") == "CrashLoopBackOff":
            return entry
        assert len(onnode.restart_history(node, ns, "flaky")) == 1, (
            "chainop restarted the crash-looping backend again before it saw the crash "
            f"loop: {seen()}"
        )
        return None

    entry = onnode.wait_for(
        said_or_restarted_again, timeout=90, what="reason CrashLoopBackOff in status", detail=seen
    )
    said = time.monotonic() - t0
    assert "CrashLoopBackOff" in entry.get("lastError", ""), entry
    onnode.wait_for(
        lambda: "BackendCrashLooping" in kit.event_reasons("crashy"),
        timeout=30, what="an Event BackendCrashLooping",
    )  # fmt: skip

    # Watch it for several restart graces: the kubelet keeps retrying the container,
    # chainop orders nothing more.
    watch = 6 * grace
    time.sleep(watch)
    history = onnode.restart_history(node, ns, "flaky")
    assert len(history) == 1, f"chainop restarted a crash-looping backend again: {history}"
    generation = kit.deployment("flaky")["metadata"]["generation"]
    assert generation == 2, f"Deployment patched more than once (generation {generation})"
    flaky_pods = onnode.pods(node, ns, "app=flaky")
    restarts = [
        s.get("restartCount", 0)
        for p in flaky_pods
        if not p["metadata"].get("deletionTimestamp")
        for s in p["status"].get("containerStatuses") or []
    ]
    assert restarts, flaky_pods
    assert max(restarts) >= 2, f"the pod is crash-looping: {restarts}"
    entry = kit.provider_status("crashy", "flaky")
    assert entry.get("reason") == "CrashLoopBackOff"
    assert entry.get("state") != "Healthy"
    events = [
        e
        for e in kit.events()
        if e.get("reason") == "BackendCrashLooping"
        and e.get("involvedObject", {}).get("name") == "crashy"
    ]
    report(
        capsys,
        "crash loop on the node (the restarted pod exits 1 at once):",
        [
            f"chainop restarted it once ({restarted:.1f} s after the fault); said "
            f"CrashLoopBackOff {said:.1f} s after the fault",
            f"then watched {watch} s ({watch // grace} restart graces, budget {budget}/h): "
            f"restart-history {len(history)} entry, Deployment generation {generation}, "
            f"kubelet container restarts {max(restarts)}",
            f"status.providers[flaky].reason = {entry.get('reason')}",
            f"lastError = {entry.get('lastError', '')[:150]}",
            f"Event BackendCrashLooping: {events[0].get('message', '')[:150] if events else '?'}",
        ],
    )


def test_a_restarted_pod_slow_to_start_is_not_restarted_again_before_it_runs(stack: Stack, capsys):
    """The restart grace is for a running backend to come up, not for the kubelet to
    start it: the restarted pod spends 4 graces in an init container (as a pod does that
    pulls weights or waits for a volume), then waits for its startup probe, and chainop
    waits for it rather than restarting it again; once it runs, it is restored. (With the
    grace counted from the patch, it was restarted again after 5 s, and again, until the
    hour's budget ran out.)"""
    node, kit, ns = stack.node, stack.kit, stack.namespace
    port = free_port()
    grace, starting = 5, 20
    prepare = f'if [ -n "${onnode.RESTARTED_ENV}" ]; then sleep {starting}; fi'
    command = onnode.fake_backend_command(port, "slow", VLLM_MODEL)
    deployment = onnode.backend_deployment(
        "slow", command, port=port, init_command=["sh", "-c", prepare], startup_probe=True
    )
    url = onnode.serve(node, ns, deployment, port)
    head = kit.provider("slow", url, "Sovereign", model=VLLM_MODEL, backend={"deployment": "slow"})
    stack.chain("slowstart", head, restartGraceSeconds=grace, maxRestartsPerHour=3)
    kit.chain_ready("slowstart", timeout=60)

    t0 = hang_until_restarted(stack, url, "slow")
    restarted = time.monotonic() - t0

    def restored_once() -> bool:
        history = onnode.restart_history(node, ns, "slow")
        assert len(history) == 1, (
            f"chainop restarted the backend again while its new pod was starting: {history}; "
            f"provider {kit.provider_status('slowstart', 'slow')}"
        )
        state, order = provider_state(kit, "slowstart", "slow")
        return state == "Healthy" and order[:1] == ["slow"]

    onnode.wait_for(restored_once, timeout=120, what="slow restored after one restart")
    restored = time.monotonic() - t0
    # One rollout after the first: a second restart would have made revision 3. (Not the
    # generation: clearing chainop's in-flight annotation bumps it too.)
    annotations = kit.deployment("slow")["metadata"]["annotations"]
    assert annotations["deployment.kubernetes.io/revision"] == "2", annotations
    # The window was real: the new pod's init container ran for several graces. (The pod
    # may turn Ready a moment after chainop's recovery probe got its answer: the kubelet
    # probes on its own period.)
    pod = onnode.wait_for(
        lambda: onnode.live_pod(node, ns, "app=slow"), timeout=30, what="the new pod Ready"
    )
    (init,) = pod["status"]["initContainerStatuses"]
    ran = init["state"]["terminated"]
    began = datetime.fromisoformat(ran["startedAt"]).timestamp()
    ended = datetime.fromisoformat(ran["finishedAt"]).timestamp()
    assert ended - began >= starting - 1 > 3 * grace, ran
    assert restored - restarted >= starting - 1
    report(
        capsys,
        "a restarted pod slow to start (init container 20 s, restartGraceSeconds 5):",
        [
            f"restarted {restarted:.1f} s after the fault; restored {restored:.1f} s after it",
            f"init container ran {ended - began:.0f} s; restart-history 1 entry, "
            "Deployment revision 2",
        ],
    )
