"""Issue 7 items 3-5: the operator on the real control plane (``python -m bench operator``).

* **throughput** — 500 DelegatedTasks created in a burst from a thread pool against an
  instant fake backend: tasks/s until all Succeeded, create→Succeeded p50/p95/p99 (our
  own send time → the watch event that shows Succeeded), API writes per task; baseline in
  the same run: a trivial kopf ``on.create`` handler (``bench/operator_kopf.py``) on a
  throwaway CRD with the same burst. Rounds alternate the order (kopf first, then chainop
  first, ...) so a drift in the machine's load favours neither. Plus one task at a time
  on an idle operator.
* **self-healing** — a backend bound to a Deployment by the supervisor, killed (refused)
  or broken (HTTP 503): break → Unhealthy/Excluded → Deployment patched → backend up →
  restored, each interval against the chain's probe and recovery settings.
* **scale** — 1,000 ProviderChains x 3 providers over 50 endpoints, all actively probed:
  RSS, CPU share, probes per minute (per endpoint, from each endpoint's own counters),
  status writes per minute.

API write counts come from three places, because the API server is shared with other
work: the API server's ``apiserver_request_total`` (cluster-wide, no namespace label),
the watch stream of our namespace (every write that changed an object shows up as one
event with a new resourceVersion; a no-op patch would not) and chainop's own
``chainop_status_writes_total``.

The control plane: one found running (``CHAINOP_CLUSTER_DIR`` picks which) is used and
left running; one this bench had to start is stopped at the end (``--keep-cluster``
keeps it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chainop.testing import cluster
from chainop.testing.cluster import ProcessRunner, free_port, kubectl

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
GROUP, VERSION = "chainop.dev", "v1alpha1"
TASKS, CHAINS = "delegatedtasks", "providerchains"
KGROUP, KVERSION, KPLURAL = "bench.chainop.dev", "v1", "benchthings"
KOPF_CRD = f"{KPLURAL}.{KGROUP}"
RESTARTED_AT = "chainop.dev/restartedAt"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")

KOPF_CRD_YAML = f"""\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {KOPF_CRD}}}
spec:
  group: {KGROUP}
  scope: Namespaced
  names: {{plural: {KPLURAL}, singular: benchthing, kind: BenchThing}}
  versions:
  - name: {KVERSION}
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --------------------------------------------------------------------------- API access


def api() -> Any:
    """A kubernetes ApiClient with a pool large enough for the burst."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig_path()), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def custom(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def apiserver_writes() -> Counter[tuple[str, str, str]]:
    """Cluster-wide write requests so far, by (resource, subresource, verb)."""
    text = kubectl("get", "--raw", "/metrics", timeout=30).stdout
    out: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        key = (labels.get("resource", ""), labels.get("subresource", ""), labels["verb"])
        out[key] += int(float(line.rsplit(" ", 1)[1]))
    return out


def diff(after: Counter[Any], before: Counter[Any]) -> dict[str, int]:
    return {
        "/".join(p for p in k if p): after[k] - before.get(k, 0)
        for k in sorted(after)
        if after[k] - before.get(k, 0) > 0
    }


def scrape(port: int) -> dict[str, float]:
    """A Prometheus text page as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def series_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Namespace:
    """A throwaway namespace, deleted (without waiting) on exit."""

    def __init__(self, prefix: str, *, wait: bool = False) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.wait = wait

    def __enter__(self) -> str:
        kubectl("create", "namespace", self.name)
        return self.name

    def __exit__(self, *exc: object) -> None:
        # Waiting keeps the namespace controller's clean-up out of the next measurement.
        kubectl(
            "delete",
            "namespace",
            self.name,
            f"--wait={str(self.wait).lower()}",
            check=False,
            timeout=300,
        )


def ensure_crds() -> None:
    cluster.ensure_cluster()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        f"crd/{CHAINS}.{GROUP}",
        f"crd/{TASKS}.{GROUP}",
    )


# --------------------------------------------------------------------------- watching


class Watcher:
    """Watch one plural in one namespace; note when each object first looked done.

    ``done(obj)`` decides; ``events[name]`` counts ADDED/MODIFIED events (each one a write
    that changed the object), ``done_at[name]`` is the monotonic time of the first event
    that was done. Waiters block on a Condition.
    """

    def __init__(
        self, api_client: Any, group: str, version: str, plural: str, namespace: str, done: Any
    ) -> None:
        self.api = custom(api_client)
        self.args = (group, version, namespace, plural)
        self.done = done
        self.events: Counter[str] = Counter()
        self.done_at: dict[str, float] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.stopped = False
        listed = self.api.list_namespaced_custom_object(*self.args)
        self.rv = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from kubernetes import watch

        while not self.stopped:
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.api.list_namespaced_custom_object,
                    *self.args,
                    resource_version=self.rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=False,
                ):
                    now = time.monotonic()
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    with self.cond:
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.events[name] += 1
                            self.last[name] = obj
                            if name not in self.done_at and self.done(obj):
                                self.done_at[name] = now
                                self.cond.notify_all()
                    if self.stopped:
                        break
            except Exception as error:  # reconnect (the stream times out every 60 s)
                if not self.stopped:
                    log(f"watch {self.args[3]}: {type(error).__name__}: {error}")
                    time.sleep(0.2)

    def wait(self, names: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.done_at for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def wait_for(self, predicate: Any, timeout: float) -> float | None:
        """Wait until ``predicate(last objects)`` holds; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if predicate(self.last):
                    return time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))

    def stop(self) -> None:
        self.stopped = True


def task_done(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def thing_done(obj: dict[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("done"))


# --------------------------------------------------------------------------- contenders


class Contender:
    """One operator under test: how to start it and what object it handles."""

    key = ""
    label = ""
    group = version = plural = ""

    def __init__(self, namespace: str, logs: Path) -> None:
        self.namespace = namespace
        self.logs = logs
        self.runner: ProcessRunner | None = None
        self.metrics_port: int | None = None

    def done(self, obj: dict[str, Any]) -> bool:
        raise NotImplementedError

    def body(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def own_writes(self) -> float | None:
        return None


class Chainop(Contender):
    key, label = "chainop", "chainop (DelegatedTask, 1-provider chain, instant backend)"
    group, version, plural = GROUP, VERSION, TASKS

    def __init__(self, namespace: str, logs: Path, backend_url: str, tick: float) -> None:
        super().__init__(namespace, logs)
        self.backend_url = backend_url
        self.tick = tick

    def done(self, obj: dict[str, Any]) -> bool:
        return task_done(obj)

    def body(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DelegatedTask",
            "metadata": {"name": name},
            "spec": {
                "chain": "bench",
                "request": {"messages": [{"role": "user", "content": "hi"}], "maxTokens": 8},
            },
        }

    def chain(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ProviderChain",
            "metadata": {"name": "bench"},
            "spec": {
                "providers": [
                    {
                        "name": "backend",
                        "type": "openai",
                        "endpoint": f"{self.backend_url}/v1",
                        "model": "fake-model",
                        "privacyTier": "Sovereign",
                    }
                ]
            },
        }

    def start(self) -> None:
        self.metrics_port = free_port()
        self.runner = ProcessRunner(
            [
                *(PY, "-m", "chainop", "run", "-n", self.namespace),
                *("--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"),
                *("--liveness", "", "--tick", str(self.tick), "--log-format", "plain"),
            ],
            log_path=self.logs / f"chainop-{self.namespace}.log",
        )
        self.runner.start()
        self.runner.wait_for_log(r"chainop started", timeout=60)

    def own_writes(self) -> float | None:
        assert self.metrics_port is not None
        return series_sum(scrape(self.metrics_port), "chainop_status_writes_total{")


class KopfTrivial(Contender):
    key, label = "kopf", "trivial kopf on.create handler (throwaway CRD, status.done=true)"
    group, version, plural = KGROUP, KVERSION, KPLURAL

    def done(self, obj: dict[str, Any]) -> bool:
        return thing_done(obj)

    def body(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{KGROUP}/{KVERSION}",
            "kind": "BenchThing",
            "metadata": {"name": name},
            "spec": {"request": {"messages": [{"role": "user", "content": "hi"}]}},
        }

    def start(self) -> None:
        self.runner = ProcessRunner(
            [PY, "-m", "bench.operator_kopf", self.namespace],
            log_path=self.logs / f"kopf-{self.namespace}.log",
            cwd=ROOT,
        )
        self.runner.start()
        self.runner.wait_for_log(r"kopf baseline starting", timeout=60)


def create(api_client: Any, c: Contender, name: str) -> None:
    custom(api_client).create_namespaced_custom_object(
        c.group, c.version, c.namespace, c.plural, c.body(name)
    )


def singles(api_client: Any, c: Contender, watcher: Watcher, count: int) -> list[float]:
    """Create→done latency of one object at a time, in ms."""
    out = []
    for i in range(count):
        name = f"single-{i}"
        sent = time.monotonic()
        create(api_client, c, name)
        if not watcher.wait([name], 30):
            raise RuntimeError(f"{c.key}: {name} not done within 30 s")
        out.append((watcher.done_at[name] - sent) * 1000)
        time.sleep(0.05)
    return out


def burst(
    api_client: Any, c: Contender, watcher: Watcher, count: int, threads: int, tag: str
) -> dict[str, Any]:
    """``count`` creates from ``threads`` threads; until all are done."""
    names = [f"burst-{tag}-{i}" for i in range(count)]
    sent: dict[str, float] = {}
    pid = c.runner.pid if c.runner else None
    assert pid is not None
    time.sleep(1.0)  # let earlier writes settle before the counters are read
    before_api = apiserver_writes()
    before_own = c.own_writes()
    before_events = sum(watcher.events.values())
    cpu0 = proc_cpu(pid)

    def one(name: str) -> None:
        sent[name] = time.monotonic()
        create(api_client, c, name)

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))
    created = time.monotonic()
    ok = watcher.wait(names, 180)
    t_end = max((watcher.done_at.get(n, time.monotonic()) for n in names), default=t0)
    cpu1 = proc_cpu(pid)
    time.sleep(2.0)  # trailing writes (e.g. bookkeeping after the handler) still count
    after_api = apiserver_writes()
    after_own = c.own_writes()
    latencies = [(watcher.done_at[n] - sent[n]) * 1000 for n in names if n in watcher.done_at]
    writes = diff(after_api, before_api)
    mine = writes.get(f"{c.plural}/POST", 0)
    # DELETEs are the namespace controller cleaning up an earlier namespace, not ours.
    obj_writes = sum(
        v for k, v in writes.items() if k.startswith(c.plural + "/") and not k.endswith("DELETE")
    )
    other = sum(v for k, v in writes.items() if not k.endswith("DELETE"))
    failed = sum(
        1 for n in names if (watcher.last.get(n, {}).get("status") or {}).get("phase") == "Failed"
    )
    per_object_events = [watcher.events[n] for n in names]
    return {
        "count": count,
        "all_done": ok,
        "done": len(latencies),
        "failed": failed,
        "create_seconds": round(created - t0, 3),
        "seconds": round(t_end - t0, 3),
        "tasks_per_s": round(len(latencies) / (t_end - t0), 1),
        "p50_ms": round(pct(latencies, 0.5), 1),
        "p95_ms": round(pct(latencies, 0.95), 1),
        "p99_ms": round(pct(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
        "operator_cpu_s": round(cpu1 - cpu0, 2),
        "operator_cpu_ms_per_task": round((cpu1 - cpu0) * 1000 / count, 2),
        "apiserver_writes": writes,
        "my_creates": mine,
        "operator_writes_per_task_apiserver": round((obj_writes - mine) / count, 2),
        "all_writes_per_task_apiserver": round((other - mine) / count, 2),
        "writes_per_task_watch": round(
            (sum(watcher.events.values()) - before_events - count) / count, 2
        ),
        "events_per_object": dict(Counter(per_object_events)),
        "own_counter_writes_per_task": (
            round((after_own - before_own) / count, 2)
            if after_own is not None and before_own is not None
            else None
        ),
        "loadavg": loadavg(),
    }


def run_contender(
    c: Contender, *, bursts: int, count: int, threads: int, single: int
) -> dict[str, Any]:
    api_client = api()
    watcher = Watcher(api_client, c.group, c.version, c.plural, c.namespace, c.done)
    try:
        c.start()
        create(api_client, c, "warmup")
        if not watcher.wait(["warmup"], 60):
            raise RuntimeError(f"{c.key}: warm-up object not done in 60 s")
        log(f"  {c.key}: {single} single objects")
        single_ms = singles(api_client, c, watcher, single)
        results = []
        for b in range(bursts):
            log(f"  {c.key}: burst {b + 1}/{bursts} of {count}")
            results.append(burst(api_client, c, watcher, count, threads, str(b)))
        assert c.runner
        assert c.runner.pid
        rss = proc_rss_mb(c.runner.pid)
        return {
            "label": c.label,
            "single_ms": [round(x, 1) for x in single_ms],
            "single_p50_ms": round(statistics.median(single_ms), 1),
            "single_p95_ms": round(pct(single_ms, 0.95), 1),
            "bursts": results,
            "rss_mb_after": round(rss, 1),
        }
    finally:
        watcher.stop()
        c.stop()
        api_client.close()


def throughput(args: Any, logs: Path) -> dict[str, Any]:
    """Item 3."""
    from bench.backend import Backend

    out: dict[str, Any] = {"count": args.count, "threads": args.threads, "tick": args.tick}
    kubectl("apply", "--server-side", "-f", "-", input=KOPF_CRD_YAML)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{KOPF_CRD}")
    # A new CRD makes the API server rebuild its OpenAPI documents (seconds of CPU):
    # let that pass before the first round rather than charge it to whoever goes first.
    time.sleep(5.0)
    try:
        with Backend("instant") as backend:
            # ABBA: kopf first in odd rounds, chainop first in even ones.
            order = [
                (r, key)
                for r in range(args.rounds)
                for key in (("kopf", "chainop") if r % 2 == 0 else ("chainop", "kopf"))
            ]
            out["order"] = [key for _, key in order]
            for r, key in order:
                log(f"throughput round {r + 1}/{args.rounds}: {key}")
                with Namespace(f"bench-op-{key}", wait=True) as ns:
                    if key == "chainop":
                        c: Contender = Chainop(ns, logs, backend.url, args.tick)
                        custom(api_client := api()).create_namespaced_custom_object(
                            GROUP,
                            VERSION,
                            ns,
                            CHAINS,
                            c.chain(),  # type: ignore[attr-defined]
                        )
                        api_client.close()
                    else:
                        c = KopfTrivial(ns, logs)
                    result = run_contender(
                        c,
                        bursts=1,
                        count=args.count,
                        threads=args.threads,
                        single=args.single,
                    )
                runs = out.setdefault(key, [])
                runs.append(result)
    finally:
        kubectl("delete", "crd", KOPF_CRD, "--wait=false", check=False)
    return out


# --------------------------------------------------------------------------- self-healing


def operator_process(namespace: str, *, tick: float, log_path: Path) -> tuple[ProcessRunner, int]:
    """chainop watching ``namespace``, its metrics on a free port of 127.0.0.1, liveness
    off, plain logs: how every section that measures the operator runs it (not started
    yet: use it as a context manager). Returns the runner and the metrics port."""
    metrics_port = free_port()
    runner = ProcessRunner(
        [
            *(PY, "-m", "chainop", "run", "-n", namespace, "--metrics-port", str(metrics_port)),
            *("--metrics-address", "127.0.0.1", "--liveness", ""),
            *("--tick", str(tick), "--log-format", "plain"),
        ],
        log_path=log_path,
    )
    return runner, metrics_port


def supervised_vllm_chain(
    api_client: Any,
    sup: Any,
    ns: str,
    *,
    chain: str,
    model: str,
    cloud_url: str,
    probe: dict[str, Any],
    recovery: dict[str, Any],
) -> int:
    """The self-healing setup of the healing and health benches; returns vllm's port.

    A ``vllm`` Deployment whose pod never runs on a node (``stand_in``): the supervisor
    runs a fake vLLM serving ``model`` as its process and restarts it when chainop patches
    the pod template; a ProviderChain ``chain`` of that vllm (Sovereign, with the
    Deployment as its backend) and a cloud fallback.
    """
    from kubernetes import client

    from chainop.testing.supervisor import stand_in

    port = free_port()
    labels = {"app": "vllm"}
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "s", "image": "vllm/vllm-openai"}]},
            },
        },
    }
    client.AppsV1Api(api_client).create_namespaced_deployment(ns, stand_in(deployment))
    command = [PY, "-m", "chainop.testing.fake_backend", "--port", str(port), "--name", "vllm"]
    command += ["--served-model-name", model]  # the chain's model: List probes check it
    sup.bind(ns, "vllm", command, port)
    custom(api_client).create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        CHAINS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ProviderChain",
            "metadata": {"name": chain},
            "spec": {
                "providers": [
                    {
                        "name": "vllm",
                        "type": "openai",
                        "endpoint": f"http://127.0.0.1:{port}/v1",
                        "model": model,
                        "privacyTier": "Sovereign",
                        "backend": {"deployment": "vllm"},
                    },
                    {
                        "name": "cloud",
                        "type": "openai",
                        "endpoint": f"{cloud_url}/v1",
                        "model": "m",
                        "privacyTier": "Standard",
                    },
                ],
                "health": {"failureThreshold": 2, "probe": probe},
                "selfHealing": {"maxRestartsPerHour": 50, "recovery": recovery},
            },
        },
    )
    return port


def healing(args: Any, logs: Path) -> dict[str, Any]:
    """Item 4: killed / broken backend → excluded → restarted → restored."""
    from chainop.testing.fake_backend import FakeBackendControl, FakeBackendThread
    from chainop.testing.supervisor import BackendSupervisor

    probe = {"intervalSeconds": args.probe_interval, "timeoutSeconds": 1, "unhealthyThreshold": 3}
    recovery = {"initialSeconds": args.recovery, "maxSeconds": args.recovery * 4}
    settings = {"probe": probe, "recovery": recovery, "tick": args.heal_tick}
    runs: list[dict[str, Any]] = []
    api_client = api()
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    with (
        Namespace("bench-heal") as ns,
        FakeBackendThread(name="cloud") as cloud,
        BackendSupervisor(log_dir=logs / "supervisor") as sup,
    ):
        port = supervised_vllm_chain(
            api_client, sup, ns, chain="heal", model="m", cloud_url=cloud.url, probe=probe,
            recovery=recovery,
        )  # fmt: skip
        chains = Watcher(api_client, GROUP, VERSION, CHAINS, ns, lambda o: False)
        deps = DeploymentWatch(apps, ns, "vllm")
        op, _ = operator_process(ns, tick=args.heal_tick, log_path=logs / f"chainop-{ns}.log")

        def vllm_state(last: dict[str, Any]) -> tuple[str, list[str]]:
            st = (last.get("heal") or {}).get("status") or {}
            state = next(
                (p.get("state", "") for p in st.get("providers", []) if p.get("name") == "vllm"), ""
            )
            return state, st.get("activeOrder", [])

        with op:
            op.wait_for_log(r"chainop started", timeout=60)
            for rep in range(args.heal_reps):
                for scenario in ("killed", "broken"):
                    ok = chains.wait_for(
                        lambda last: vllm_state(last) == ("Healthy", ["vllm", "cloud"]), 60
                    )
                    if ok is None:
                        raise RuntimeError(
                            f"vllm not Healthy before {scenario}: {vllm_state(chains.last)}"
                        )
                    # Break right after a probe would be the luckiest case and right before
                    # it the unluckiest; a random phase gives the typical case.
                    time.sleep(
                        1.0
                        + (rep * 0.37 + (scenario == "broken") * 0.61) % 1.0 * args.probe_interval
                    )
                    restarts = sup.restarts(ns, "vllm")
                    t_break = time.monotonic()
                    if scenario == "killed":
                        pid = sup.pid(ns, "vllm")
                        assert pid is not None
                        os.kill(pid, 9)
                    else:
                        FakeBackendControl(f"http://127.0.0.1:{port}").set(mode="error", status=503)
                    t_unhealthy = chains.wait_for(
                        lambda last: vllm_state(last)[0] in ("Unhealthy", "Excluded"), 60
                    )
                    t_excluded = chains.wait_for(
                        lambda last: vllm_state(last) == ("Excluded", ["cloud"]), 60
                    )
                    sup.wait_for_restarts(ns, "vllm", restarts + 1, timeout=60)
                    t_up = time.monotonic()  # the supervisor returns once the port accepts
                    t_restored = chains.wait_for(
                        lambda last: vllm_state(last) == ("Healthy", ["vllm", "cloud"]), 60
                    )
                    run = {
                        "scenario": scenario,
                        "break_to_unhealthy_s": _interval(t_break, t_unhealthy),
                        "break_to_excluded_s": _interval(t_break, t_excluded),
                        "break_to_backend_up_s": _interval(t_break, t_up),
                        "backend_up_to_restored_s": _interval(t_up, t_restored),
                        "break_to_restored_s": _interval(t_break, t_restored),
                        "loadavg": loadavg(),
                    }
                    run["break_to_patch_s"] = _interval(t_break, deps.first_after(t_break))
                    log(f"  healing {scenario} #{rep + 1}: {json.dumps(run)}")
                    runs.append(run)
        chains.stop()
        deps.stopped = True
        restarts_total = sup.restarts(ns, "vllm")
    api_client.close()
    return {"settings": settings, "runs": runs, "restarts": restarts_total}


def _interval(start: float, end: float | None) -> float | None:
    return None if end is None else round(end - start, 2)


class DeploymentWatch:
    """When each change of a Deployment's pod template (chainop's restart patch) was seen."""

    def __init__(self, apps: Any, namespace: str, name: str) -> None:
        self.apps, self.namespace, self.name = apps, namespace, name
        self.changes: list[tuple[float, str]] = []
        self.stopped = False
        dep = apps.read_namespaced_deployment(name, namespace)
        self.rv = dep.metadata.resource_version
        self.last = (dep.spec.template.metadata.annotations or {}).get(RESTARTED_AT)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from kubernetes import watch

        while not self.stopped:
            try:
                for event in watch.Watch().stream(
                    self.apps.list_namespaced_deployment,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=self.rv,
                    timeout_seconds=60,
                ):
                    now = time.monotonic()
                    dep = event["object"]
                    self.rv = dep.metadata.resource_version
                    value = (dep.spec.template.metadata.annotations or {}).get(RESTARTED_AT)
                    if value != self.last:
                        self.last = value
                        self.changes.append((now, str(value)))
                    if self.stopped:
                        break
            except Exception as error:
                if not self.stopped:
                    log(f"deployment watch: {type(error).__name__}: {error}")
                    time.sleep(0.2)

    def first_after(self, t: float) -> float | None:
        return next((when for when, _ in self.changes if when >= t), None)


# --------------------------------------------------------------------------- scale


def scale(args: Any, logs: Path) -> dict[str, Any]:
    """Item 5: 1,000 chains x 3 providers over 50 endpoints, all actively probed."""
    ports = [free_port() for _ in range(args.endpoints)]
    server = subprocess.Popen(
        [PY, "-m", "bench.operator_backends", *map(str, ports)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    api_client = api()
    result: dict[str, Any] = {
        "chains": args.chains,
        "endpoints": args.endpoints,
        "interval": args.scale_interval,
        "tick": args.tick,
    }
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"backends did not start: {line!r}")
        with Namespace("bench-scale") as ns:
            op, metrics_port = operator_process(
                ns, tick=args.tick, log_path=logs / f"chainop-{ns}.log"
            )
            with op:
                op.wait_for_log(r"chainop started", timeout=60)
                assert op.pid is not None
                result["rss_mb_idle"] = round(proc_rss_mb(op.pid), 1)
                k = custom(api_client)
                n = args.endpoints

                def chain(i: int) -> None:
                    picks = [i % n, (i + 17) % n, (i + 31) % n]
                    k.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        ns,
                        CHAINS,
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": "ProviderChain",
                            "metadata": {"name": f"c{i:04d}"},
                            "spec": {
                                "providers": [
                                    {
                                        "name": f"p{j}",
                                        "type": "openai",
                                        "endpoint": f"http://127.0.0.1:{ports[e]}/v1",
                                        "model": "fake-model",
                                        "privacyTier": "Sovereign",
                                    }
                                    for j, e in enumerate(picks)
                                ],
                                "health": {
                                    "probe": {
                                        "intervalSeconds": args.scale_interval,
                                        "mode": "Active",
                                    }
                                },
                            },
                        },
                    )

                log(f"scale: creating {args.chains} chains")
                t0 = time.monotonic()
                cpu0 = proc_cpu(op.pid)
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(chain, range(args.chains)))
                result["create_seconds"] = round(time.monotonic() - t0, 1)
                # Ready: every chain has a status with a Ready condition True.
                deadline = time.monotonic() + 300
                ready = 0
                while time.monotonic() < deadline:
                    listed = k.list_namespaced_custom_object(GROUP, VERSION, ns, CHAINS)
                    ready = sum(
                        1
                        for o in listed["items"]
                        if any(
                            c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (o.get("status") or {}).get("conditions", [])
                        )
                    )
                    if ready >= args.chains:
                        break
                    time.sleep(2)
                result["all_ready_seconds"] = round(time.monotonic() - t0, 1)
                result["ready"] = ready
                result["startup_cpu_s"] = round(proc_cpu(op.pid) - cpu0, 1)
                log(f"scale: {ready} ready after {result['all_ready_seconds']} s; settling")
                time.sleep(args.scale_settle)
                windows = []
                for w in range(args.scale_windows):
                    windows.append(scale_window(args, op.pid, metrics_port, ports))
                    log(f"scale window {w + 1}: {json.dumps(windows[-1])}")
                result["windows"] = windows
                result["rss_mb"] = round(proc_rss_mb(op.pid), 1)
                if args.profile_scale:
                    result["profile"] = profile_scale(op.pid, logs)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        api_client.close()
    return result


def endpoint_probes(ports: list[int]) -> list[int]:
    out = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as reply:
            stats = json.loads(reply.read())
        out.append(int(stats.get("requests", {}).get("models", 0)))
    return out


def scale_window(args: Any, pid: int, metrics_port: int, ports: list[int]) -> dict[str, Any]:
    seconds = args.scale_seconds
    m0 = scrape(metrics_port)
    api0 = apiserver_writes()
    e0 = endpoint_probes(ports)
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = proc_cpu(pid), time.monotonic()
    e1 = endpoint_probes(ports)
    api1 = apiserver_writes()
    m1 = scrape(metrics_port)
    wall = t1 - t0
    per_min = 60 / wall
    per_endpoint = [(b - a) * per_min for a, b in zip(e0, e1, strict=True)]
    writes = diff(api1, api0)
    return {
        "seconds": round(wall, 1),
        "cpu_share_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        "rss_mb": round(proc_rss_mb(pid), 1),
        "probes_per_min_backends": round(sum(per_endpoint), 1),
        "probes_per_min_per_endpoint_min": round(min(per_endpoint), 1),
        "probes_per_min_per_endpoint_max": round(max(per_endpoint), 1),
        "probes_per_min_chainop": round(
            (series_sum(m1, "chainop_probes_total{") - series_sum(m0, "chainop_probes_total{"))
            * per_min,
            1,
        ),
        "status_writes_per_min_chainop": round(
            (
                series_sum(m1, 'chainop_status_writes_total{kind="ProviderChain"}')
                - series_sum(m0, 'chainop_status_writes_total{kind="ProviderChain"}')
            )
            * per_min,
            1,
        ),
        "chain_status_patches_per_min_apiserver": round(
            writes.get(f"{CHAINS}/status/PATCH", 0) * per_min, 1
        ),
        "loadavg": loadavg(),
    }


def profile_scale(pid: int, logs: Path) -> dict[str, Any]:
    """py-spy is not installed here; the caller profiles with pyinstrument separately."""
    return {}


# --------------------------------------------------------------------------- entry


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("operator (python -m bench operator)")
    g.add_argument("--count", type=int, default=500, help="tasks per burst")
    g.add_argument("--threads", type=int, default=16, help="threads creating the burst")
    g.add_argument("--single", type=int, default=20, help="one-at-a-time tasks")
    g.add_argument(
        "--op-rounds",
        dest="op_rounds",
        type=int,
        default=4,
        help="throughput rounds (each: one kopf and one chainop burst, order alternating)",
    )
    g.add_argument("--tick", type=float, default=0.25, help="chainop --tick")
    g.add_argument("--probe-interval", type=int, default=2)
    g.add_argument("--recovery", type=int, default=3)
    g.add_argument("--heal-tick", type=float, default=0.25)
    g.add_argument("--heal-reps", type=int, default=2)
    g.add_argument("--chains", type=int, default=1000)
    g.add_argument("--endpoints", type=int, default=50)
    g.add_argument("--scale-interval", type=int, default=10)
    g.add_argument("--scale-seconds", type=float, default=60.0)
    g.add_argument("--scale-windows", type=int, default=2)
    g.add_argument("--scale-settle", type=float, default=15.0)
    g.add_argument("--profile-scale", action="store_true")
    g.add_argument(
        "--only", default="throughput,healing,scale", help="comma list of operator parts"
    )
    g.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave running a control plane this bench started (one it found is always left)",
    )


def run(args: Any) -> dict[str, Any]:
    """All operator parts; returns the ``operator`` section of the results."""
    if args.quick:
        args.op_rounds = 2
        args.single = 10
        args.heal_reps = 1
        args.scale_seconds = 30.0
        args.scale_windows = 1
    args.rounds = args.op_rounds
    found = cluster.cluster_running()
    log(
        f"operator bench: control plane {cluster.cluster_dir()} "
        + ("found running (left running)" if found else "not running: starting it")
    )
    try:
        return _run(args)
    finally:
        if not found and not getattr(args, "keep_cluster", False):
            log("operator bench: stopping the control plane it started")
            try:
                cluster.stop_cluster()
            except (cluster.ClusterError, subprocess.TimeoutExpired) as error:
                log(f"operator bench: could not stop the control plane: {error}")


def _run(args: Any) -> dict[str, Any]:
    ensure_crds()
    logs = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    log(f"operator bench: logs in {logs}; load average {loadavg()}")
    only = set(args.only.split(","))
    out: dict[str, Any] = {"logs": str(logs), "loadavg_at_start": loadavg()}
    if "throughput" in only:
        out["throughput"] = throughput(args, logs)
    if "healing" in only:
        out["healing"] = healing(args, logs)
    if "scale" in only:
        out["scale"] = scale(args, logs)
    out["loadavg_at_end"] = loadavg()
    return out
