"""We test these aspects: the six routing rules, each ending in the task's status.

Three fake backends (Sovereign, Private, Standard) answer with their own name, so the
answer proves where the work ran; the decision's provider and reason are in status.
"""

from __future__ import annotations

import pytest

from tests.e2e.kit import Kit

pytestmark = pytest.mark.cluster

RULES = [
    # (task name, routing, expected decision providers, expected reason, who answers)
    (
        "rule1-requires-local",
        {"requiresLocal": True, "preferredProvider": "cloud", "allowDelegation": True},
        ["local"],
        "requiresLocal=true",
        "onprem",
    ),
    (
        "rule2-preferred-local",
        {"preferredProvider": "local", "allowDelegation": True},
        ["local"],
        "preferredProvider=local",
        "onprem",
    ),
    (
        "rule3-no-delegation",
        None,
        ["local"],
        "allowDelegation=false (default)",
        "onprem",
    ),
    (
        "rule4-named-provider",
        {"preferredProvider": "cloud", "allowDelegation": True},
        ["cloud", "local", "private"],
        "preferredProvider=cloud",
        "cloud",
    ),
    (
        "rule5-auto",
        {"preferredProvider": "auto", "allowDelegation": True},
        ["local", "private", "cloud"],
        "preferredProvider=auto: active order",
        "onprem",
    ),
    (
        "rule6-unknown-fails-safe",
        {"preferredProvider": "clod", "allowDelegation": True},
        ["local"],
        "unknown preferredProvider=clod → fail-safe",
        "onprem",
    ),
]


def test_six_routing_rules_end_in_status(kit: Kit, operator, backends):
    onprem, private, cloud = backends("onprem"), backends("private"), backends("cloud")
    kit.create_chain(
        "default",
        [
            # "local" is reserved, so the Sovereign provider has another name; the
            # routing word "local" means every Sovereign provider.
            kit.provider("onprem-vllm", onprem.url, "Sovereign", model="onprem-model"),
            kit.provider("private", private.url, "Private"),
            kit.provider("cloud", cloud.url, "Standard"),
        ],
    )
    kit.chain_ready("default")
    for name, routing, _, _, _ in RULES:
        kit.create_task(name, routing=routing, content=name)
    for name, _, providers, reason, answered_by in RULES:
        status = kit.wait_task(name)
        expected = [("onprem-vllm" if p == "local" else p) for p in providers]
        assert status["phase"] == "Succeeded", (name, status)
        assert status["decision"]["providers"] == expected, name
        assert status["decision"]["reason"] == reason, name
        assert status["result"]["text"].startswith(f"[{answered_by}]"), name
        assert status["provider"] == expected[0]


def test_no_eligible_provider_fails_at_once_with_reason(kit: Kit, operator, backends):
    cloud = backends("cloud")
    kit.create_chain("default", [kit.provider("cloud", cloud.url, "Standard")])
    kit.chain_ready("default")
    kit.create_task("private-data", routing={"requiresLocal": True})
    status = kit.wait_task("private-data")
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "NoEligibleProvider"
    assert "requiresLocal=true" in succeeded["message"]
    assert "no Sovereign provider" in succeeded["message"]
    assert cloud.stats()["requests"].get("openai", 0) == 0
