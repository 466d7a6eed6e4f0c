"""The real node: Ready by its Lease, pods on the pod network, logs/exec/port-forward, and a
teardown that leaves the host clean (listed check by check) and allows a second node-up.

Pods run the locally made base image (Debian bookworm + python3; no registry here).
The last test takes the node down and up again: keep it last in this file.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from chainop.testing import cluster as cluster_helpers

from .conftest import BASE_IMAGE, BRIDGE, Node, read_env_file, report, run_script

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

SERVICE_IP = "10.0.0.1"
# hack/node-lib.sh SYSCTLS, as recorded in host-before.env
SYSCTLS = {
    "SYSCTL_vm_overcommit_memory": "vm.overcommit_memory",
    "SYSCTL_kernel_panic": "kernel.panic",
    "SYSCTL_kernel_panic_on_oops": "kernel.panic_on_oops",
    "SYSCTL_net_ipv4_ip_forward": "net.ipv4.ip_forward",
}
POD_CIDR_PREFIX = os.environ.get("POD_CIDR", "10.213.0.0/24").rsplit(".", 1)[0] + "."

# In a pod: GET /version from the API server at the kubernetes service (DNAT to 127.0.0.1),
# TLS verified with the ServiceAccount's CA, authenticated with its token.
API_FROM_POD = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
req = urllib.request.Request(f"https://{host}:{port}/version",
                             headers={"Authorization": "Bearer " + open(sa + "token").read()})
print(host, port, json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"])
"""
GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)"


def test_node_ready_by_its_lease(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    age = node.lease_age()
    assert age is not None, f"no Lease for {node.name}"
    assert age < 30, f"Lease of {node.name} not renewed for {age:.0f}s"
    assert node.ready_condition() == "True"
    data = node.get_json("node", node.name)
    status = data["status"]
    assert isinstance(status, dict)
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"].startswith(POD_CIDR_PREFIX), addresses  # the bridge's IP
    info = status["nodeInfo"]
    report(
        capsys,
        "node:",
        [
            f"{node.name} Ready, Lease renewed {age:.1f}s ago; "
            f"InternalIP {addresses['InternalIP']}",
            f"kubelet {info['kubeletVersion']}, {info['containerRuntimeVersion']}, "
            f"kernel {info['kernelVersion']}",
            f"session's node-up (incl. base image check) took {node.up_seconds:.1f}s",
        ],
    )


def test_pods_network_logs_exec_port_forward(
    node: Node, node_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = node_namespace
    node.run_pod(ns, "server", ["python3", "-u", "-m", "http.server", "8080"], port=8080)
    node.run_pod(ns, "client", ["sleep", "infinity"])
    t_running = node.wait_running(ns, "server", "client")
    server_ip = node.kubectl(
        "get", "pod", "-n", ns, "server", "-o", "jsonpath={.status.podIP}"
    ).stdout.strip()
    assert server_ip.startswith(POD_CIDR_PREFIX), server_ip

    # exec + the API server at the service IP, from a pod.
    api = node.kubectl("exec", "-n", ns, "client", "--", "python3", "-c", API_FROM_POD)
    assert api.stdout.split()[:2] == [SERVICE_IP, "443"], api.stdout
    assert api.stdout.split()[2].startswith("v1."), api.stdout

    # Pod to pod, by IP.
    p2p = node.kubectl(
        "exec", "-n", ns, "client", "--", "python3", "-c", GET, f"http://{server_ip}:8080/"
    )
    assert p2p.stdout.strip() == "200", p2p.stdout

    # logs: the server logged the client's request.
    logs = node.kubectl("logs", "-n", ns, "server").stdout
    assert re.search(r'"GET / HTTP/1\.1" 200', logs), logs

    # port-forward from this machine's loopback to the server pod.
    port = cluster_helpers.free_port()
    pf = subprocess.Popen(
        [
            cluster_helpers.kubectl_path(), "--kubeconfig", str(node.kubeconfig),
            "port-forward", "-n", ns, "pod/server", f"{port}:8080", "--address", "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        status = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    status = r.status
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200, "port-forward did not answer"
    finally:
        pf.terminate()
        pf.wait(10)
    report(
        capsys,
        "pods:",
        [
            f"2 pods Running {t_running:.1f}s after creation (image {BASE_IMAGE})",
            f"pod -> API server at https://{SERVICE_IP}:443 (TLS verified): "
            f"{api.stdout.split()[2]}",
            f"pod -> pod {server_ip}:8080: HTTP {p2p.stdout.strip()}",
            "kubectl logs, exec, port-forward: ok",
        ],
    )


def _our_processes(node: Node) -> list[str]:
    cache_bin = str(cluster_helpers.cache_dir() / "bin")
    sock = str(node.node_dir / "containerd.sock")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        ours = (
            f"{cache_bin}/kubelet " in cmd
            or f"{cache_bin}/kube-scheduler " in cmd
            or f"--config {node.node_dir}/containerd" in cmd
            or ("containerd-shim" in cmd and sock in cmd)
        )
        if ours:
            found.append(f"{proc.name}: {cmd[:100]}")
    return found


def _mounts_under(paths: list[str]) -> list[str]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == p or target.startswith(p + "/") for p in paths):
            out.append(target)
    return out


def _iptables_leftovers(before: dict[str, str]) -> list[str]:
    leftovers = []
    for ipt in ("iptables", "ip6tables"):
        pre = set(before.get(f"CHAINS_{ipt}", "").split())
        for table in ("filter", "nat", "mangle"):
            proc = subprocess.run(
                [ipt, "-t", table, "-S"], capture_output=True, text=True, check=False
            )
            for rule in proc.stdout.splitlines():
                m = re.match(r"-N (\S+)", rule)
                if m and m.group(1).startswith(("KUBE-", "CHAINOP-")):
                    if f"{table}:{m.group(1)}" not in pre:
                        leftovers.append(f"{ipt} -t {table}: chain {m.group(1)}")
                elif "CHAINOP-" in rule or POD_CIDR_PREFIX in rule:
                    leftovers.append(f"{ipt} -t {table}: {rule}")
    return leftovers


def _host_checks(node: Node, before: dict[str, str]) -> list[tuple[str, bool, str]]:
    fixed = [
        "/run/containerd",
        "/var/lib/kubelet",
        "/var/lib/cni",
        "/var/log/pods",
        "/var/log/containers",
        "/run/netns",
        "/var/lib/kubelet/device-plugins",
    ]  # fmt: skip  (the order of hack/node-lib.sh FIXED_PATHS + device-plugins)
    created = [p for i, p in enumerate(fixed) if before.get(f"EXISTED_{i}") == "0"]
    checks: list[tuple[str, bool, str]] = []

    procs = _our_processes(node)
    what = "no kubelet, kube-scheduler, containerd or shim of ours"
    checks.append((what, not procs, "; ".join(procs)))

    mounts = _mounts_under([str(node.node_dir), *[p for p in created if p != fixed[-1]]])
    what = f"no mounts under {node.node_dir} or {', '.join(created) or '-'}"
    checks.append((what, not mounts, " ".join(mounts)))

    pre_cg = before.get("KUBEPODS_EXISTED", "").split()
    roots = [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]  # v2 root, v1 hierarchies
    cgs = [str(h / "kubepods") for h in roots if (h / "kubepods").is_dir() and h.name not in pre_cg]
    checks.append(("no kubepods cgroup in any hierarchy", not cgs, " ".join(cgs)))

    bridge = subprocess.run(["ip", "-o", "link", "show", BRIDGE], capture_output=True, check=False)
    checks.append((f"no bridge {BRIDGE}", bridge.returncode != 0, ""))
    veths = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=False
    ).stdout.split("\n")
    veth_names = sorted({v.split(":")[1].strip().split("@")[0] for v in veths if v.strip()})
    pre_veths = before.get("VETHS_BEFORE", "").split()
    new_veths = [v for v in veth_names if v not in pre_veths]
    checks.append(("no pod veth left", not new_veths, " ".join(new_veths)))

    ipt = _iptables_leftovers(before)
    checks.append((
        "no iptables chain/rule of ours (KUBE-FIREWALL, KUBE-KUBELET-CANARY v4/v6, "
        "KUBE-IPTABLES-HINT, CHAINOP-NODE-DNAT, pod CIDR rules)",
        not ipt, "; ".join(ipt),
    ))  # fmt: skip

    for key, want in sorted(before.items()):
        if key.startswith("SYSCTL_"):
            name = SYSCTLS[key]
            now = Path("/proc/sys", *name.split(".")).read_text().strip()
            what = f"sysctl {name} = {want} (as before node-up)"
            checks.append((what, now == want, f"now {now}"))

    left = [p for p in created if os.path.lexists(p)]
    what = f"host paths node-up created are gone: {', '.join(created) or '-'}"
    checks.append((what, not left, " ".join(left)))

    ready = node.ready_condition()
    age = node.lease_age()
    checks.append((
        f"Node {node.name} gone or not Ready, Lease not renewed",
        ready in (None, "False", "Unknown") and (age is None or age > 5),
        f"Ready={ready} lease age={age}",
    ))  # fmt: skip
    return checks


def test_node_down_leaves_host_clean_then_node_up_again(
    node: Node, node_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A pod is running when the node goes down (its sandbox, netns, mounts, veth, cgroups).
    node.run_pod(node_namespace, "victim", ["sleep", "infinity"])
    node.wait_running(node_namespace, "victim")
    before_file = node.node_dir / "host-before.env"
    assert before_file.is_file()
    before = read_env_file(before_file)

    t0 = time.monotonic()
    down = run_script("node-down.sh", timeout=300)
    t_down = time.monotonic() - t0
    assert down.returncode == 0, down.stdout

    checks = _host_checks(node, before)
    report(
        capsys,
        f"node-down ({t_down:.1f}s) - host checks:",
        [f"{'ok  ' if ok else 'FAIL'} {w}{'' if ok else ': ' + d}" for w, ok, d in checks],
    )
    assert all(ok for _, ok, _ in checks), [c for c in checks if not c[1]]

    # While it is down: a host that cannot run a node gets one line and exit code 2.
    cannot = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_script("node-up.sh", env={"KUBELET_PORT": str(port)}, timeout=60)
        cannot.append(("port in use", r))
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         str(cluster_helpers.repo_root() / "hack" / "node-up.sh")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=60,
    )  # fmt: skip
    cannot.append(("not root", nobody))
    for what, r in cannot:
        assert r.returncode == 2, f"{what}: rc={r.returncode}\n{r.stdout}"
        assert len(r.stdout.strip().splitlines()) == 1, r.stdout
        assert "Traceback" not in r.stdout, r.stdout
    assert "in use" in cannot[0][1].stdout
    assert "not root" in cannot[1][1].stdout
    assert not subprocess.run(["ip", "-o", "link", "show", BRIDGE], capture_output=True).stdout

    # A second node-up after node-down works.
    t0 = time.monotonic()
    up = run_script("node-up.sh", timeout=600)
    t_up = time.monotonic() - t0
    assert up.returncode == 0, up.stdout
    assert node.live_and_ready()
    node.run_pod(node_namespace, "again", ["sleep", "infinity"])
    t_pod = node.wait_running(node_namespace, "again")
    report(
        capsys,
        "cannot-run and second node-up:",
        [
            *(f"{what}: exit 2, {r.stdout.strip()}" for what, r in cannot),
            f"second node-up: Ready (Lease) in {t_up:.1f}s; a pod Running {t_pod:.1f}s later",
        ],
    )
