"""We test these aspects: draining a provider by hand (``spec.drains``), end to end.

The drain is made as a user makes it: a patch of the ProviderChain's spec (what
``kubectl chainop drain`` does). On the local control plane, with the operator as a
process, fake backends as real HTTP servers and a backend Deployment played by the
supervisor (stand-in kubelet):

* drained: state ``Drained`` with who/why in status and ``1/2 (1 drained)`` in
  ``kubectl get pchain``, out of ``activeOrder``; tasks skip it (the decision says so), a
  task only it could take fails at once; the provider-state metric says Drained;
* a drained backend whose probes fail is still probed (its failures recorded) but is never
  made Unhealthy, excluded or restarted; undrained, it is back at once, Healthy;
* an ``until`` a few seconds ahead ends the drain by itself (no spec change), and also
  while the operator is stopped: the restarted operator sees it ended and says so once;
* Events each way (``Drained``; ``Undrained`` by hand or Expired), once per transition,
  across an operator restart too;
* a drain naming an unknown provider is ignored with a warning; the chain stays Ready.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chainop.core.models import GROUP, VERSION
from chainop.testing import cluster as cluster_helpers
from chainop.testing.cluster import free_port
from chainop.testing.fake_backend import FakeBackendControl
from tests.e2e.kit import (
    CHAINS,
    PROBING,
    TASKS,
    Kit,
    backend_command,
    condition,
    operator_metric,
    ready_condition,
    vllm_provider,
)

pytestmark = pytest.mark.cluster


def set_drains(kit: Kit, chain: str, drains: list[dict[str, Any]]) -> None:
    """Replace ``spec.drains`` (a merge patch, as ``kubectl patch --type merge`` sends)."""
    kit.api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kit.namespace, CHAINS, chain, {"spec": {"drains": drains}}
    )


def state(kit: Kit, chain: str, provider: str) -> str:
    return str(kit.provider_status(chain, provider).get("state", ""))


def events(kit: Kit, chain: str, reason: str) -> list[str]:
    """Messages of the chain's Events with ``reason``."""
    return [
        e.get("message", "")
        for e in kit.events()
        if e.get("reason") == reason and e.get("involvedObject", {}).get("name") == chain
    ]


def in_seconds(seconds: float) -> str:
    return (datetime.now(tz=UTC) + timedelta(seconds=seconds)).isoformat()


def get_pchain(kubeconfig: Path, namespace: str, chain: str) -> str:
    return cluster_helpers.kubectl(
        "get", "pchain", chain, "-n", namespace, kubeconfig=kubeconfig
    ).stdout


def test_drained_backend_is_skipped_shown_never_restarted_and_undrained(
    kit: Kit, operator, backends, supervisor, kubeconfig
):
    port = free_port()
    kit.create_deployment("vllm")
    supervisor.bind(kit.namespace, "vllm", backend_command(port), port)
    cloud = backends("cloud")
    kit.create_chain(
        "default",
        [
            vllm_provider(kit, port),
            kit.provider("cloud", cloud.url),
        ],
        health=PROBING,
        selfHealing={"recovery": {"initialSeconds": 1, "maxSeconds": 2}},
        taskDefaults={"allowDelegation": True},
    )
    control = FakeBackendControl(f"http://127.0.0.1:{port}")
    kit.wait_until(
        lambda: control.stats()["requests"].get("openai", 0) >= 2, what="vllm probed twice"
    )
    kit.wait_until(lambda: state(kit, "default", "vllm") == "Healthy", what="vllm Healthy")

    set_drains(kit, "default", [{"provider": "vllm", "by": "alice", "reason": "driver upgrade"}])
    kit.wait_until(lambda: state(kit, "default", "vllm") == "Drained", what="vllm Drained")
    status = kit.get(CHAINS, "default")["status"]
    vllm = kit.provider_status("default", "vllm")
    assert vllm["reason"] == "Drained"
    assert (vllm["drain"]["by"], vllm["drain"]["reason"]) == ("alice", "driver upgrade")
    assert status["activeOrder"] == ["cloud"]
    assert status["healthySummary"] == "1/2 (1 drained)"
    assert ready_condition(kit.get(CHAINS, "default"))["status"] == "True"
    table = get_pchain(kubeconfig, kit.namespace, "default")
    assert "1/2 (1 drained)" in table
    assert "cloud" in table.splitlines()[1]  # ACTIVE: the head in service

    kit.create_task("skips-vllm")
    done = kit.wait_task("skips-vllm")
    assert done["phase"] == "Succeeded"
    assert done["decision"]["providers"] == ["cloud"]
    assert "drained by hand, skipped: vllm (by alice: driver upgrade" in done["decision"]["reason"]
    assert [a["provider"] for a in done["attempts"]] == ["cloud"]
    # Only vllm may take a requiresLocal task, and a drain is never overridden.
    kit.create_task("local-only", routing={"requiresLocal": True})
    failed = kit.wait_task("local-only")
    assert failed["phase"] == "Failed"
    assert condition({"status": failed}, "Succeeded")["reason"] == "NoEligibleProvider"
    assert (
        "every eligible provider is drained"
        in condition({"status": failed}, "Succeeded")["message"]
    )
    assert failed.get("attempts") in (None, [])
    labels = {"chain": "default", "provider": "vllm"}
    assert (
        operator_metric(operator.metrics_port, "chainop_provider_state", state="Drained", **labels)
        == 1
    )

    # Its backend breaks while drained: still probed, never Unhealthy, never restarted.
    control.set(mode="error", status=503)
    kit.wait_until(
        lambda: kit.provider_status("default", "vllm").get("consecutiveProbeFailures", 0) >= 4,
        what="failed probes of the drained vllm recorded",
    )
    vllm = kit.provider_status("default", "vllm")
    assert vllm["state"] == "Drained"
    assert vllm["lastError"]
    assert vllm.get("excludedSince") is None
    assert supervisor.restarts(kit.namespace, "vllm") == 0
    reasons = kit.event_reasons("default")
    for never in ("ProviderUnhealthy", "ProviderExcluded", "BackendRestarted"):
        assert never not in reasons

    # Fixed, then undrained by hand: back at the head at once, Healthy.
    control.set(mode="healthy")
    kit.wait_until(
        lambda: kit.provider_status("default", "vllm").get("consecutiveProbeFailures") == 0,
        what="a good probe of the drained vllm",
    )
    set_drains(kit, "default", [])
    kit.wait_until(
        lambda: kit.get(CHAINS, "default")["status"]["activeOrder"] == ["vllm", "cloud"],
        what="vllm back at the head",
    )
    assert state(kit, "default", "vllm") == "Healthy"
    assert kit.provider_status("default", "vllm").get("drain") is None
    assert kit.get(CHAINS, "default")["status"]["healthySummary"] == "2/2"
    kit.create_task("back-to-vllm")
    assert kit.wait_task("back-to-vllm")["result"]["provider"] == "vllm"
    kit.wait_until(lambda: events(kit, "default", "Undrained") != [], what="Undrained Event")
    (drained,) = events(kit, "default", "Drained")
    assert "by alice: driver upgrade until undrained" in drained
    (undrained,) = events(kit, "default", "Undrained")
    assert "by hand" in undrained
    assert supervisor.restarts(kit.namespace, "vllm") == 0


def test_until_ends_the_drain_on_time_also_while_the_operator_is_stopped(
    kit: Kit, operator, backends
):
    first, second = backends("first"), backends("second")
    kit.create_chain(
        "default",
        [kit.provider("first", first.url), kit.provider("second", second.url)],
        health=PROBING,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")

    # A typo is not an outage: ignored, with a warning; the chain stays Ready.
    set_drains(kit, "default", [{"provider": "frist", "by": "bob"}])
    kit.wait_until(
        lambda: condition(kit.get(CHAINS, "default"), "DrainsValid").get("status") == "False",
        what="DrainsValid=False",
    )
    chain = kit.get(CHAINS, "default")
    assert condition(chain, "DrainsValid")["reason"] == "UnknownProvider"
    assert ready_condition(chain)["status"] == "True"
    assert chain["status"]["activeOrder"] == ["first", "second"]
    kit.wait_until(lambda: events(kit, "default", "DrainIgnored") != [], what="DrainIgnored")

    # Ends by itself at until: nothing else changes, the operator wakes at that time.
    until = datetime.now(tz=UTC) + timedelta(seconds=4)
    set_drains(kit, "default", [{"provider": "first", "by": "bob", "until": until.isoformat()}])
    kit.wait_until(lambda: state(kit, "default", "first") == "Drained", what="first Drained")
    assert kit.provider_status("default", "first")["drain"]["until"]
    kit.wait_until(
        lambda: state(kit, "default", "first") == "Healthy", timeout=30, what="drain expired"
    )
    assert datetime.now(tz=UTC) >= until
    assert kit.get(CHAINS, "default")["status"]["activeOrder"] == ["first", "second"]
    kit.wait_until(lambda: events(kit, "default", "Undrained") != [], what="Undrained Event")
    assert "Expired" in events(kit, "default", "Undrained")[0]

    # Drained again; the operator is stopped while it ends, and sees that when it is back.
    until = datetime.now(tz=UTC) + timedelta(seconds=3)
    set_drains(kit, "default", [{"provider": "first", "by": "bob", "until": until.isoformat()}])
    kit.wait_until(lambda: state(kit, "default", "first") == "Drained", what="Drained again")
    kit.wait_until(lambda: len(events(kit, "default", "Drained")) == 2, what="second Drained")
    operator.kill()
    while datetime.now(tz=UTC) < until + timedelta(seconds=1):
        time.sleep(0.2)
    assert state(kit, "default", "first") == "Drained"  # nobody was there to see it end
    operator.start()
    kit.wait_until(
        lambda: state(kit, "default", "first") == "Healthy", timeout=30, what="expired in absence"
    )
    kit.create_task("first-again")
    assert kit.wait_task("first-again")["result"]["provider"] == "first"
    kit.wait_until(lambda: len(events(kit, "default", "Undrained")) == 2, what="2nd Undrained")
    time.sleep(1.0)  # a few ticks of the new operator: nothing is announced twice
    assert len(events(kit, "default", "Drained")) == 2
    undrained = events(kit, "default", "Undrained")
    assert len(undrained) == 2
    assert all("Expired" in message for message in undrained)
    assert len(events(kit, "default", "DrainIgnored")) == 1


def test_a_task_only_a_timed_drain_keeps_out_waits_for_it_to_end(kit: Kit, operator, backends):
    vllm, cloud = backends("vllm"), backends("cloud")
    kit.create_chain(
        "default",
        [kit.provider("vllm", vllm.url, "Sovereign"), kit.provider("cloud", cloud.url)],
        health=PROBING,
    )
    kit.chain_ready("default")
    until = datetime.now(tz=UTC) + timedelta(seconds=5)
    set_drains(kit, "default", [{"provider": "vllm", "by": "bob", "until": until.isoformat()}])
    kit.wait_until(lambda: state(kit, "default", "vllm") == "Drained", what="vllm Drained")

    # Only vllm may take it, and vllm is back in 5 s: the task waits, as a pod waits for
    # a node to be uncordoned (it has 60 s).
    kit.create_task("patient", routing={"requiresLocal": True}, timeoutSeconds=60)
    kit.wait_until(
        lambda: (
            condition(kit.get(TASKS, "patient"), "Progressing").get("reason")
            == "WaitingForProvider"
        ),
        what="WaitingForProvider",
    )
    waiting = condition(kit.get(TASKS, "patient"), "Progressing")["message"]
    assert "waiting for the drain of vllm to end at" in waiting
    done = kit.wait_task("patient", timeout=60)
    assert done["phase"] == "Succeeded", done
    assert done["result"]["provider"] == "vllm"
    assert datetime.fromisoformat(done["attempts"][0]["startedAt"]) >= until
    assert "WaitingForProvider" in kit.event_reasons("patient")

    # A drain that outlasts the task's deadline, or one without an end: no wait.
    later = datetime.now(tz=UTC) + timedelta(minutes=10)
    set_drains(kit, "default", [{"provider": "vllm", "by": "bob", "until": later.isoformat()}])
    kit.wait_until(lambda: state(kit, "default", "vllm") == "Drained", what="Drained again")
    kit.create_task("hurried", routing={"requiresLocal": True}, timeoutSeconds=30)
    failed = kit.wait_task("hurried", timeout=30)
    assert failed["phase"] == "Failed"
    assert condition({"status": failed}, "Succeeded")["reason"] == "NoEligibleProvider"
