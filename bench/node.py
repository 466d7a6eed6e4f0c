"""Issue 13 on the real node (``python -m bench node``).

Skipped, with the reason printed, when the node of ``hack/node-up.sh`` is not up
(``CHAINOP_NODE_CLUSTER_DIR``, else ``CHAINOP_CLUSTER_DIR``, picks its cluster). One helm
release of the chart (image ``localhost/chainop:dev``, ``replicaCount=2``) in a namespace
of its own, serving two namespaces of its own:

* **install** — ``helm install --wait`` started → the operator pods Ready → a chain (the
  fake vLLM, a real Deployment already Running) Ready;
* **self-healing on pods** — the fake vLLM's engine hangs (``hung_engine``) or it answers
  503: failure → Excluded → chainop's restart patch → the kubelet's new pod Ready →
  provider restored. Also *killed* (its process SIGKILLed from the host): the kubelet
  restarts the container in place by itself; what chainop sees is recorded;
* **takeover** — the active operator replica SIGKILLed right after its keep-alive renewal
  and its pod deleted: kill → first probe by a live replica;
* **scale** — 1,000 ProviderChains x 3 providers over 50 endpoints (served on the host's
  pod-bridge address by ``bench/operator_backends.py``): the operator pods' CPU and memory
  read from their cgroups (v1: ``cpuacct.usage``, ``memory.usage_in_bytes`` and the
  working set the kubelet reports, ``usage - total_inactive_file``) against the chart's
  requests and limits (``helm get values --all``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import node_kit as nk

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("node (python -m bench node)")
    g.add_argument("--node-port", type=int, default=18110, help="fake vLLM hostNetwork port")
    g.add_argument("--node-endpoints-port", type=int, default=18120, help="first of 50 ports")
    g.add_argument("--node-chains", type=int, default=1000)
    g.add_argument("--node-endpoints", type=int, default=50)
    g.add_argument("--node-scale-interval", type=int, default=10)
    g.add_argument("--node-scale-seconds", type=float, default=60.0)
    g.add_argument("--node-scale-settle", type=float, default=15.0)
    g.add_argument("--node-kills", type=int, default=2, help="takeover rounds")
    g.add_argument(
        "--node-only", default="install,healing,takeover,scale", help="comma list of parts"
    )


class _ClusterDir:
    """Point chainop.testing.cluster at the node's cluster for the duration."""

    def __enter__(self) -> None:
        self.saved = os.environ.get("CHAINOP_CLUSTER_DIR")
        node_dir = os.environ.get("CHAINOP_NODE_CLUSTER_DIR")
        if node_dir:
            os.environ["CHAINOP_CLUSTER_DIR"] = node_dir

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop("CHAINOP_CLUSTER_DIR", None)
        else:
            os.environ["CHAINOP_CLUSTER_DIR"] = self.saved


def run(args: Any) -> dict[str, Any]:
    with _ClusterDir():
        reason = nk.node_reason()
        if reason is not None:
            log(f"node bench skipped: {reason}")
            return {"skipped": reason}
        return _run(args)


def _run(args: Any) -> dict[str, Any]:
    only = set(args.node_only.split(","))
    suffix = uuid.uuid4().hex[:5]
    ns, scale_ns, system = f"n2-bn-{suffix}", f"n2-bn-scale-{suffix}", f"n2-bn-sys-{suffix}"
    release = nk.Release(f"chainop-n2-bench-{suffix}", system, [ns, scale_ns], replicas=2)
    gw = nk.gateway()
    url = f"http://{gw}:{args.node_port}"
    out: dict[str, Any] = {"release": release.name, "loadavg_at_start": _load()}
    for name in (ns, scale_ns):
        nk.kubectl("create", "namespace", name)
    try:
        nk.apply(nk.fake_vllm(args.node_port), ns)
        nk.kubectl("rollout", "status", "-n", ns, "deploy/vllm", "--timeout=120s", timeout=130)
        out["install"] = install(release, ns, url)
        values = release.values()
        out["chart"] = {
            "resources": values.get("resources"),
            "lifetime": values.get("peering", {}).get("lifetimeSeconds"),
            "replicas": values.get("replicaCount"),
        }
        if "healing" in only:
            out["healing"] = healing(release, ns, url)
        if "takeover" in only:
            out["takeover"] = takeover(release, ns, args.node_kills)
        if "scale" in only:
            out["scale"] = scale(args, release, scale_ns, gw)
    finally:
        with contextlib.suppress(Exception):
            release.uninstall()
        for name in (ns, scale_ns, system):
            nk.kubectl("delete", "namespace", name, "--wait=false", check=False)
    out["loadavg_at_end"] = _load()
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def install(release: nk.Release, ns: str, url: str) -> dict[str, Any]:
    probe = {"intervalSeconds": 2, "timeoutSeconds": 1, "unhealthyThreshold": 2}
    body = nk.chain(
        "default",
        [nk.provider("vllm", url, backend={"deployment": "vllm"})],
        probe=probe,
        recovery={"initialSeconds": 2, "maxSeconds": 8},
    )
    crd = nk.kubectl("get", "crd", "providerchains.chainop.dev", check=False).returncode == 0
    if crd:  # the chain waits for the operator: install → Ready is all the operator's
        nk.apply(body, ns)
    t0 = time.monotonic()
    helm_s = release.install()
    if not crd:
        nk.apply(body, ns)
    nk.wait_until(
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (nk.get_json("pchain", "-n", ns, "default").get("status") or {}).get(
                "conditions", []
            )
        ),
        timeout=120,
        what="chain Ready",
        every=0.1,
    )
    ready_s = time.monotonic() - t0
    result = {
        "helm_wait_s": round(helm_s, 1),
        "chain_ready_s": round(ready_s, 1),
        "chain_before_install": crd,
        "probe": probe,
    }
    log(f"node install: {json.dumps(result)}")
    return result


def _vllm_host_pid(port: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"chainop.testing.fake_backend" in cmd and str(port).encode() in cmd:
                return int(entry.name)
    return None


def healing(release: nk.Release, ns: str, url: str) -> list[dict[str, Any]]:
    port = int(url.rsplit(":", 1)[1])
    runs = []
    for kind in ("hung engine", "503", "killed"):
        nk.wait_until(
            lambda: (
                nk.provider_state(ns, "default", "vllm").get("state") == "Healthy"
                and nk.ready_pod_uid(ns, "vllm") is not None
            ),
            timeout=120,
            what="vllm Healthy",
        )
        time.sleep(1.3)
        old_uid = nk.ready_pod_uid(ns, "vllm")
        restarts0 = _container_restarts(ns, old_uid)
        patch0 = _restarted_at(ns)
        t0 = time.monotonic()
        if kind == "hung engine":
            nk.control(url, mode="hung_engine")
        elif kind == "503":
            nk.control(url, mode="error", status=503)
        else:
            pid = _vllm_host_pid(port)
            assert pid is not None, "no fake vLLM process on the host"
            os.kill(pid, 9)
        seen: dict[str, float] = {}
        end = t0 + 120
        while time.monotonic() < end:
            now = time.monotonic() - t0
            state = nk.provider_state(ns, "default", "vllm").get("state")
            if state in ("Unhealthy", "Excluded") and "excluded" not in seen:
                seen["excluded"] = now
            if "patched" not in seen and _restarted_at(ns) != patch0:
                seen["patched"] = now
            uid = nk.ready_pod_uid(ns, "vllm")
            if "new_pod_ready" not in seen and uid not in (None, old_uid):
                seen["new_pod_ready"] = now
            in_place = _container_restarts(ns, old_uid)
            if "container_restarted" not in seen and in_place > restarts0:
                seen["container_restarted"] = now  # the kubelet, in place (killed)
            if state == "Healthy" and ("new_pod_ready" in seen or "container_restarted" in seen):
                seen["restored"] = now
                break
            time.sleep(0.1)
        pods = nk.get_json("pods", "-n", ns, "-l", "app=vllm")["items"]
        restart_counts = [
            (p["status"].get("containerStatuses") or [{}])[0].get("restartCount") for p in pods
        ]
        run = {
            "kind": kind,
            **{f"to_{k}_s": round(v, 1) for k, v in seen.items()},
            "container_restart_counts": restart_counts,
        }
        log(f"node healing {kind}: {json.dumps(run)}")
        runs.append(run)
    return runs


def _container_restarts(ns: str, uid: str | None = None) -> int:
    """restartCount of a vllm pod's container (the kubelet's in-place restarts): of the pod
    ``uid``, else the highest of the pods not being deleted."""
    counts = [
        int(((pod["status"].get("containerStatuses") or [{}])[0]).get("restartCount") or 0)
        for pod in nk.get_json("pods", "-n", ns, "-l", "app=vllm")["items"]
        if (uid is None or pod["metadata"]["uid"] == uid)
        and not pod["metadata"].get("deletionTimestamp")
    ]
    return max(counts, default=0)


def _restarted_at(ns: str) -> str | None:
    dep = nk.get_json("deploy", "-n", ns, "vllm")
    annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get("chainop.dev/restartedAt")
    return None if value is None else str(value)


def _leader(release: nk.Release) -> tuple[str, str] | None:
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in release.pods()}
    leading = [n for n, ip in pods.items() if nk.pod_metric(ip, "chainop_leader") == 1]
    others = [n for n in pods if n not in leading]
    if len(pods) == 2 and len(leading) == 1:
        return leading[0], others[0]
    return None


def takeover(release: nk.Release, ns: str, kills: int) -> list[dict[str, Any]]:
    rounds = []
    for _ in range(kills):
        active, standby = nk.wait_until(
            lambda: _leader(release), timeout=120, what="one leader", every=0.5
        )
        time.sleep(4.5)
        if _leader(release) != (active, standby):
            active, standby = nk.wait_until(
                lambda: _leader(release), timeout=120, what="one leader", every=0.5
            )
        pid = nk.host_pid(active)
        assert pid is not None
        before = nk.lastseen(ns, release.peering, active)
        while nk.lastseen(ns, release.peering, active) == before:
            time.sleep(0.02)
        os.kill(pid, 9)
        killed = time.time()
        nk.kubectl("delete", "pod", "-n", release.namespace, active, "--wait=false")
        record = nk.peers(ns, release.peering).get(active) or {}
        renewed = datetime.fromisoformat(str(record["lastseen"])).timestamp()
        survivor_ip = next(
            p["status"]["podIP"] for p in release.pods() if p["metadata"]["name"] == standby
        )
        baseline = {survivor_ip: nk.pod_metric(survivor_ip, "chainop_probes_total") or 0.0}
        probed = by = None
        while probed is None and time.time() < killed + 60:
            for pod in release.pods():
                ip = pod["status"]["podIP"]
                value = nk.pod_metric(ip, "chainop_probes_total")
                if value is not None and value > baseline.get(ip, 0.0):
                    probed, by = time.time(), pod["metadata"]["name"]
                    break
            time.sleep(0.1)
        result = {
            "killed_after_renewal_s": round(killed - renewed, 2),
            "renewal_to_probe_s": None if probed is None else round(probed - renewed, 2),
            "kill_to_probe_s": None if probed is None else round(probed - killed, 2),
            "by": "survivor" if by == standby else "replacement pod",
        }
        log(f"node takeover: {json.dumps(result)}")
        rounds.append(result)
    return rounds


def _pod_cgroups(release: nk.Release) -> dict[str, dict[str, Any]]:
    """pod → its chainop container's cgroups (memory, cpuacct, cpu) and whether it leads."""
    out = {}
    for pod in release.pods():
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        pid = nk.host_pid(name)
        if pid is None:
            continue
        out[name] = {
            "ip": pod["status"]["podIP"],
            "memory": nk.container_cgroup("memory", uid, pid),
            "cpuacct": nk.container_cgroup("cpuacct", uid, pid),
            "cpu": nk.container_cgroup("cpu", uid, pid),
            "leader": nk.pod_metric(pod["status"]["podIP"], "chainop_leader") == 1,
        }
    return out


def _throttled(path: Path) -> int:
    for line in (path / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "nr_throttled":
            return int(value)
    return 0


def scale(args: Any, release: nk.Release, ns: str, gw: str) -> dict[str, Any]:
    n = args.node_endpoints
    ports = [args.node_endpoints_port + i for i in range(n)]
    server = subprocess.Popen(
        [PY, "-m", "bench.operator_backends", "--host", gw, *map(str, ports)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, Any] = {"chains": args.node_chains, "endpoints": n}
    result["interval"] = args.node_scale_interval
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"backends did not start: {line!r}")
        pods = _pod_cgroups(release)
        result["idle"] = {
            name: nk.cgroup_memory(c["memory"]) for name, c in pods.items() if c["memory"]
        }
        cpu_limit = {name: nk.cgroup_cpu_limit(c["cpu"]) for name, c in pods.items() if c["cpu"]}
        result["cfs_cpu_limit"] = cpu_limit
        cpu0 = {name: nk.cgroup_cpu_seconds(c["cpuacct"]) for name, c in pods.items()}

        def chain(i: int) -> dict[str, Any]:
            picks = [i % n, (i + 17) % n, (i + 31) % n]
            return {
                "apiVersion": "chainop.dev/v1alpha1",
                "kind": "ProviderChain",
                "metadata": {"name": f"c{i:04d}"},
                "spec": {
                    "providers": [
                        {
                            "name": f"p{j}",
                            "type": "openai",
                            "endpoint": f"http://{gw}:{ports[e]}/v1",
                            "model": "fake-model",
                            "privacyTier": "Sovereign",
                        }
                        for j, e in enumerate(picks)
                    ],
                    "health": {
                        "probe": {"intervalSeconds": args.node_scale_interval, "mode": "Active"}
                    },
                },
            }

        log(f"node scale: creating {args.node_chains} chains")
        t0 = time.monotonic()
        batches = [
            list(range(s, min(s + 100, args.node_chains))) for s in range(0, args.node_chains, 100)
        ]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: nk.apply([chain(i) for i in b], ns), batches))
        result["create_seconds"] = round(time.monotonic() - t0, 1)
        ready = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            items = nk.get_json("pchain", "-n", ns)["items"]
            ready = sum(
                1
                for o in items
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (o.get("status") or {}).get("conditions", [])
                )
            )
            if ready >= args.node_chains:
                break
            time.sleep(3)
        result["ready"] = ready
        result["all_ready_seconds"] = round(time.monotonic() - t0, 1)
        result["startup_cpu_s"] = {
            name: round(nk.cgroup_cpu_seconds(c["cpuacct"]) - cpu0[name], 1)
            for name, c in pods.items()
        }
        log(f"node scale: {ready} Ready after {result['all_ready_seconds']} s; settling")
        time.sleep(args.node_scale_settle)
        cpu1 = {name: nk.cgroup_cpu_seconds(c["cpuacct"]) for name, c in pods.items()}
        thr0 = {name: _throttled(c["cpu"]) for name, c in pods.items()}
        w0 = time.monotonic()
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in pods}
        while time.monotonic() - w0 < args.node_scale_seconds:
            for name, c in pods.items():
                samples[name].append(nk.cgroup_memory(c["memory"]))
            time.sleep(5)
        wall = time.monotonic() - w0
        per_pod = {}
        for name, c in pods.items():
            cpu = nk.cgroup_cpu_seconds(c["cpuacct"]) - cpu1[name]
            mem = nk.cgroup_memory(c["memory"])
            text = nk.scrape(c["ip"])
            per_pod[name] = {
                "leader": c["leader"],
                "cpu_millicores": round(1000 * cpu / wall),
                "working_set_mib_max": max(s["working_set_mib"] for s in samples[name]),
                "usage_mib_max": max(s["usage_mib"] for s in samples[name]),
                "rss_mib": mem["rss_mib"],
                "max_usage_mib": mem["max_usage_mib"],
                "limit_mib": mem["limit_mib"],
                "throttled_periods": _throttled(c["cpu"]) - thr0[name],
                "provider_state_series": sum(
                    1 for x in text.splitlines() if x.startswith("chainop_provider_state{")
                ),
                "probes_total": nk.metric(text, "chainop_probes_total"),
            }
        result["window_seconds"] = round(wall, 1)
        result["pods"] = per_pod
        result["loadavg"] = _load()
        log(f"node scale: {json.dumps(per_pod)}")
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        nk.kubectl("delete", "pchain", "--all", "-n", ns, "--wait=false", check=False, timeout=300)
    return result
