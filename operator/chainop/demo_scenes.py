"""The demo's scenes (``make demo``), in the order ``SCENES`` plays them.

Each scene is a function of the ``Demo`` stage (``chainop.demo``): it narrates with
``demo.step``/``demo.note``, shows real ``kubectl`` output with ``demo.kubectl``, reads
chains and tasks and waits through the stage, which does both with ``chainop.console`` —
the module ``kubectl chainop`` uses. The node's variants live in ``chainop.demo_node``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING

import yaml

from chainop import demo_llama, demo_node
from chainop.demo import (
    _WARMUP_WRAPPER,
    DEMO_KEYS,
    DEMO_LABEL,
    VLLM_MODEL,
    WARMUP_SECONDS,
    DemoError,
    demo_chain,
    demo_secret,
    dump,
    load_documents,
    routing_claim,
)
from chainop.demo_node import NODE_BRIDGE_IP, node_vllm_deployment
from chainop.testing import cluster
from chainop.testing.cluster import ClusterError, ProcessRunner
from chainop.testing.fake_backend import FakeBackendControl
from chainop.testing.supervisor import BackendSupervisor, SupervisorError, stand_in

if TYPE_CHECKING:
    from collections.abc import Callable

    from chainop.demo import Demo


def control_plane(demo: Demo) -> None:
    demo.step("Local control plane (etcd + kube-apiserver + kube-controller-manager)")
    demo.node = demo_node.use_node(demo)
    if cluster.cluster_running():
        demo.note(f"already running (KUBECONFIG={cluster.kubeconfig_path()})")
    else:
        demo.note("not running: starting it with hack/cluster-up.sh (the very first time, it")
        demo.note("builds kube-apiserver and kube-controller-manager first: several minutes)")
        demo.started_cluster = True
        if not demo.options.keep_cluster:
            demo.on_cleanup(
                "stopping the control plane (this demo started it)", cluster.stop_cluster
            )
        demo.run_script("cluster-up.sh", timeout=1800, limit="30 minutes")
    try:
        kubeconfig = cluster.ensure_cluster(timeout=120)
    except ClusterError as error:
        raise DemoError(str(error)) from error
    demo.connect(kubeconfig)
    demo.kubectl("version", namespaced=False)
    if demo.node:
        demo.note("a real node is up (kubelet + containerd): the backend runs as a pod")
        demo.kubectl("get", "nodes", "-o", "wide", namespaced=False)
    else:
        demo.note("no node (`make node-up` adds one; NODE=1 makes the demo start it):")
        demo.note("the pod-less demo, a supervised process stands in for the vllm pod")


def crds_and_namespace(demo: Demo) -> None:
    demo.step("CRDs and the demo namespace")
    demo.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(demo.root / "crds"),
        namespaced=False,
    )
    demo.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/providerchains.chainop.dev",
        "crd/delegatedtasks.chainop.dev",
        namespaced=False,
    )
    fresh_namespace(demo)
    demo.on_cleanup(f"deleting namespace {demo.ns}", lambda: delete_namespace(demo))
    if demo.node:
        demo.vllm_port = cluster.free_port()
        demo.note("examples/vllm-deployment.yaml wants a GPU and vllm/vllm-openai from a")
        demo.note("registry; in its place the project's fake vLLM, as a real pod of the app")
        demo.note(f"image, hostNetwork on the bridge address {NODE_BRIDGE_IP}:{demo.vllm_port}")
        demo.note("(the node has no cluster DNS for the example's Service name vllm:8000)")
        deployment = node_vllm_deployment(demo.vllm_port)
        demo.kubectl("apply", "-f", "-", input=dump([deployment]))
        return
    docs = load_documents(demo.examples / "vllm-deployment.yaml")
    docs = [stand_in(doc) if doc.get("kind") == "Deployment" else doc for doc in docs]
    demo.note("examples/vllm-deployment.yaml, its pod pinned to no node (a nodeSelector")
    demo.note("no node has), so that it stays Pending even if a node is up:")
    demo.kubectl("apply", "-f", "-", input=dump(docs))
    demo.note("(no kubelet runs it: the BackendSupervisor runs its stand-in process")
    demo.note(" instead — next step)")


def fresh_namespace(demo: Demo) -> None:
    found = cluster.kubectl("get", "namespace", demo.ns, "-o", "json", check=False)
    if found.returncode == 0:
        labels = (yaml.safe_load(found.stdout).get("metadata") or {}).get("labels") or {}
        if labels.get(DEMO_LABEL) != "true":
            raise DemoError(
                f"namespace {demo.ns} exists and was not made by the demo; "
                "choose another with --namespace"
            )
        demo.note(f"namespace {demo.ns} is left over from an earlier run: deleting it")
        delete_namespace(demo)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": demo.ns, "labels": {DEMO_LABEL: "true"}},
    }
    demo.kubectl("create", "-f", "-", input=dump([namespace]), namespaced=False)


def delete_namespace(demo: Demo) -> None:
    result = cluster.kubectl(
        "delete",
        "namespace",
        demo.ns,
        "--ignore-not-found",
        "--wait=true",
        f"--timeout={int(demo.options.wait_timeout)}s",
        check=False,
        timeout=demo.options.wait_timeout + 10,
    )
    if result.returncode != 0:
        raise DemoError(f"namespace {demo.ns} not deleted: {result.stderr.strip()}")


def start_backends(demo: Demo) -> None:
    if demo.node:
        demo.step("Fake LLM backends: vllm as a pod on the node, the cloud APIs on 127.0.0.1")
        demo_node.start_node_vllm(demo)
        started = [
            (
                "vllm",
                f"http://{NODE_BRIDGE_IP}:{demo.vllm_port}",
                "openai protocol, a pod of Deployment vllm",
            )
        ]
    else:
        demo.step("Fake LLM backends (real HTTP servers on 127.0.0.1)")
        started = start_supervised_vllm(demo)
    for name, kind, suffix in (
        ("openai", "openai protocol, stands in for api.openai.com", "/v1"),
        ("anthropic", "anthropic protocol, stands in for api.anthropic.com", ""),
        ("batch-gateway", "jobs protocol (POST /jobs, GET /jobs/{id})", ""),
    ):
        url = start_fake(demo, name)
        demo.backends[name] = url + suffix
        started.append((name, url, kind))
    FakeBackendControl(demo.backends["openai"].removesuffix("/v1")).set(
        api_key=DEMO_KEYS["openai-key"], models=["gpt-4o-mini"]
    )
    FakeBackendControl(demo.backends["anthropic"]).set(
        api_key=DEMO_KEYS["anthropic-key"], models=["claude-3-5-haiku-latest"]
    )
    # The jobs gateway lists the model the batch chain asks of it (a List probe checks).
    FakeBackendControl(demo.backends["batch-gateway"]).set(models=["llama-3.1-70b-instruct"])
    for name, url, kind in started:
        demo.note(f"{name:<14} {url:<24} {kind}")
    if demo.node:
        demo.note("when the Deployment's pod template changes, the kubelet replaces the pod;")
        demo.note(f"once restarted it takes {WARMUP_SECONDS:g}s to 'load its model'.")
        return
    assert demo.supervisor is not None
    pid = demo.supervisor.pid(demo.ns, "vllm")
    demo.note(f"vllm runs under the BackendSupervisor (pid {pid}),")
    demo.note("which restarts it whenever the Deployment's pod template changes, as a kubelet")
    demo.note(f"would; once restarted it takes {WARMUP_SECONDS:g}s to 'load its model'.")


def start_supervised_vllm(demo: Demo) -> list[tuple[str, str, str]]:
    log_dir = demo.options.log_dir
    demo.supervisor = BackendSupervisor(cluster.kubeconfig_path(), log_dir=log_dir / "backends")
    demo.on_cleanup("stopping the supervisor and the vllm backend", lambda: close_supervisor(demo))
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
        demo.supervisor.bind(demo.ns, "vllm", command, port)
    except SupervisorError as error:
        raise DemoError(f"the vllm backend did not start: {error}") from error
    demo.backends["vllm"] = f"http://127.0.0.1:{port}/v1"
    return [("vllm", f"http://127.0.0.1:{port}", "openai protocol, Deployment vllm")]


def close_supervisor(demo: Demo) -> None:
    if demo.supervisor is not None:
        # A backend stopped in the middle of its start-up is expected here, not news.
        logging.getLogger("chainop.testing.supervisor").setLevel(logging.CRITICAL)
        demo.supervisor.close()


def start_fake(demo: Demo, name: str) -> str:
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
        log_path=demo.options.log_dir / "backends" / f"{name}.log",
    )
    demo.on_cleanup(f"stopping the {name} backend", runner.stop)
    runner.start()
    try:
        runner.wait_for_log(r"listening on", timeout=demo.options.wait_timeout)
    except ClusterError as error:
        raise DemoError(f"the {name} backend did not start: {error}") from error
    return f"http://127.0.0.1:{port}"


def start_operator(demo: Demo) -> None:
    demo.step("The operator")
    metrics_port = cluster.free_port()
    demo.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    args = [
        sys.executable,
        "-m",
        "chainop",
        "run",
        "-n",
        demo.ns,
        "--metrics-port",
        str(metrics_port),
        "--metrics-address",
        "127.0.0.1",
        "--tick",
        "0.1",
    ]
    demo.operator = ProcessRunner(args, log_path=demo.options.log_dir / "operator.log")
    demo.on_cleanup("stopping the operator", demo.operator.stop)
    demo.note(
        "$ python -m chainop run -n " + demo.ns + f" --metrics-port {metrics_port} --tick 0.1"
    )
    demo.operator.start()
    try:
        demo.operator.wait_for_log(r"chainop started", timeout=demo.options.wait_timeout)
    except ClusterError as error:
        raise DemoError(f"the operator did not start: {error}") from error
    demo.note(f"running (pid {demo.operator.pid}); log: {demo.operator.log_path}")


def apply_chains(demo: Demo) -> None:
    demo.step("Secrets and ProviderChains (examples/, pointed at the fake backends)")
    secrets = [demo_secret(d) for d in load_documents(demo.examples / "secrets.yaml")]
    demo.note("examples/secrets.yaml with demo keys instead of sk-REPLACE-ME:")
    demo.kubectl("apply", "-f", "-", input=dump(secrets))
    chains = [
        demo_chain(doc, demo.backends)
        for file in ("provider-chain.yaml", "jobs-chain.yaml")
        for doc in load_documents(demo.examples / file)
    ]
    demo.chain_names = [c["metadata"]["name"] for c in chains]
    demo.note("examples/provider-chain.yaml and jobs-chain.yaml, endpoints rewritten, and")
    demo.note("shortened for the demo: probe every 1s, Unhealthy after 3 failed probes,")
    demo.note("recovery probes after 1s doubling to 8s, cooldown 2s (the examples: 15s, 3,")
    demo.note("30s doubling to 300s, 5s)")
    demo.kubectl("apply", "-f", "-", input=dump(chains))

    def ready() -> bool:
        for name in demo.chain_names:
            status = demo.chain_status(name)
            ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
            if not ready or ready[0].get("status") != "True":
                return False
            if status.get("healthy") != status.get("total"):
                return False
        # vllm answered a probe (it is probed actively; the cloud APIs passively).
        vllm = FakeBackendControl(demo.backends["vllm"].removesuffix("/v1"))
        return bool(vllm.stats()["requests"].get("models"))

    demo.wait("the chains to be Ready with every provider Healthy", ready)
    demo.say(f"[{demo.elapsed():6.1f}s] chains Ready:")
    demo.kubectl("get", "pchain", "-o", "wide")
    show_provider_states(demo)


def show_provider_states(demo: Demo) -> None:
    demo.kubectl(
        "get",
        "pchain",
        "default",
        "-o",
        'jsonpath={range .status.providers[*]}{.name}{"\\t"}{.state}{"\\t"}'
        'probeFailures={.consecutiveProbeFailures}{"\\t"}restarts={.restarts}{"\\n"}{end}'
        'activeOrder={.status.activeOrder}{"\\n"}',
    )


def route_tasks(demo: Demo) -> None:
    demo.step("DelegatedTasks, one per routing rule (examples/tasks/)")
    demo.kubectl("apply", "-f", str(demo.examples / "tasks"))
    files = sorted((demo.examples / "tasks").glob("*.yaml"))
    names = [load_documents(f)[0]["metadata"]["name"] for f in files]
    statuses = {name: demo.wait_task(name) for name in names}
    demo.say(f"[{demo.elapsed():6.1f}s] all {len(names)} tasks finished:")
    demo.kubectl("get", "dtask", "-o", "wide")
    demo.kubectl(
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
    demo.say(
        f"  ✓ all {len(names)} tasks routed as the comments in examples/tasks/ say "
        "(requiresLocal, local, no delegation and the typo stay on vllm)"
    )
    demo.kubectl("get", "dtask", "auto", "-o", 'jsonpath=answer: {.status.result.text}{"\\n"}')


def break_backend(demo: Demo) -> None:
    demo.step("Break the in-cluster backend: vllm answers HTTP 503 to everything")
    demo.old_pid = demo.supervisor.pid(demo.ns, "vllm") if demo.supervisor else None
    if demo.node:
        demo.old_pod = demo_node.serving_pod(demo)
    FakeBackendControl(demo.backends["vllm"].removesuffix("/v1")).set(mode="error", status=503)
    demo.note("vllm now answers 503. A task with delegation allowed arrives at once:")
    task = load_documents(demo.examples / "tasks" / "auto.yaml")[0]
    task["metadata"]["name"] = "auto-failover"
    demo.kubectl("create", "-f", "-", input=dump([task]))
    status = demo.wait_task("auto-failover")
    demo.kubectl("get", "dtask", "auto-failover", "-o", "wide")
    demo.kubectl(
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
        demo.say(f"  ✓ failover: vllm failed, {result} answered (a Spillover: the work left")
        demo.say("    the Sovereign tier because this task allows delegation)")
    else:
        demo.say(f"  note: the probes had already excluded vllm; {result} answered directly")


def chain_line(demo: Demo) -> str:
    status = demo.chain_status("default")
    vllm = demo.provider("default", "vllm")
    return (
        f"vllm {vllm.get('state', '?'):<11}"
        f" probeFailures={vllm.get('consecutiveProbeFailures')}"
        f"  HEALTHY {status.get('healthySummary', '?')}"
        f"  activeOrder={','.join(status.get('activeOrder') or [])}"
    )


def follow(demo: Demo, what: str, done: Callable[[], bool]) -> None:
    """Print each change of the default chain's status until ``done()``."""
    last = ""

    def check() -> bool:
        nonlocal last
        finished = done()
        line = chain_line(demo)  # read after done(): shows the state that ended the wait
        if line != last:
            demo.say(f"  [{demo.elapsed():6.1f}s] {line}")
            last = line
        return finished

    demo.wait(what, check)


def watch_exclusion(demo: Demo) -> None:
    demo.step("Probes fail: vllm turns Unhealthy and is Excluded from the active order")
    follow(
        demo,
        "vllm to be Excluded",
        lambda: demo.provider("default", "vllm").get("state") == "Excluded",
    )
    demo.say(f"[{demo.elapsed():6.1f}s] while vllm is out, tasks go straight to the cloud:")
    demo.kubectl("get", "pchain", "-o", "wide")
    show_provider_states(demo)


def watch_restart(demo: Demo) -> None:
    demo.step("Self-healing: chainop restarts the vllm Deployment")

    def annotated() -> str | None:
        result = cluster.kubectl(
            "get",
            "deployment",
            "vllm",
            "-n",
            demo.ns,
            "-o",
            "jsonpath={.spec.template.metadata.annotations.chainop\\.dev/restartedAt}",
            check=False,
        )
        return result.stdout.strip() or None

    demo.wait("the restart annotation on Deployment vllm", annotated)
    demo.kubectl(
        "get",
        "deployment",
        "vllm",
        "-o",
        'jsonpath=pod template annotations: {.spec.template.metadata.annotations}{"\\n"}',
    )
    if demo.node:
        demo_node.watch_pod_replaced(demo)
        return
    demo.note("the supervisor (playing kubelet) saw the new pod template: restarting vllm")
    assert demo.supervisor is not None
    try:
        restarts = demo.supervisor.wait_for_restarts(
            demo.ns, "vllm", 1, timeout=demo.options.wait_timeout
        )
    except SupervisorError as error:
        raise DemoError(str(error)) from error
    new_pid = demo.supervisor.pid(demo.ns, "vllm")
    demo.say(
        f"  ✓ [{demo.elapsed():6.1f}s] vllm backend restarted ({restarts} restart, "
        f"pid {demo.old_pid} -> {new_pid}), serving again"
    )


def restart_count(demo: Demo) -> int:
    """How often chainop restarted the vllm Deployment."""
    if demo.supervisor is not None:
        return demo.supervisor.restarts(demo.ns, "vllm")
    result = cluster.kubectl(
        "get", "deployment", "vllm", "-n", demo.ns, "-o",
        "jsonpath={.metadata.annotations.chainop\\.dev/restart-history}", check=False,
    )  # fmt: skip
    return len([part for part in result.stdout.strip().split(",") if part])


def watch_recovery(demo: Demo) -> None:
    demo.step("Recovery: a recovery probe succeeds, vllm is restored at the head")

    def restored() -> bool:
        for name in demo.chain_names:
            status = demo.chain_status(name)
            if status.get("healthy") != status.get("total"):
                return False
            if "vllm" not in (status.get("activeOrder") or []):
                return False
        return demo.chain_status("default").get("activeOrder") == [
            "vllm",
            "openai",
            "anthropic",
        ]

    follow(demo, "vllm to be restored, Healthy", restored)
    demo.say(f"[{demo.elapsed():6.1f}s] ✓ restored at its original position, Healthy:")
    restarts = restart_count(demo)
    demo.note(f"(the vllm Deployment was restarted {restarts} time(s) in all)")
    demo.kubectl("get", "pchain", "-o", "wide")
    show_provider_states(demo)
    demo.note("local work runs on vllm again:")
    task = load_documents(demo.examples / "tasks" / "auto.yaml")[0]
    task["metadata"]["name"] = "auto-after-recovery"
    demo.kubectl("create", "-f", "-", input=dump([task]))
    status = demo.wait_task("auto-after-recovery")
    demo.kubectl("get", "dtask", "auto-failover", "auto-after-recovery", "-o", "wide")
    if (status.get("result") or {}).get("provider") != "vllm":
        raise DemoError(f"auto-after-recovery did not run on vllm: {status}")


def show_events(demo: Demo) -> None:
    demo.step("The story in Events and metrics")
    demo.note("(lastTimestamp has 1s resolution: events of the same second may come in any")
    demo.note(" order; note the one BackendRestarted although both chains excluded vllm)")
    demo.kubectl(
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "--field-selector",
        "involvedObject.kind=ProviderChain",
    )
    demo.kubectl(
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "--field-selector",
        "involvedObject.name=auto-failover",
    )
    demo.kubectl(
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "--field-selector",
        "involvedObject.kind=Deployment,involvedObject.name=vllm",
    )
    show_metrics(demo)


def show_metrics(demo: Demo) -> None:
    import httpx

    wanted = (
        "chainop_failovers_total",
        "chainop_spillovers_total",
        "chainop_exclusions_total",
        "chainop_backend_restarts_total",
        "chainop_restores_total",
    )
    try:
        text = httpx.get(demo.metrics_url, timeout=5).text
    except httpx.HTTPError as error:
        demo.note(f"(metrics not readable: {error})")
        return
    demo.say(f"  $ curl -s {demo.metrics_url} | grep ...")
    for line in text.splitlines():
        if line.startswith(wanted):
            demo.say(f"    {line}")


#: The story, scene by scene (``Demo.run`` plays them, then cleans up).
SCENES: tuple[Callable[[Demo], None], ...] = (
    control_plane,
    crds_and_namespace,
    start_backends,
    start_operator,
    apply_chains,
    route_tasks,
    break_backend,
    watch_exclusion,
    watch_restart,
    watch_recovery,
    demo_llama.real_model_server,
    show_events,
)
