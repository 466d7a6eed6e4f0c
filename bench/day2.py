"""Day-to-day operation (issue 16): what the admission webhook adds to a write, and what a
``kubectl chainop`` command costs next to ``kubectl`` itself.

``python -m bench day2`` on the local control plane (started if needed), two parts:

1. **Admission latency.** chainop runs with ``--admission-port`` (a certificate for
   127.0.0.1 made with openssl) and a ValidatingWebhookConfiguration that selects one
   namespace. ProviderChains and DelegatedTasks are created (then deleted) through the
   python client in that namespace (the API server calls chainop) and in a twin namespace
   the webhook does not select (the baseline), alternating one of each so both see the
   same machine. A task's review reads its chain through the API (the warning about a
   missing chain), so it costs more than a chain's. Figures: p50/p95 of the create call,
   and the difference.
2. **Plugin commands.** Wall time of ``kubectl-chainop decide --offline`` (no cluster),
   ``kubectl-chainop get`` and ``status`` beside ``kubectl get delegatedtasks`` (the
   baseline a user would otherwise type), medians of ``--d2-runs`` runs each.

Results go to ``bench/results/latest.json`` (key ``day2``) and section 9 of
docs/benchmarks.md (:func:`render`). Nothing here is asserted: it is measured.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from chainop.core.models import GROUP, VERSION
from chainop.testing import cluster
from chainop.testing.admission import (
    make_tls,
    serve_args,
    wait_listening,
    webhook_configuration,
)
from chainop.testing.cluster import ProcessRunner, free_port, kubectl

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## 9. Day-to-day operation: admission and the plugin (issue 16)"
PLUGIN = Path(sys.executable).parent / "kubectl-chainop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The section's options (prefixed, as the other sections' are)."""
    parser.add_argument("--d2-creates", type=int, default=60, help="creates per kind and side")
    parser.add_argument("--d2-runs", type=int, default=7, help="runs per plugin command")


def _chain(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProviderChain",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "providers": [
                {
                    "name": "vllm",
                    "type": "openai",
                    "endpoint": "http://127.0.0.1:9/v1",
                    "model": "m",
                    "privacyTier": "Sovereign",
                }
            ]
        },
    }


def _task(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DelegatedTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"chain": "absent", "request": {"messages": [{"role": "user", "content": "hi"}]}},
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _create_latencies(api: Any, namespaces: dict[str, str], creates: int) -> dict[str, Any]:
    """Create/delete alternately in the webhook's namespace and the baseline's."""
    plural = {"chain": "providerchains", "task": "delegatedtasks"}
    make = {"chain": _chain, "task": _task}
    times: dict[str, dict[str, list[float]]] = {
        kind: {side: [] for side in namespaces} for kind in plural
    }
    for i in range(creates):
        for kind in plural:
            for side, ns in namespaces.items():
                body = make[kind](f"{kind}-{i}", ns)
                began = time.perf_counter()
                api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural[kind], body)
                times[kind][side].append((time.perf_counter() - began) * 1000)
                api.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, plural[kind], f"{kind}-{i}"
                )
    out: dict[str, Any] = {}
    for kind, sides in times.items():
        out[kind] = {
            side: {
                "p50_ms": round(statistics.median(v), 1),
                "p95_ms": round(_percentile(v, 0.95), 1),
            }
            for side, v in sides.items()
        }
    return out


def _wall(args: list[str], runs: int, kubeconfig: Path) -> float:
    """Median wall seconds of a command (its exit code checked: a failure is no figure)."""
    env_args = ["env", f"KUBECONFIG={kubeconfig}"]
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*env_args, *args], check=True, capture_output=True, timeout=120)
        samples.append(time.perf_counter() - began)
    return round(statistics.median(samples) * 1000, 0)


def _plugin_times(kubeconfig: Path, namespace: str, runs: int, work: Path) -> dict[str, Any]:
    chain_file, task_file = work / "chain.yaml", work / "task.yaml"
    chain_file.write_text(yaml.safe_dump(_chain("default", namespace)))
    task = _task("t", namespace)
    task["spec"]["chain"] = "default"
    task_file.write_text(yaml.safe_dump(task))
    plugin, kc = str(PLUGIN), cluster.kubectl_path()
    return {
        "kubectl get delegatedtasks": _wall(
            [kc, "get", "delegatedtasks", "-n", namespace], runs, kubeconfig
        ),
        "kubectl-chainop decide --offline": _wall(
            [plugin, "decide", "--offline", "-f", str(chain_file), "-f", str(task_file)],
            runs,
            kubeconfig,
        ),
        "kubectl-chainop get": _wall([plugin, "get", "-n", namespace], runs, kubeconfig),
        "kubectl-chainop status": _wall([plugin, "status", "-n", namespace], runs, kubeconfig),
        "kubectl-chainop --help": _wall([plugin, "--help"], runs, kubeconfig),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts; returns the section's figures. A control plane this started is stopped
    again (one found running is left running)."""
    found = cluster.cluster_running()
    try:
        return _measure(args)
    finally:
        if not found:
            print("day2 bench: stopping the control plane it started", file=sys.stderr)
            try:
                cluster.stop_cluster()
            except (cluster.ClusterError, subprocess.TimeoutExpired) as error:
                print(f"day2 bench: could not stop the control plane: {error}", file=sys.stderr)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = cluster.ensure_cluster()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    api = cluster.connect(kubeconfig)
    suffix = str(int(time.time()))
    namespaces = {"webhook": f"bench-adm-{suffix}", "baseline": f"bench-base-{suffix}"}
    for ns in namespaces.values():
        api.core.create_namespace({"metadata": {"name": ns}})
    hook = f"chainop-bench-{suffix}"
    work = Path(tempfile.mkdtemp(prefix="chainop-bench-day2-"))
    try:
        ca, crt, key = make_tls(work / "tls")
        port = free_port()
        command = [
            *(sys.executable, "-m", "chainop", "run", "-n", namespaces["webhook"]),
            *("--liveness", "", "--log-format", "plain", "--metrics-port", "0"),
            *serve_args(port, crt, key),
        ]
        with ProcessRunner(command, log_path=work / "operator.log"):
            wait_listening(port, ca)
            config = webhook_configuration(hook, namespaces["webhook"], port, ca.read_bytes())
            kubectl("apply", "-f", "-", input=yaml.safe_dump(config))
            time.sleep(2)  # the API server's webhook informer picks the configuration up
            _create_latencies(api, namespaces, 5)  # warm-up: connections, caches
            admission = _create_latencies(api, namespaces, args.d2_creates)
            plugin = _plugin_times(kubeconfig, namespaces["webhook"], args.d2_runs, work)
    finally:
        kubectl("delete", "validatingwebhookconfiguration", hook, "--ignore-not-found", check=False)
        for ns in namespaces.values():
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
        api.close()
    return {
        "settings": {"creates": args.d2_creates, "runs": args.d2_runs},
        "admission": admission,
        "plugin_ms": plugin,
    }


def render(section: dict[str, Any]) -> str:
    """Section 9 of docs/benchmarks.md from one run's figures."""
    s, adm = section["settings"], section["admission"]
    lines = [
        TITLE,
        "",
        f"Measured by `{section.get('command', 'python -m bench day2')}` on "
        f"{section.get('machine', {}).get('date', '?')} (load average "
        f"{section.get('loadavg_at_start', '?')} at start), on the local control plane.",
        "",
        "### 9.1 What the admission webhook adds to a create",
        "",
        f"{s['creates']} creates per kind and side through the python client, alternating "
        "between a namespace the webhook selects (the API server calls chainop over TLS on "
        "127.0.0.1) and one it does not (baseline). A task's review reads its chain through "
        "the API (to warn about a missing one); a chain's is pure.",
        "",
        "| object | baseline p50 ms | webhook p50 ms | added p50 ms | baseline p95 | webhook p95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, label in (("chain", "ProviderChain"), ("task", "DelegatedTask")):
        base, hook = adm[kind]["baseline"], adm[kind]["webhook"]
        lines.append(
            f"| {label} | {base['p50_ms']} | {hook['p50_ms']} | "
            f"{round(hook['p50_ms'] - base['p50_ms'], 1)} | {base['p95_ms']} | {hook['p95_ms']} |"
        )
    lines += [
        "",
        "### 9.2 Plugin commands",
        "",
        f"Wall time, median of {s['runs']} runs, beside `kubectl get` (the baseline a user "
        "would type otherwise). Python's start-up and chainop's models are the `--help` row; "
        "a command imports only the kubernetes client's API modules it uses (`CoreV1Api` "
        "alone takes ~0.9 s: `get` measured 1,152 ms before it was built on first use).",
        "",
        "| command | median ms |",
        "|---|---:|",
    ]
    for command, ms in section["plugin_ms"].items():
        lines.append(f"| `{command}` | {ms:g} |")
    return "\n".join(lines) + "\n"
