"""We test these aspects: local first under load, on the real control plane (issue 14).

The backends are fake vLLMs that model a real queue (``max_concurrency`` requests served
at once, the rest waiting in order, ``/metrics`` in vLLM's exposition), so the operator
reads real Prometheus text over real sockets, as it would from vLLM.

* spillover on saturation: a Sovereign provider whose queue reaches ``loadSignal.
  maxWaiting`` is skipped (attempt ``Skipped``, error ``saturated: ...``) by tasks that
  may go further, which the Standard provider answers; tasks with ``requiresLocal`` still
  queue on it and are answered there; the chain's status shows ``providers[].load``; no
  penalty to the saturated provider's health; Events and the metric count the skips;
* the KV cache under vLLM's old name (``vllm:gpu_cache_usage_perc``) saturates as well,
  and a reading gone stale (the endpoint stopped answering) never causes a skip;
* hedging: a task with ``spec.hedge.afterMillis`` whose first provider is slow gets the
  second one's answer; the slow call is ``Cancelled`` and its connection closed (the
  slow backend sees the client go away), the winner is ``hedged``, both cost something;
  a local-only task on the same chain is never hedged out of its tier;
* waiting for the earliest recovery: with every provider benched, a task with time left
  says ``WaitingForProvider`` (whom, until when) and succeeds once the cooldown ends; a
  task whose deadline comes first fails at once with every provider's reason.

No wall-clock assertions: the queue is pinned by a request the test holds open, and the
order of events is read from status, Events and the backends' own counters.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from chainop.testing.fake_backend import FakeBackendThread
from tests.e2e.kit import CHAINS, TASKS, Kit, condition, operator_metric, outcomes

pytestmark = pytest.mark.cluster

#: Active probes each second: the load signal is read with them, and counts for 3 s.
PROBE = {"intervalSeconds": 1, "timeoutSeconds": 1}


def hold_slot(url: str) -> socket.socket:
    """Send a chat completion over a raw socket and leave it open: while the backend's
    mode hangs it, it holds one slot of the queue; closing the socket frees the slot (the
    server sees its client go away, as vLLM aborts such a request)."""
    parts = urlsplit(url)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hold"}]}).encode()
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        + f"Host: {parts.netloc}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def engine(backend: FakeBackendThread) -> dict[str, Any]:
    """The fake's queue as it knows it: running, waiting, max_concurrency."""
    result: dict[str, Any] = backend.stats()["engine"]
    return result


# --------------------------------------------------------------------------- spillover


def test_saturated_local_provider_spills_allowed_tasks_and_keeps_local_ones(
    kit: Kit, operator, backends
):
    vllm, cloud = backends("vllm"), backends("cloud")
    vllm.configure(max_concurrency=1, service_ms=200)
    kit.create_chain(
        "default",
        [
            kit.provider("vllm", vllm.url, "Sovereign", loadSignal={"maxWaiting": 2}),
            kit.provider("cloud", cloud.url),
        ],
        health={"probe": PROBE},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.wait_until(
        lambda: kit.provider_status("default", "vllm").get("load") is not None,
        what="a first load reading of vllm in the chain's status",
    )

    # Pin the queue: the test's own request holds the only slot until it lets go...
    vllm.set_mode("hang", route="openai", fail_next=1)
    holder = hold_slot(vllm.url)
    try:
        kit.wait_until(lambda: engine(vllm)["running"] == 1, what="the slot held")
        # ... and two local-only tasks queue behind it: 2 waiting ≥ maxWaiting 2.
        for name in ("local-1", "local-2"):
            kit.create_task(name, routing={"requiresLocal": True}, timeoutSeconds=90)
        kit.wait_until(lambda: engine(vllm)["waiting"] == 2, what="two tasks queued on vllm")
        kit.wait_until(
            lambda: (
                (kit.provider_status("default", "vllm").get("load") or {})
                .get("saturated", "")
                .startswith("saturated:")
            ),
            what="vllm saturated in the chain's status",
        )
        load = kit.provider_status("default", "vllm")["load"]
        assert load["waiting"] >= 2
        assert load["running"] == 1
        assert load["kvCacheUsage"] == pytest.approx(0.8)  # the fake's full batch
        assert load["observedAt"]

        # Tasks that may go further skip it, without a call, and the cloud answers.
        spilled = [f"spill-{i}" for i in range(3)]
        for name in spilled:
            kit.create_task(name, timeoutSeconds=60)
        # A local-only task created while it is saturated queues there all the same.
        kit.create_task("local-3", routing={"requiresLocal": True}, timeoutSeconds=90)
        for name in spilled:
            status = kit.wait_task(name)
            assert status["phase"] == "Succeeded", status.get("conditions")
            assert outcomes(status) == [("vllm", "Skipped"), ("cloud", "Succeeded")]
            assert status["attempts"][0]["error"].startswith("saturated: ")
            assert "waiting" in status["attempts"][0]["error"]
            assert status["result"]["text"].startswith("[cloud]")
        kit.wait_until(lambda: engine(vllm)["waiting"] == 3, what="local-3 queued on vllm")
        for name in ("local-1", "local-2", "local-3"):
            assert (kit.get(TASKS, name).get("status") or {}).get("phase") != "Succeeded"
    finally:
        holder.close()  # the slot is free: the queue drains in order

    for name in ("local-1", "local-2", "local-3"):
        status = kit.wait_task(name, timeout=60)
        assert status["phase"] == "Succeeded", status.get("conditions")
        assert outcomes(status) == [("vllm", "Succeeded")]
        assert status["result"]["text"].startswith("[vllm]")
    # The backends' own counts: the held request and the three local-only tasks reached
    # vllm, the spilled tasks never did.
    assert vllm.stats()["requests"]["openai"] == 4
    assert cloud.stats()["requests"]["openai"] == len(spilled)
    # Saturation is no failure: vllm is Healthy, nothing counted against it.
    state = kit.provider_status("default", "vllm")
    assert state["state"] == "Healthy"
    assert state.get("consecutiveFailures", 0) == 0
    kit.wait_until(
        lambda: "Saturated" in kit.event_reasons("default"), what="a Saturated Event on the chain"
    )
    kit.wait_until(
        lambda: "Spillover" in kit.event_reasons(spilled[0]), what="a Spillover Event on a task"
    )
    skips = operator_metric(
        operator.metrics_port,
        "chainop_saturated_skips_total",
        namespace=kit.namespace,
        provider="vllm",
    )
    assert skips == len(spilled)
    # Drained: the next reading is not saturated any more.
    kit.wait_until(
        lambda: not (kit.provider_status("default", "vllm").get("load") or {}).get("saturated"),
        what="vllm no longer saturated",
    )


def test_kv_cache_by_its_old_name_saturates_and_a_stale_reading_never_skips(
    kit: Kit, operator, backends
):
    vllm, cloud = backends("vllm"), backends("cloud")
    # An older vLLM (up to 0.8) publishes the KV cache as vllm:gpu_cache_usage_perc.
    vllm.configure(cache_metric="vllm:gpu_cache_usage_perc", kv_cache_usage=0.97)
    kit.create_chain(
        "default",
        [
            kit.provider("vllm", vllm.url, "Sovereign", loadSignal={"maxKvCacheUsage": 0.95}),
            kit.provider("cloud", cloud.url),
        ],
        health={"probe": PROBE},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.wait_until(
        lambda: (
            "KV cache"
            in (kit.provider_status("default", "vllm").get("load") or {}).get("saturated", "")
        ),
        what="vllm saturated by its KV cache in the chain's status",
    )
    assert kit.provider_status("default", "vllm")["load"]["kvCacheUsage"] == pytest.approx(0.97)
    kit.create_task("full-cache", timeoutSeconds=30)
    status = kit.wait_task("full-cache")
    assert outcomes(status) == [("vllm", "Skipped"), ("cloud", "Succeeded")]
    assert status["attempts"][0]["error"].startswith("saturated: KV cache")

    # The endpoint goes quiet: the last reading (still "saturated") ages past three probe
    # intervals and is ignored, never acted on; the server gets the work again.
    vllm.configure(metrics=False)
    kit.wait_until(
        lambda: not (kit.provider_status("default", "vllm").get("load") or {}).get("saturated"),
        what="the stale reading no longer saturating vllm",
    )
    kit.create_task("after-stale", timeoutSeconds=30)
    status = kit.wait_task("after-stale")
    assert outcomes(status) == [("vllm", "Succeeded")]
    assert vllm.stats()["requests"]["openai"] == 1
    assert kit.provider_status("default", "vllm")["state"] == "Healthy"


# --------------------------------------------------------------------------- hedging


def test_hedge_returns_the_fast_answer_and_cancels_the_slow_call(kit: Kit, operator, backends):
    slow, fast = backends("slow"), backends("fast")
    slow.configure(service_ms=2000)  # completions only: its probes answer at once
    price = {"inputPerMillionTokens": 1000, "outputPerMillionTokens": 2000}
    kit.create_chain(
        "default",
        [
            kit.provider("slow", slow.url, "Sovereign", cost=price),
            kit.provider("fast", fast.url, "Standard", cost=price),
        ],
        health={"probe": PROBE},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")

    kit.create_task(
        "hedged", content="a question worth hedging", hedge={"afterMillis": 300}, timeoutSeconds=30
    )
    status = kit.wait_task("hedged")
    assert status["phase"] == "Succeeded", status.get("conditions")
    result = status["result"]
    assert result["provider"] == "fast"
    assert result["text"].startswith("[fast]")
    assert result["hedged"] is True
    by_provider = {a["provider"]: a for a in status["attempts"]}
    assert sorted(by_provider) == ["fast", "slow"]
    assert by_provider["slow"]["outcome"] == "Cancelled"
    assert by_provider["slow"]["hedged"] is False
    assert by_provider["fast"]["outcome"] == "Succeeded"
    assert by_provider["fast"]["hedged"] is True
    assert by_provider["fast"]["costUSD"] > 0
    assert by_provider["slow"]["costUSD"] > 0  # its prompt, a lower bound
    assert result["extraCostUSD"] > 0
    # The slow backend got the call, and saw its client go away: the cancellation closed
    # the connection instead of leaving it to finish unread.
    assert slow.stats()["requests"]["openai"] == 1
    kit.wait_until(
        lambda: slow.stats()["cancelled"].get("openai") == 1,
        what="the slow backend to see the hedged-out call cancelled",
    )
    kit.wait_until(lambda: "Hedged" in kit.event_reasons("hedged"), what="a Hedged Event")

    # The same hedge on a task that may only run locally has nowhere to go: the slow
    # Sovereign provider answers, and the Standard one is never called.
    fast_calls = fast.stats()["requests"]["openai"]
    kit.create_task(
        "local-only",
        content="a question worth hedging",
        routing={"requiresLocal": True},
        hedge={"afterMillis": 300},
        timeoutSeconds=30,
    )
    status = kit.wait_task("local-only")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert outcomes(status) == [("slow", "Succeeded")]
    assert status["result"]["hedged"] is False
    assert fast.stats()["requests"]["openai"] == fast_calls


# --------------------------------------------------------------------------- waiting

#: Benched after one failure, for 5 s: long enough for the test to create its tasks
#: while both providers are benched, short enough to wait for. Passive probes: no probe
#: may restore a provider before its cooldown ends.
BENCH_5S = {
    "failureThreshold": 1,
    "transientRetries": 0,
    "cooldown": {"initialSeconds": 5, "maxSeconds": 5},
    "probe": {"mode": "Passive"},
}


def test_all_benched_waits_for_the_earliest_recovery_or_fails_without_time(
    kit: Kit, operator, backends
):
    alpha, beta = backends("alpha"), backends("beta")
    for backend in (alpha, beta):
        backend.set_mode("error", status=500)
    kit.create_chain(
        "default",
        [kit.provider("alpha", alpha.url), kit.provider("beta", beta.url)],
        health=BENCH_5S,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")

    kit.create_task("benches-both", timeoutSeconds=30)
    first = kit.wait_task("benches-both")
    assert first["phase"] == "Failed"
    assert outcomes(first) == [("alpha", "TransientError"), ("beta", "TransientError")]
    kit.wait(
        CHAINS,
        "default",
        lambda o: all(
            p["state"] == "CoolingDown" for p in (o.get("status") or {}).get("providers") or []
        ),
        what="alpha and beta CoolingDown",
    )

    # No time to wait (1 s < the 5 s cooldown): as before, the terminus is tried and the
    # task fails at once, every provider's reason in its message.
    kit.create_task("hasty", timeoutSeconds=1)
    hasty = kit.wait_task("hasty")
    assert hasty["phase"] == "Failed"
    assert outcomes(hasty) == [("alpha", "Skipped"), ("beta", "TransientError")]
    failed = condition(kit.get(TASKS, "hasty"), "Succeeded")
    assert failed["status"] == "False"
    assert failed["reason"] != "WaitingForProvider"
    assert "alpha" in failed["message"]
    assert "cooling down" in failed["message"]
    assert "beta" in failed["message"]
    assert "WaitingForProvider" not in kit.event_reasons("hasty")

    # Both recover behind their cooldown; a task with time left waits for it.
    for backend in (alpha, beta):
        backend.set_mode("healthy")
    calls_before = alpha.stats()["requests"].get("openai", 0) + beta.stats()["requests"].get(
        "openai", 0
    )
    kit.create_task("patient", timeoutSeconds=60)
    waiting = kit.wait(
        TASKS,
        "patient",
        lambda o: condition(o, "Progressing").get("reason") == "WaitingForProvider",
        what="Progressing reason WaitingForProvider",
    )
    progressing = condition(waiting, "Progressing")
    assert progressing["status"] == "False"
    assert "waiting for alpha until" in progressing["message"]  # benched first, ends first
    assert waiting["status"]["phase"] in ("Pending", "Running")
    # While it waits, nothing is called.
    assert (
        alpha.stats()["requests"].get("openai", 0) + beta.stats()["requests"].get("openai", 0)
        == calls_before
    )
    patient = kit.wait_task("patient", timeout=30)
    assert patient["phase"] == "Succeeded", patient.get("conditions")
    assert patient["result"]["provider"] == "alpha"
    assert outcomes(patient)[-1] == ("alpha", "Succeeded")
    assert "WaitingForProvider" in kit.event_reasons("patient")
