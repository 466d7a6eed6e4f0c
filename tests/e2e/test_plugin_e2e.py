"""We test these aspects: every ``kubectl chainop`` command, run as the real console script
(``.venv/bin/kubectl-chainop``) with the test's kubeconfig, against the local control plane
and the operator: decide (nothing created), submit --wait (attempts on stderr, answer,
footer), a large answer read back from its ConfigMap, result, get, status, drain/undrain
(spec.drains written with who/why/until), replay (label, preferred provider), explain;
and the error paths: unknown chain/provider/task, bad file, no cluster — a clear message,
the documented exit code, nothing created or changed (checked with the API).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from chainop.core.models import GROUP, VERSION
from chainop.operator.restarts import HISTORY as RESTART_HISTORY
from chainop.testing import cluster as cluster_helpers
from chainop.testing.admission import serve_args
from tests.e2e.kit import Kit
from tests.e2e.test_admission_e2e import (  # the webhook set-up of the admission tests
    CORPUS as ADMISSION,
)
from tests.e2e.test_admission_e2e import (
    install_webhooks,  # noqa: F401  (fixture)
    tls,  # noqa: F401  (fixture)
    wait_in_effect,
    wait_listening,
)

pytestmark = pytest.mark.cluster

PLUGIN = Path(sys.executable).parent / "kubectl-chainop"


def plugin(kubeconfig: Path, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl-chainop ARGS`` as a user would, in the test's namespace."""
    return subprocess.run(
        [str(PLUGIN), *args, "-n", namespace, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def write_task(path: Path, name: str, routing: dict[str, Any], content: str = "hi") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DelegatedTask",
                "metadata": {"name": name},
                "spec": {
                    "chain": "default",
                    "routing": routing,
                    "request": {"messages": [{"role": "user", "content": content}]},
                },
            }
        )
    )
    return path


def task_names(kit: Kit) -> list[str]:
    listing = kit.api.custom.list_namespaced_custom_object(
        GROUP, VERSION, kit.namespace, "delegatedtasks"
    )
    return sorted(item["metadata"]["name"] for item in listing["items"])


def test_every_command_against_the_operator(kit: Kit, operator, backends, kubeconfig, tmp_path):
    onprem, cloud = backends("onprem"), backends("cloud")
    kit.create_chain(
        "default",
        [
            kit.provider("onprem", onprem.url, "Sovereign", model="onprem-model"),
            kit.provider("cloud", cloud.url, "Standard"),
        ],
        health={"failureThreshold": 5, "transientRetries": 0},
    )
    kit.chain_ready("default")
    run = lambda *args: plugin(kubeconfig, kit.namespace, *args)  # noqa: E731
    task = write_task(tmp_path / "t.yaml", "first", {"allowDelegation": True})

    # decide: the operator's decision, nothing created.
    decided = run("decide", "-f", str(task), "-o", "json")
    assert decided.returncode == 0, decided.stderr
    data = json.loads(decided.stdout)
    assert data["providers"] == ["onprem", "cloud"]
    assert data["reason"] == "preferredProvider=auto: active order"
    assert [s["state"] for s in data["states"]] == ["Healthy", "Healthy"]
    assert task_names(kit) == []

    # submit --wait: answer on stdout, footer on stderr.
    submitted = run("submit", "-f", str(task), "--wait", "--timeout", "60")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "[onprem] echo: hi"
    assert "— provider onprem · attempt 1 of 1" in submitted.stderr

    # A failover shows both attempts as progress; the quick form needs no file.
    onprem.set_mode("error", status=503)
    quick = run(
        "submit", "--chain", "default", "--prompt", "again", "--allow-delegation", "--wait",
        "--name", "second",
    )  # fmt: skip
    assert quick.returncode == 0, quick.stderr
    assert "attempt 1: onprem TransientError" in quick.stderr
    assert "attempt 2: cloud Succeeded" in quick.stderr
    assert "— provider cloud · attempt 2 of 2" in quick.stderr
    onprem.set_mode("healthy")

    # A large answer lives in the task's ConfigMap; submit and result read it from there.
    big = "x" * 20_000
    large = run(
        "submit", "--chain", "default", "--prompt", big, "--wait", "--name", "large",
    )  # fmt: skip
    assert large.returncode == 0, large.stderr
    assert kit.get("delegatedtasks", "large")["status"]["result"]["outputConfigMap"]
    assert large.stdout.strip() == f"[onprem] echo: {big}"
    again = run("result", "large")
    assert again.returncode == 0
    assert again.stdout == large.stdout
    result_json = json.loads(run("result", "second", "-o", "json").stdout)
    assert result_json["result"]["provider"] == "cloud"

    listed = run("get")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "PHASE", "PROVIDER", "ATTEMPTS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["first", "Succeeded", "onprem"],
        ["large", "Succeeded", "onprem"],
        ["second", "Succeeded", "cloud"],
    ]

    status = run("status", "-o", "json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["tasks"] == {"Succeeded": 3}
    assert summary["spend"]["source"] == "sum of task costs"
    assert [p["name"] for p in summary["chains"][0]["providers"]] == ["onprem", "cloud"]
    assert "namespace " + kit.namespace in run("status").stdout

    # drain / undrain: spec.drains, who, why, until; an unknown provider changes nothing.
    drained = run(
        "drain", "default", "cloud", "--for", "30m", "--reason", "incident 42", "--wait",
    )  # fmt: skip
    assert drained.returncode == 0, drained.stderr
    assert "cloud: Drained" in drained.stderr
    after = json.loads(run("decide", "-f", str(task), "-o", "json").stdout)
    assert after["providers"] == ["onprem"]
    assert "drained by hand, skipped: cloud" in after["reason"]
    assert after["states"][1]["state"] == "Drained"
    (entry,) = kit.get("providerchains", "default")["spec"]["drains"]
    assert entry["provider"] == "cloud"
    assert entry["reason"] == "incident 42"
    # `by` is who the API server authenticated (the admin certificate's CN), not the
    # kubeconfig's user entry name (see test_a_drain_records_the_authenticated_user).
    assert entry["by"] == "chainop-admin"
    assert entry["since"] < entry["until"]
    shown = json.loads(run("status", "-o", "json").stdout)["chains"][0]["providers"][1]
    assert shown["drain"]["reason"] == "incident 42"
    version = kit.get("providerchains", "default")["metadata"]["resourceVersion"]
    unknown = run("drain", "default", "clod")
    assert unknown.returncode == 3
    assert "has no provider 'clod' (it has: onprem, cloud)" in unknown.stderr
    assert kit.get("providerchains", "default")["metadata"]["resourceVersion"] == version
    undrained = run("undrain", "default", "cloud", "--wait")
    assert undrained.returncode == 0, undrained.stderr
    assert "cloud: back in service" in undrained.stderr
    assert not kit.get("providerchains", "default")["spec"].get("drains")
    idle = run("undrain", "default", "cloud")
    assert idle.returncode == 0
    assert "not drained; nothing changed" in idle.stderr

    # replay on another provider: same request, labelled with its origin.
    replayed = run("replay", "first", "--provider", "cloud", "--name", "first-on-cloud", "--wait")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "[cloud] echo: hi"
    copy = kit.get("delegatedtasks", "first-on-cloud")
    assert copy["metadata"]["labels"]["chainop.dev/replay-of"] == "first"
    assert copy["spec"]["routing"]["preferredProvider"] == "cloud"
    assert copy["spec"]["request"] == kit.get("delegatedtasks", "first")["spec"]["request"]

    explained = run("explain", "default")
    assert explained.returncode == 0, explained.stderr
    assert "ProviderChain default" in explained.stdout
    assert "onprem (Sovereign, openai):" in explained.stdout
    assert "cloud (Standard, openai):" in explained.stdout
    assert "Normal  Validated: 2 providers" in explained.stdout


def test_error_paths_say_why_and_create_nothing(kit: Kit, kubeconfig, tmp_path):
    run = lambda *args: plugin(kubeconfig, kit.namespace, *args)  # noqa: E731
    task = write_task(tmp_path / "t.yaml", "orphan", {"allowDelegation": True})

    no_chain = run("submit", "-f", str(task))
    assert no_chain.returncode == 3, no_chain.stderr
    assert "ProviderChain 'default' not found" in no_chain.stderr
    assert run("decide", "-f", str(task)).returncode == 3
    assert run("drain", "default", "cloud").returncode == 3
    assert run("explain", "default").returncode == 3
    missing = run("result", "nope")
    assert missing.returncode == 3
    assert "DelegatedTask 'nope' not found" in missing.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("spec:\n  chain: default\n  request: {messages: [{role: robot}]}\n")
    rejected = run("submit", "-f", str(bad))
    assert rejected.returncode == 2
    assert "spec.request.messages.0.role" in rejected.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert run("submit", "-f", str(broken)).returncode == 2
    assert task_names(kit) == []

    # A task nobody runs (no operator here) has no result yet.
    kit.create_chain("default", [kit.provider("cloud", "http://127.0.0.1:9", "Standard")])
    unreported = run("decide", "-f", str(task))
    assert unreported.returncode == 0, unreported.stderr
    assert "the chain has no status yet (is the operator running?)" in unreported.stdout
    kit.create_task("waiting")
    pending = run("result", "waiting")
    assert pending.returncode == 6
    assert "no result yet" in pending.stderr


def test_no_cluster_is_exit_code_4(tmp_path):
    closed = cluster_helpers.free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "gone", "cluster": {"server": f"https://127.0.0.1:{closed}"}}
                ],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}],
                "current-context": "gone",
            }
        )
    )
    task = write_task(tmp_path / "t.yaml", "t", {})
    for args in (("get",), ("status",), ("submit", "-f", str(task)), ("drain", "c", "p")):
        result = plugin(kubeconfig, "default", *args)
        assert result.returncode == 4, (args, result.stderr)
        assert f"cannot reach the cluster at https://127.0.0.1:{closed}" in result.stderr
    unknown_context = plugin(kubeconfig, "default", "get", "--context", "nope")
    assert unknown_context.returncode == 4
    assert "context 'nope' is not in the kubeconfig" in unknown_context.stderr


def test_concurrent_drains_lose_nothing_and_restarts_left_count_the_hour(
    kit: Kit, kubeconfig, tmp_path
):
    names = ["a", "b", "c", "d"]
    kit.create_chain(
        "default",
        [kit.provider(n, "http://127.0.0.1:9", "Standard") for n in names[:-1]]
        + [kit.provider("d", "http://127.0.0.1:9", "Sovereign", backend={"deployment": "d"})],
        selfHealing={"maxRestartsPerHour": 3},
    )
    # Four people drain four providers at once: each patch is conditional on the version
    # it read, and a lost race re-reads, so every entry survives.
    racers = [
        subprocess.Popen(
            [
                str(PLUGIN),
                "drain",
                "default",
                name,
                "--reason",
                f"r-{name}",
                "-n",
                kit.namespace,
                "--kubeconfig",
                str(kubeconfig),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
    drains = kit.get("providerchains", "default")["spec"]["drains"]
    assert sorted((d["provider"], d["reason"]) for d in drains) == [(n, f"r-{n}") for n in names]

    # Restarts left this hour: maxRestartsPerHour minus the backend's recent restarts,
    # read from the Deployment's ledger (one an hour ago no longer counts).
    kit.create_deployment("d")
    now = time.time()
    kit.api.apps.patch_namespaced_deployment(
        "d",
        kit.namespace,
        {"metadata": {"annotations": {RESTART_HISTORY: f"{now - 7200:.3f},{now - 60:.3f}"}}},
    )
    status = json.loads(plugin(kubeconfig, kit.namespace, "status", "-o", "json").stdout)
    left = {p["name"]: p["restartsLeftThisHour"] for p in status["chains"][0]["providers"]}
    assert left == {"a": None, "b": None, "c": None, "d": 2}


def test_a_drain_records_the_authenticated_user_not_the_kubeconfig_entry(
    kit: Kit, kubeconfig, tmp_path
):
    # The same credentials under another local name, as kubeconfigs name users
    # ("admin", "default") on many laptops: `by` must say who the API server saw.
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for user in config["users"]:
        user["name"] = "laptop-profile"
    for context in config["contexts"]:
        context["context"]["user"] = "laptop-profile"
    renamed = tmp_path / "kubeconfig"
    renamed.write_text(yaml.safe_dump(config))
    kit.create_chain(
        "default",
        [kit.provider(n, "http://127.0.0.1:9", "Standard") for n in ("a", "b")],
    )
    result = plugin(renamed, kit.namespace, "drain", "default", "a", "--reason", "who")
    assert result.returncode == 0, result.stderr
    (entry,) = kit.get("providerchains", "default")["spec"]["drains"]
    assert entry["by"] == "chainop-admin"  # the admin certificate's CN (hack/cluster-up.sh)


@pytest.mark.timeout(240)
def test_admission_warnings_and_denials_reach_the_user(
    kit: Kit,
    start_operator,
    install_webhooks,  # noqa: F811  (the admission tests' fixtures)
    tls,  # noqa: F811
    kubeconfig,
    tmp_path,
):
    ca, crt, key = tls
    port = cluster_helpers.free_port()
    start_operator(
        *serve_args(port, crt, key),
    )
    wait_listening(port, ca)
    install_webhooks(port, ca.read_bytes())
    wait_in_effect(ADMISSION / "deny-duplicate-provider-names.yaml", kit.namespace, kubeconfig)
    run = lambda *args: plugin(kubeconfig, kit.namespace, *args)  # noqa: E731
    kit.create_chain("cloud", [kit.provider("only", "http://127.0.0.1:9", "Standard")])

    # A warning is shown as kubectl shows it, and the task is created.
    task = tmp_path / "local.yaml"
    task.write_text(
        (ADMISSION / "warn-task-requires-local.yaml").read_text().replace("warn-task-", "")
    )
    warned = run("submit", "-f", str(task))
    assert warned.returncode == 0, warned.stderr
    assert (
        "Warning: spec.routing.requiresLocal: the task may run only on Sovereign (local) "
        "providers and chain 'cloud' has none"
    ) in warned.stderr
    assert task_names(kit) == ["requires-local"]

    # A denial is the API server's refusal, word for word, and the chain is unchanged.
    before = kit.get("providerchains", "cloud")["metadata"]["resourceVersion"]
    denied = run("drain", "cloud", "only")
    assert denied.returncode == 1
    assert "denied the request" in denied.stderr
    assert "draining 'only' leaves no provider in service" in denied.stderr
    assert kit.get("providerchains", "cloud")["metadata"]["resourceVersion"] == before
