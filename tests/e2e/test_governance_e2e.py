"""We test these aspects: spend budgets and the audit trail on the real control plane.

* a budget crossed mid-stream of tasks: the paid provider answers until the chain's
  ``status.spend`` reaches ``maxUSD`` (BudgetWarning at 80 %, BudgetExceeded at 100 %,
  once each), then new tasks run on the Sovereign provider with the decision reason
  ``budget X USD/20s spent``; the next window starts from zero in status and routing goes
  back to the paid provider; every finished paid task is marked ``charged``; the spend
  metric and the ratio gauge agree with status;
* ``onExceeded: Fail``: the next task fails with reason BudgetExceeded without calling
  anyone;
* the audit trail of a failover with spillover, parsed line by line and checked field by
  field, and neither the API key (a canary in the Secret) nor the prompt in the file.

Windows are fixed and aligned to the epoch, so the budget test starts its tasks early in
a window (it waits for one to begin rather than straddle a boundary); nothing asserts a
duration.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from chainop.core.models import GROUP, VERSION
from tests.e2e.kit import CHAINS, Kit, condition, operator_metric, outcomes

pytestmark = pytest.mark.cluster

WINDOW = 20
#: $1 per token: a task costs a few dollars, so figures are easy to read.
PRICE = {"inputPerMillionTokens": 1_000_000, "outputPerMillionTokens": 1_000_000}
PASSIVE = {"probe": {"mode": "Passive"}}


def spend(kit: Kit, chain: str = "default") -> dict[str, Any]:
    result: dict[str, Any] = (kit.get(CHAINS, chain).get("status") or {}).get("spend") or {}
    return result


def patch_budget(kit: Kit, budget: dict[str, Any]) -> None:
    kit.api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kit.namespace, CHAINS, "default", {"spec": {"budget": budget}}
    )
    generation = kit.get(CHAINS, "default")["metadata"]["generation"]
    kit.wait(
        CHAINS,
        "default",
        lambda o: (o.get("status") or {}).get("observedGeneration") == generation,
        what="the new budget seen",
    )


def run_task(kit: Kit, name: str, charged_tasks: int | None = None) -> dict[str, Any]:
    """Create a task, wait for it to end and (for a paid one) for its charge."""
    kit.create_task(name)
    status = kit.wait_task(name)
    if charged_tasks is not None:
        kit.wait_until(
            lambda: spend(kit).get("tasks") == charged_tasks,
            what=f"{charged_tasks} tasks in status.spend",
        )
    return status


def start_of_a_window() -> None:
    """Wait, if need be, for a budget window to begin, so that what follows (a few
    seconds of tasks) does not straddle a window's end."""
    into = time.time() % WINDOW
    if into > 4:
        time.sleep(WINDOW - into + 0.2)


def test_budget_crossed_mid_stream_goes_local_and_back_next_window(
    kit: Kit, operator, backends
) -> None:
    paid, vllm = backends("paid"), backends("vllm")
    kit.create_chain(
        "default",
        [
            kit.provider("paid", paid.url, cost=PRICE),
            kit.provider("vllm", vllm.url, "Sovereign"),
        ],
        health=PASSIVE,
        taskDefaults={"allowDelegation": True},
        budget={"window": f"{WINDOW}s", "maxUSD": 1_000_000},
    )
    kit.chain_ready("default")
    start_of_a_window()
    first = run_task(kit, "t1", charged_tasks=1)
    assert first["result"]["provider"] == "paid"
    cost = first["result"]["costUSD"]
    assert cost > 1
    # Two and a half tasks' worth: the second task reaches 80 %, the third 100 %.
    max_usd = round(cost * 2.5, 2)
    patch_budget(kit, {"window": f"{WINDOW}s", "maxUSD": max_usd})
    for number, charged in ((2, 2), (3, 3)):
        status = run_task(kit, f"t{number}", charged_tasks=charged)
        assert status["result"]["provider"] == "paid"
        assert status["decision"]["reason"] == "preferredProvider=auto: active order"
    window = spend(kit)
    assert window["usd"] == pytest.approx(3 * cost)
    assert window["byProvider"] == [{"provider": "paid", "usd": pytest.approx(3 * cost)}]
    assert window["window"] == f"{WINDOW}s"
    start = window["windowStart"]

    over = run_task(kit, "t4")
    assert over["phase"] == "Succeeded"
    assert over["result"]["provider"] == "vllm"
    assert over["decision"]["reason"] == f"budget {max_usd:.2f} USD/{WINDOW}s spent"
    assert over["decision"]["providers"] == ["vllm"]
    assert outcomes(over) == [("vllm", "Succeeded")]
    assert paid.stats()["requests"].get("openai", 0) == 3
    assert spend(kit)["windowStart"] == start  # still the same window

    # Each crossing announced once, on the chain.
    kit.wait_until(
        lambda: "BudgetExceeded" in kit.event_reasons("default"), what="BudgetExceeded Event"
    )
    reasons = kit.event_reasons("default")
    assert reasons.count("BudgetWarning") == 1
    assert reasons.count("BudgetExceeded") == 1
    exceeded = next(
        e for e in kit.events() if e["reason"] == "BudgetExceeded" and e["type"] == "Warning"
    )
    assert "run on Sovereign providers only" in exceeded["message"]
    assert operator_metric(
        operator.metrics_port, "chainop_spend_usd_total", chain="default", provider="paid"
    ) == pytest.approx(3 * cost)
    assert operator_metric(
        operator.metrics_port, "chainop_budget_used_ratio", chain="default"
    ) == pytest.approx(3 * cost / max_usd)
    for name in ("t1", "t2", "t3"):
        assert kit.get("delegatedtasks", name)["status"]["charged"] is True
    assert "charged" not in kit.get("delegatedtasks", "t4")["status"]  # cost nothing

    # The next window: zero in status, and the paid provider answers again.
    kit.wait_until(
        lambda: spend(kit).get("windowStart") != start and spend(kit).get("usd") == 0,
        timeout=WINDOW + 10,
        what="a new window in status.spend",
    )
    assert operator_metric(
        operator.metrics_port, "chainop_budget_used_ratio", chain="default"
    ) == pytest.approx(0, abs=1e-9)
    back = run_task(kit, "t5", charged_tasks=1)
    assert back["result"]["provider"] == "paid"
    assert back["decision"]["reason"] == "preferredProvider=auto: active order"


def test_budget_fail_fails_new_tasks_with_budget_exceeded(kit: Kit, operator, backends) -> None:
    paid = backends("paid")
    kit.create_chain(
        "default",
        [kit.provider("paid", paid.url, cost=PRICE)],
        health=PASSIVE,
        taskDefaults={"allowDelegation": True},
        budget={"window": "1h", "maxUSD": 0.5, "onExceeded": "Fail"},
    )
    kit.chain_ready("default")
    assert run_task(kit, "spends-it", charged_tasks=1)["phase"] == "Succeeded"
    status = run_task(kit, "too-late")
    assert status["phase"] == "Failed"
    assert status.get("attempts", []) == []
    succeeded = condition({"status": status}, "Succeeded")
    assert succeeded["reason"] == "BudgetExceeded"
    assert succeeded["message"].startswith("budget 0.50 USD/1h spent (")
    assert succeeded["message"].endswith("onExceeded=Fail")
    assert paid.stats()["requests"].get("openai", 0) == 1
    kit.wait_until(
        lambda: "BudgetExceeded" in kit.event_reasons("too-late"), what="the task's Event"
    )


def test_a_task_running_when_the_budget_is_spent_finishes(kit: Kit, operator, backends) -> None:
    slow, fast, vllm = backends("slow"), backends("fast"), backends("vllm")
    slow.set_mode("slow", delay_ms=8000)
    kit.create_chain(
        "default",
        [
            kit.provider("slow", slow.url, cost=PRICE),
            kit.provider("fast", fast.url, cost=PRICE),
            kit.provider("vllm", vllm.url, "Sovereign"),
        ],
        health=PASSIVE,
        taskDefaults={"allowDelegation": True},
        budget={"window": "300d", "maxUSD": 1},
    )
    kit.chain_ready("default")
    kit.create_task("in-flight", routing={"preferredProvider": "slow"})
    kit.wait_until(
        lambda: slow.stats()["requests"].get("openai", 0) == 1, what="the slow call under way"
    )
    kit.create_task("spends-it", routing={"preferredProvider": "fast"})
    assert kit.wait_task("spends-it")["result"]["provider"] == "fast"
    kit.wait_until(lambda: spend(kit).get("tasks") == 1, what="the charge")
    # The budget is spent while the slow task is still running (8 s of service time).
    running = kit.get("delegatedtasks", "in-flight").get("status") or {}
    assert running.get("phase") not in ("Succeeded", "Failed")
    after = run_task(kit, "after", charged_tasks=None)
    assert after["result"]["provider"] == "vllm"
    assert after["decision"]["reason"] == "budget 1.00 USD/300d spent"
    # The task already under way when the budget was spent is not cut short or rerouted.
    finished = kit.wait_task("in-flight")
    assert finished["phase"] == "Succeeded"
    assert outcomes(finished) == [("slow", "Succeeded")]
    kit.wait_until(lambda: spend(kit).get("tasks") == 2, what="its cost counted too")


CANARY_KEY = "sk-canary-7f3a9d2e41b8c6"
CANARY_PROMPT = "the launch code is PROMPT-CANARY-90210"


def test_audit_trail_of_a_failover_with_spillover(
    kit: Kit, start_operator, backends, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    operator = start_operator("--audit-log", str(path))
    vllm, cloud = backends("vllm"), backends("cloud")
    vllm.set_mode("error", status=503)
    kit.create_secret("cloud-key", {"apiKey": CANARY_KEY})
    kit.create_chain(
        "default",
        [
            kit.provider("vllm", vllm.url, "Sovereign"),
            kit.provider(
                "cloud", cloud.url, apiKeySecretRef={"name": "cloud-key", "key": "apiKey"}
            ),
        ],
        health={**PASSIVE, "failureThreshold": 2, "transientRetries": 1},
        taskDefaults={"allowDelegation": True},
    )
    kit.chain_ready("default")
    kit.create_task("spills", content=CANARY_PROMPT)
    status = kit.wait_task("spills")
    assert status["phase"] == "Succeeded"
    assert outcomes(status) == [
        ("vllm", "TransientError"),
        ("vllm", "TransientError"),
        ("cloud", "Succeeded"),
    ]
    uid = kit.get("delegatedtasks", "spills")["metadata"]["uid"]

    def task_lines() -> list[dict[str, Any]]:
        lines = [json.loads(text) for text in path.read_text().splitlines()]
        return [line for line in lines if line["uid"] == uid]

    kit.wait_until(
        lambda: path.exists() and any(line["kind"] == "result" for line in task_lines()),
        what="the task's result line",
    )
    lines = task_lines()
    assert [line["kind"] for line in lines] == [
        "decision",
        "attempt",
        "attempt",
        "benching",
        "failover",
        "spillover",
        "attempt",
        "result",
    ]
    common = {
        "schema": 1,
        "namespace": kit.namespace,
        "chain": "default",
        "task": "spills",
        "uid": uid,
        "requestTier": "Standard",
    }
    for line in lines:
        assert {key: line[key] for key in common} == common
        assert line["time"].endswith("Z")
        assert line["time"][10] == "T"
    decision, failed, _, benching, failover, spillover, answered, result = lines
    assert (decision["provider"], decision["providerTier"], decision["outcome"]) == (
        "vllm",
        "Sovereign",
        "Routed",
    )
    assert decision["reason"] == "preferredProvider=auto: active order"
    assert (failed["provider"], failed["outcome"]) == ("vllm", "TransientError")
    assert "503" in failed["reason"]
    assert (benching["provider"], benching["outcome"][:7]) == ("vllm", "Benched")
    assert (failover["fromProvider"], failover["provider"], failover["outcome"]) == (
        "vllm",
        "cloud",
        "Moved",
    )
    assert spillover == {
        **spillover,
        "kind": "spillover",
        "fromProvider": "vllm",
        "provider": "cloud",
        "providerTier": "Standard",
        "outcome": "Moved",
        "reason": failover["reason"],
        "inputTokens": None,
        "outputTokens": None,
        "costUSD": None,
    }
    assert "503" in spillover["reason"]
    assert (answered["provider"], answered["outcome"]) == ("cloud", "Succeeded")
    assert result == {
        **result,
        "provider": "cloud",
        "providerTier": "Standard",
        "outcome": "Succeeded",
        "reason": None,
        "inputTokens": status["result"]["inputTokens"],
        "outputTokens": status["result"]["outputTokens"],
        "costUSD": status["result"]["costUSD"],
    }
    text = path.read_text()
    assert CANARY_KEY not in text
    assert "PROMPT-CANARY" not in text
    assert CANARY_KEY not in operator.log()


async def test_two_replicas_charging_one_chain_lose_nothing_and_count_nothing_twice(
    kit: Kit, kubeconfig: Path
) -> None:
    """Two keepers (each with its own API client, as two replicas have) charge the same
    chain at once, half of the tasks handed to both (a takeover): the API server's
    resourceVersion precondition turns every lost race into a 409 and a retry, so the
    sum is exact and no task counts twice."""
    from chainop.core.budget import Charge
    from chainop.kube.client import KubeClient, KubeError, load_api_client
    from chainop.metrics import Metrics
    from chainop.operator.config import OperatorConfig
    from chainop.operator.runtime import Runtime
    from chainop.operator.spend import BudgetKeeper
    from chainop.providers.registry import ProviderClients

    kit.create_chain(
        "default",
        [kit.provider("paid", "http://127.0.0.1:9")],
        budget={"window": "1h", "maxUSD": 1_000_000},
    )
    keepers = []
    for _ in range(2):
        kube = KubeClient(load_api_client(kubeconfig=str(kubeconfig)))
        runtime = Runtime(
            config=OperatorConfig(metrics_port=None),
            kube=kube,
            clients=ProviderClients(),
            metrics=Metrics(),
        )
        keepers.append(BudgetKeeper(runtime))
    key = (kit.namespace, "default")

    def charges(numbers: range) -> list[list[Charge]]:
        return [[Charge(uid=f"task-{n}", by_provider={"paid": n / 100})] for n in numbers]

    try:
        one = [keepers[0].write(key, batch) for batch in charges(range(0, 30))]
        two = [keepers[1].write(key, batch) for batch in charges(range(15, 45))]
        await asyncio.gather(*(c for pair in zip(one, two, strict=True) for c in pair))
        # A writer gives up after MAX_TRIES conflicts in a row (to retry next round).
        for keeper, numbers in ((keepers[0], range(0, 30)), (keepers[1], range(15, 45))):
            for batch in charges(numbers):
                while not await keeper.write(key, batch):
                    pass
        # The mechanism itself: a patch made against an old resourceVersion is refused.
        with pytest.raises(KubeError) as refused:
            await keepers[0].runtime.kube.patch_status(
                CHAINS, kit.namespace, "default", {"spend": None}, resource_version="1"
            )
        assert refused.value.conflict
    finally:
        for keeper in keepers:
            await keeper.runtime.clients.aclose()
            await keeper.runtime.kube.aclose()
    window = spend(kit)
    assert window["tasks"] == 45
    assert window["usd"] == pytest.approx(sum(range(45)) / 100)
    assert len(window["chargedTasks"]) == 45


def finished_elsewhere(kit: Kit, name: str, usd: float) -> str:
    """A task an operator finished and paid for, then died before charging: status
    Succeeded with the cost in its attempts, no ``charged`` mark. Returns its uid."""
    kit.create_task(name)
    kit.api.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kit.namespace,
        "delegatedtasks",
        name,
        {
            "status": {
                "phase": "Succeeded",
                "attempts": [{"provider": "paid", "outcome": "Succeeded", "costUSD": usd}],
                "result": {"provider": "paid", "text": "done", "costUSD": usd},
            }
        },
    )
    uid: str = kit.get("delegatedtasks", name)["metadata"]["uid"]
    return uid


def test_a_restart_between_finishing_and_charging_charges_exactly_once(
    kit: Kit, start_operator, backends
) -> None:
    """Before any operator runs: task A finished but was never charged; task B was
    charged on the chain (its uid in chargedTasks) but never marked. The operator charges
    A, only marks B; after a kill and a restart, a new task adds just its own cost."""
    from chainop.core import budget as rules

    paid = backends("paid")
    window = "300d"
    kit.create_chain(
        "default",
        [kit.provider("paid", paid.url, cost=PRICE)],
        health=PASSIVE,
        taskDefaults={"allowDelegation": True},
        budget={"window": window, "maxUSD": 1_000_000},
    )
    uncharged = finished_elsewhere(kit, "uncharged", 1.5)
    unmarked = finished_elsewhere(kit, "unmarked", 2.25)
    spec = rules.BudgetSpec.model_validate({"window": window, "maxUSD": 1_000_000})
    seeded = rules.apply(
        None, [rules.Charge(unmarked, {"paid": 2.25})], spec, now=time.time()
    ).spend
    kit.api.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kit.namespace,
        CHAINS,
        "default",
        {"status": {"spend": rules.to_status(seeded).model_dump(by_alias=True, mode="json")}},
    )

    first = start_operator()
    for name in ("uncharged", "unmarked"):
        kit.wait(
            "delegatedtasks",
            name,
            lambda o: (o.get("status") or {}).get("charged") is True,
            what=f"{name} marked charged",
        )
    after = spend(kit)
    assert (after["usd"], after["tasks"]) == (pytest.approx(3.75), 2)
    assert after["chargedTasks"] == [unmarked, uncharged]

    first.kill()
    start_operator()
    kit.chain_ready("default")
    status = run_task(kit, "new", charged_tasks=3)
    assert spend(kit)["usd"] == pytest.approx(3.75 + status["result"]["costUSD"])
