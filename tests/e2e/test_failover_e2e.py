"""We test these aspects: executing a chain through the operator, on real sockets.

* HTTP 500 fails over to the next provider, every attempt recorded in status;
* the benched provider is skipped by the next task and its cooldown shows in the
  chain's status (CoolingDown, cooldownUntil);
* the terminus is attempted even when benched;
* a 401 fails the task at once; an unknown model and a capability mismatch advance
  without penalty; an incomplete reply is redone on the next provider.
"""

from __future__ import annotations

import pytest

from tests.e2e.kit import CHAINS, Kit, outcomes

pytestmark = pytest.mark.cluster

FAST_BENCH = {
    "failureThreshold": 2,
    "transientRetries": 1,
    "cooldown": {"initialSeconds": 300, "maxSeconds": 600},
    "probe": {"mode": "Passive"},
}


def test_http_500_fails_over_and_benched_provider_is_skipped(kit: Kit, operator, backends):
    primary, secondary = backends("primary"), backends("secondary")
    primary.set_mode("error", status=500)
    kit.create_chain(
        "default",
        [kit.provider("primary", primary.url), kit.provider("secondary", secondary.url)],
        health=FAST_BENCH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")

    kit.create_task("first")
    status = kit.wait_task("first")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [
        ("primary", "TransientError"),
        ("primary", "TransientError"),
        ("secondary", "Succeeded"),
    ]
    assert "HTTP 500" in status["attempts"][0]["error"]
    assert status["result"]["provider"] == "secondary"
    assert status["result"]["attempt"] == 3
    assert status["result"]["wasTerminus"] is True

    # Two failures reached failureThreshold: primary is benched, visibly.
    kit.wait(
        CHAINS,
        "default",
        lambda o: any(
            p["name"] == "primary" and p["state"] == "CoolingDown" and p.get("cooldownUntil")
            for p in (o.get("status") or {}).get("providers", [])
        ),
        what="primary CoolingDown with cooldownUntil",
    )
    calls_before = primary.stats()["requests"].get("openai", 0)
    kit.create_task("second")
    status = kit.wait_task("second")
    assert outcomes(status) == [("primary", "Skipped"), ("secondary", "Succeeded")]
    assert "cooling down until" in status["attempts"][0]["error"]
    assert primary.stats()["requests"].get("openai", 0) == calls_before
    kit.wait_until(lambda: "Failover" in kit.event_reasons("first"), what="Failover Event")
    kit.wait_until(
        lambda: "ProviderBenched" in kit.event_reasons("default"), what="ProviderBenched Event"
    )


def test_terminus_is_attempted_even_when_benched(kit: Kit, operator, backends):
    only = backends("only")
    only.set_mode("error", status=503)
    kit.create_chain(
        "default",
        [kit.provider("only", only.url)],
        health={**FAST_BENCH, "transientRetries": 0, "failureThreshold": 1},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("benches-it")
    assert kit.wait_task("benches-it")["phase"] == "Failed"
    kit.wait(
        CHAINS,
        "default",
        lambda o: kit.provider_status("default", "only").get("state") == "CoolingDown",
        what="only CoolingDown",
    )
    only.set_mode("healthy")
    kit.create_task("still-tried")
    status = kit.wait_task("still-tried")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [("only", "Succeeded")]
    assert status["result"]["wasTerminus"] is True


def test_401_fails_the_task_at_once(kit: Kit, operator, backends):
    primary, secondary = backends("primary"), backends("secondary")
    primary.set_mode("error", status=401)
    kit.create_chain(
        "default",
        [kit.provider("primary", primary.url), kit.provider("secondary", secondary.url)],
        health=FAST_BENCH,
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("bad-key")
    status = kit.wait_task("bad-key")
    assert status["phase"] == "Failed"
    assert outcomes(status) == [("primary", "AuthError")]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "AuthError"
    assert "HTTP 401" in succeeded["message"]
    assert secondary.stats()["requests"].get("openai", 0) == 0


def test_unknown_model_and_capability_mismatch_advance_without_penalty(
    kit: Kit, operator, backends
):
    wrong_model, small, big = backends("wrong-model"), backends("small"), backends("big")
    wrong_model.set_mode("unknown_model")
    kit.create_chain(
        "default",
        [
            kit.provider("wrong-model", wrong_model.url),
            kit.provider("small", small.url, capabilities={"vision": False}),
            kit.provider("big", big.url),
        ],
        health={**FAST_BENCH, "failureThreshold": 1},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task(
        "with-image",
        request={
            "messages": [{"role": "user", "content": "what is this?", "images": ["http://x/i.png"]}]
        },
    )
    status = kit.wait_task("with-image")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [
        ("wrong-model", "ModelNotFound"),
        ("small", "Unsupported"),
        ("big", "Succeeded"),
    ]
    assert "vision" in status["attempts"][1]["error"]
    assert small.stats()["requests"].get("openai", 0) == 0  # never called
    # No penalty: both stay Healthy with no failures counted.
    kit.holds(
        lambda: all(
            p["state"] == "Healthy" and p["consecutiveFailures"] == 0
            for p in kit.get(CHAINS, "default")["status"]["providers"]
        ),
        what="every provider Healthy",
    )


@pytest.mark.parametrize("mode", ["malformed", "drop", "empty"])
def test_incomplete_reply_is_redone_on_the_next_provider(kit: Kit, operator, backends, mode):
    broken, good = backends("broken"), backends("good")
    broken.set_mode(mode)
    kit.create_chain(
        "default",
        [kit.provider("broken", broken.url), kit.provider("good", good.url)],
        health={**FAST_BENCH, "transientRetries": 0},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("half-answer")
    status = kit.wait_task("half-answer")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [("broken", "IncompleteReply"), ("good", "Succeeded")]
    assert status["result"]["text"].startswith("[good]")
