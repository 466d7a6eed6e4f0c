"""We test these aspects: chain validation, secrets, kubectl output, TTL, results, metrics.

* a missing Secret gives Ready=False with a clear reason and an Event, while another
  chain keeps serving; creating the Secret makes the chain Ready;
* what only the operator can tell (duplicate names, a missing Deployment) is Ready=False
  with a CamelCase reason, never a crash;
* an API key never appears in status, Events, logs or metrics — even when a provider
  echoes it back;
* ``kubectl get pchain`` / ``kubectl get dtask`` show DESIGN's columns;
* finished tasks are deleted after ``ttlSecondsAfterFinished``;
* a task waits (Pending, with a reason) for a chain that does not exist yet;
* an answer too large for status goes to a ConfigMap owned by the task;
* ``/metrics`` exports the documented families.
"""

from __future__ import annotations

import urllib.request

import pytest

from chainop.testing.cluster import kubectl
from tests.e2e.kit import CHAINS, TASKS, Kit, ready_condition

pytestmark = pytest.mark.cluster

CANARY = "sk-canary-7f3a9c1e5b2d4e6f8a0b"


def test_missing_secret_is_not_ready_while_other_chains_work(kit: Kit, operator, backends):
    paid, free = backends("paid"), backends("free")
    kit.create_chain(
        "needs-key",
        [kit.provider("paid", paid.url, apiKeySecretRef={"name": "paid-key", "key": "apiKey"})],
        taskDefaults={"allowDelegation": True},
    )
    kit.create_chain(
        "default", [kit.provider("free", free.url)], taskDefaults={"allowDelegation": True}
    )
    obj = kit.wait(
        CHAINS,
        "needs-key",
        lambda o: ready_condition(o).get("reason") == "SecretNotFound",
        what="Ready=False SecretNotFound",
    )
    condition = ready_condition(obj)
    assert condition["status"] == "False"
    assert "paid-key" in condition["message"]
    kit.wait_until(lambda: "SecretNotFound" in kit.event_reasons("needs-key"), what="Event")
    kit.chain_ready("default")
    kit.create_task("works", chain="default")
    assert kit.wait_task("works")["phase"] == "Succeeded"

    # A task for the NotReady chain waits instead of failing...
    kit.create_task("waits", chain="needs-key")
    kit.wait(
        TASKS,
        "waits",
        lambda o: any(
            c["type"] == "Progressing" and c["reason"] == "ChainNotReady"
            for c in (o.get("status") or {}).get("conditions", [])
        ),
        what="Pending with ChainNotReady",
    )
    # ...and runs once the Secret exists.
    paid.configure(api_key=CANARY)
    kit.create_secret("paid-key", {"apiKey": CANARY})
    kit.chain_ready("needs-key", timeout=30)
    status = kit.wait_task("waits")
    assert status["phase"] == "Succeeded"
    assert status["result"]["text"].startswith("[paid]")


def test_api_key_never_reaches_status_events_logs_or_metrics(kit: Kit, operator, backends):
    paid, fallback = backends("paid"), backends("fallback")
    paid.configure(api_key=CANARY)
    kit.create_secret("paid-key", {"apiKey": CANARY})
    kit.create_chain(
        "default",
        [
            kit.provider("paid", paid.url, apiKeySecretRef={"name": "paid-key", "key": "apiKey"}),
            kit.provider("fallback", fallback.url),
        ],
        health={"transientRetries": 0, "probe": {"mode": "Active", "intervalSeconds": 1}},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("uses-key")
    assert kit.wait_task("uses-key")["result"]["provider"] == "paid"
    # Now the provider misbehaves and reflects the request headers (the key) back.
    paid.set_mode("error", status=500, echo_headers=True)
    kit.create_task("echoed")
    status = kit.wait_task("echoed")
    assert status["result"]["provider"] == "fallback"
    assert "HTTP 500" in status["attempts"][0]["error"]

    everything = "\n".join(
        [
            kubectl("get", "pchain,dtask", "-n", kit.namespace, "-o", "yaml").stdout,
            kubectl("get", "events", "-n", kit.namespace, "-o", "yaml").stdout,
            operator.log(),
            urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics")
            .read()
            .decode(),
        ]
    )
    assert "uses-key" in everything  # the scan did see the objects
    assert CANARY not in everything


@pytest.mark.parametrize(
    ("providers", "reason"),
    [
        ([{"name": "a"}, {"name": "a"}], "InvalidSpec"),
        ([{"name": "a", "backend": {"deployment": "nowhere"}}], "DeploymentNotFound"),
        ([{"name": "a", "apiKeySecretRef": {"name": "s", "key": "k"}}], "SecretNotFound"),
    ],
)
def test_what_only_the_operator_can_tell_is_ready_false(kit: Kit, operator, providers, reason):
    full = [{"endpoint": "http://127.0.0.1:9/v1", "model": "m", **p} for p in providers]
    kit.create_chain("broken", full)
    obj = kit.wait(
        CHAINS, "broken", lambda o: ready_condition(o).get("reason") == reason, what=reason
    )
    assert ready_condition(obj)["status"] == "False"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    kit.wait_until(lambda: reason in kit.event_reasons("broken"), what=f"a {reason} Event")
    assert "Traceback" not in operator.log()


def test_kubectl_get_shows_the_design_columns(kit: Kit, operator, backends):
    a, b = backends("a"), backends("b")
    kit.create_chain(
        "default",
        [
            kit.provider("local-a", a.url, "Sovereign", model="a-model"),
            kit.provider("cloud-b", b.url),
        ],
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("t1")
    kit.wait_task("t1")
    chains = kubectl("get", "pchain", "-n", kit.namespace).stdout.splitlines()
    assert chains[0].split() == ["NAME", "STRATEGY", "HEALTHY", "ACTIVE", "TIER", "READY", "AGE"]
    assert chains[1].split()[:6] == ["default", "Fallback", "2/2", "local-a", "Standard", "True"]
    tasks = kubectl("get", "dtask", "-n", kit.namespace).stdout.splitlines()
    header = tasks[0].split()
    assert header == ["NAME", "PHASE", "PROVIDER", "ATTEMPTS", "LATENCY", "COST", "AGE"]
    row = tasks[1].split()
    assert row[:4] == ["t1", "Succeeded", "local-a", "1"]
    assert row[4].endswith("ms")
    assert row[5].startswith("$")
    both = kubectl("get", "chainop", "-n", kit.namespace).stdout
    assert "providerchain.chainop.dev/default" in both
    assert "delegatedtask.chainop.dev/t1" in both


def test_finished_tasks_are_deleted_after_their_ttl(kit: Kit, operator, backends):
    a = backends("a")
    kit.create_chain("default", [kit.provider("a", a.url, "Sovereign")])
    kit.chain_ready("default")
    kit.create_task("short-lived", ttlSecondsAfterFinished=1)
    kit.create_task("kept")
    kit.wait_task("kept")
    kit.wait_until(lambda: not kit.exists(TASKS, "short-lived"), timeout=30, what="TTL deletion")
    assert kit.exists(TASKS, "kept")


def test_task_waits_for_a_chain_that_does_not_exist_yet(kit: Kit, operator, backends):
    a = backends("a")
    kit.create_task("early")
    kit.wait(
        TASKS,
        "early",
        lambda o: (
            (o.get("status") or {}).get("phase") == "Pending"
            and any(c["reason"] == "ChainNotFound" for c in o["status"]["conditions"])
        ),
        what="Pending ChainNotFound",
    )
    kit.create_chain("default", [kit.provider("a", a.url, "Sovereign")])
    assert kit.wait_task("early")["phase"] == "Succeeded"


def test_task_times_out_while_its_chain_is_missing(kit: Kit, operator):
    kit.create_task("lonely", timeoutSeconds=1)
    status = kit.wait_task("lonely", timeout=30)
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "DeadlineExceeded"


def test_large_answer_goes_to_an_owned_config_map(kit: Kit, operator, backends, kube_api):
    a = backends("a")
    kit.create_chain("default", [kit.provider("a", a.url, "Sovereign")])
    kit.chain_ready("default")
    big = "x" * 40_000
    kit.create_task("big", content=big)
    status = kit.wait_task("big")
    assert status["phase"] == "Succeeded"
    name = status["result"]["outputConfigMap"]
    assert status["result"]["text"] == ""
    config_map = kube_api.core.read_namespaced_config_map(name, kit.namespace)
    assert config_map.data["text"].endswith(big)
    owner = config_map.metadata.owner_references[0]
    task = kit.get(TASKS, "big")
    assert (owner.kind, owner.uid) == ("DelegatedTask", task["metadata"]["uid"])


def test_metrics_endpoint_exports_the_documented_families(kit: Kit, operator, backends):
    a, b = backends("a"), backends("b")
    a.set_mode("error", status=500)
    kit.create_chain(
        "default",
        [
            kit.provider("local-a", a.url, "Sovereign", model="a-model"),
            kit.provider("cloud-b", b.url, model="b-model"),
        ],
        health={"transientRetries": 0, "failureThreshold": 1},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("spills")
    kit.wait_task("spills")
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics").read().decode()
    )
    ns = f'namespace="{kit.namespace}"'
    hop = f'from_provider="local-a",{ns},to_provider="cloud-b"'
    for sample in (
        f'chainop_provider_requests_total{{chain="default",{ns},outcome="TransientError",'
        'provider="local-a"} 1.0',
        f'chainop_failovers_total{{chain="default",{hop}}} 1.0',
        f'chainop_spillovers_total{{chain="default",{hop}}} 1.0',
        f'chainop_benchings_total{{chain="default",{ns},provider="local-a"}} 1.0',
        f'chainop_tasks_total{{{ns},phase="Succeeded"}} 1.0',
    ):
        assert sample in text, sample
    for name in (
        "chainop_provider_state",
        "chainop_provider_request_duration_seconds_bucket",
        "chainop_task_duration_seconds_bucket",
        "chainop_probes_total",
        "chainop_backend_restarts_total",
    ):
        assert name in text, name


def test_metadata_endpoint_is_refused(kit: Kit, operator):
    kit.create_chain("imds", [kit.provider("imds", "http://169.254.169.254", "Sovereign")])
    obj = kit.wait(
        CHAINS,
        "imds",
        lambda o: ready_condition(o).get("reason") == "EndpointNotAllowed",
        what="EndpointNotAllowed",
    )
    assert "169.254.0.0/16" in ready_condition(obj)["message"]


def test_endpoint_allow_list_refuses_everything_else_and_no_request_leaves(
    kit: Kit, start_operator, backends
):
    start_operator("--allow-endpoint", "api.openai.com", "--allow-endpoint", "10.0.0.0/8")
    outside = backends("outside")
    kit.create_chain(
        "default",
        [kit.provider("outside", outside.url, "Sovereign")],
        health={"probe": {"intervalSeconds": 1}},
    )
    obj = kit.wait(
        CHAINS,
        "default",
        lambda o: ready_condition(o).get("reason") == "EndpointNotAllowed",
        what="EndpointNotAllowed",
    )
    assert "allow-list" in ready_condition(obj)["message"]
    kit.create_task("blocked", timeoutSeconds=2)
    assert kit.wait_task("blocked")["phase"] == "Failed"
    assert sum(outside.stats()["requests"].values()) == 0  # not even a probe
